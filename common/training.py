"""The training-loop scaffolding that IRN, IRN-Color and Glow share.

A run is a :class:`TrainState` (model, optimiser, schedule, scaler, non-finite guard, step, best
score) passed explicitly to plain functions: :func:`save_state` / :func:`restore_state` write and
read it as a checkpoint (``common/checkpoint.py``), :func:`run_steps` drives the loop (signals,
divergence), and the ``*_process*`` helpers keep several processes (``torchrun``) in step. Each
entry script keeps only what is its own: the training step, validation and the messages.

Example (the shape of every entry script)::

    state = TrainState(model=model, optimizer=optimizer, guard=NonFiniteGuard(5))
    interrupted = run_steps(state, batches, my_step, my_after_step)
    save_state(out_dir / LAST_NAME, state, config, extra={})
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from common.checkpoint import (
    CheckpointError,
    check_finite_state,
    make_checkpoint,
    nonfinite_entries,
    restore_checkpoint,
    save_checkpoint,
)
from common.runtime import GracefulInterrupt, NonFiniteGuard, resolve_device

T = TypeVar("T")
S = TypeVar("S", bound="TrainState")


@dataclass
class TrainState:
    """What a training run changes as it goes.

    ``net`` is the module the training step calls: the DDP wrapper under ``torchrun``, else
    ``model`` itself (``None`` means ``model``). ``best`` is the best validation score so far.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    guard: NonFiniteGuard
    scheduler: Any = None
    scaler: torch.amp.GradScaler | None = None
    net: torch.nn.Module | None = None
    step: int = 0
    best: float = -math.inf

    @property
    def module(self) -> torch.nn.Module:
        """The module to call in the training step (DDP wrapper or the model)."""
        return self.model if self.net is None else self.net


def save_state(
    path: Path, state: TrainState, config: Mapping[str, Any], extra: Mapping[str, Any], good=True
) -> Path:
    """Write ``state`` atomically as a checkpoint at ``path`` (with ``extra``: the script's own
    resumable data, which must load with ``weights_only``). ``good`` marks it as the last good
    checkpoint the non-finite guard names when training diverges."""
    ckpt = make_checkpoint(
        model=state.model,
        config=dict(config),
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        scaler=state.scaler,
        step=state.step,
        extra={**extra, "guard": state.guard.state_dict()},
    )
    saved = save_checkpoint(path, ckpt)
    if good and not nonfinite_entries(ckpt["model"]):
        state.guard.note_checkpoint(saved)
    return saved


def refuse_nonfinite_weights(state: TrainState) -> None:
    """``SystemExit`` (non-zero, nothing saved) when the weights at the end of a run hold NaN
    or inf, naming the last good checkpoint; a run must not end "successfully" with them."""
    bad = nonfinite_entries(state.model.state_dict())
    if not bad:
        return
    good = state.guard.last_checkpoint
    where = f"; the last good checkpoint is {good}" if good else ""
    raise SystemExit(
        f"error: training ended with non-finite weights (NaN or inf in {', '.join(bad[:3])}"
        f"{', ...' if len(bad) > 3 else ''}) at iteration {state.step}; nothing saved{where}. "
        "Lower --lr or check the data."
    )


def restore_state(state: TrainState, ckpt: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_state` into ``state`` (weights, optimiser,
    schedule, scaler, guard, step, random state); return its ``extra`` for the script's own
    data. A checkpoint whose weights or optimiser state hold NaN or inf is refused."""
    check_finite_state(ckpt, f"--resume {path}")
    state.step = restore_checkpoint(
        ckpt,
        model=state.model,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        scaler=state.scaler,
    )
    extra = dict(ckpt.get("extra") or {})
    state.guard.load_state_dict(extra.get("guard", {}))
    state.guard.note_checkpoint(path)
    return extra


def config_differences(stored: Any, given: Any, skip: Iterable[str] = ()) -> list[str]:
    """``"field: checkpoint X, flags Y"`` for every field of two config dataclasses that
    differ (``skip`` names fields not compared)."""
    return [
        f"{f.name}: checkpoint {getattr(stored, f.name)!r}, flags {getattr(given, f.name)!r}"
        for f in fields(given)
        if f.name not in set(skip) and getattr(stored, f.name) != getattr(given, f.name)
    ]


def run_steps(
    state: S,
    batches: Iterable[T],
    train_step: Callable[[S, T], None],
    after_step: Callable[[S], None],
    world: int = 1,
    device: torch.device | None = None,
) -> bool:
    """``train_step(state, batch)`` then ``after_step(state)`` for each batch, until the
    batches end or SIGINT/SIGTERM arrives (checked before each batch, on every process alike);
    return whether it was interrupted. ``TrainingDiverged`` from the guard propagates."""
    with GracefulInterrupt() as stop:
        for batch in batches:
            if any_process(stop.requested, world, device):
                return True
            train_step(state, batch)
            after_step(state)
    return False


def interrupted_message(where: str, saved: Path, out_dir: Path) -> str:
    return f"Interrupted at {where}; saved {saved}. Continue with: --resume auto --out {out_dir}"


# ---------------------------------------------------------------------------------------------
# Several processes (torchrun)
# ---------------------------------------------------------------------------------------------


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``; initialises torch.distributed when started by torchrun
    (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA with one GPU per process (``LOCAL_RANK``);
    the rendezvous comes from the environment torchrun sets."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def any_process(flag: bool, world: int = 1, device: torch.device | None = None) -> bool:
    """``flag`` OR-ed over all processes, so every rank takes the same branch."""
    if world <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_processes(values: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    """Detached values averaged over the processes, identical on every rank (each process holds
    an equal share of the global batch and each value is a mean over its rows, so this is the
    global batch's value)."""
    keys = list(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    if world > 1:
        torch.distributed.all_reduce(stacked)
        stacked = stacked / world
    return dict(zip(keys, stacked, strict=True))


def on_rank0(read: Callable[[], T], world: int, rank: int) -> T:
    """``read()`` on rank 0, its result broadcast to every rank (nodes need not share a file
    system); its error (``SystemExit`` or ``CheckpointError``) is raised on every rank alike."""
    result: list[Any] = [None, None]
    if rank == 0 or world <= 1:
        try:
            result = [read(), None]
        except (SystemExit, CheckpointError) as err:
            result = [None, (type(err).__name__, str(err))]
    if world > 1:
        torch.distributed.broadcast_object_list(result, src=0)
    value, error = result
    if error is not None:
        kind, message = error
        raise (SystemExit(message) if kind == "SystemExit" else CheckpointError(message))
    return value


def teardown_distributed(world: int) -> None:
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
