"""Checkpoints: atomic save, safe load, RNG state, and the files of an output directory.

Layout of a checkpoint (a plain dict, loadable with ``torch.load(..., weights_only=True)``)::

    {"model": state_dict, "config": config_to_dict(cfg), "optimizer": state_dict | None,
     "scheduler": state_dict | None, "scaler": state_dict | None, "step": int,
     "rng": rng_state() | None, "extra": {...}}

File naming inside an output directory (used by :func:`find_latest_checkpoint`,
:func:`prune_checkpoints` and ``--resume auto``):

* ``ckpt_{step:08d}.pt`` -- periodic checkpoints, e.g. ``ckpt_00005000.pt``; the newest ``keep``
  survive :func:`prune_checkpoints`.
* ``last.pt`` -- the most recent state, overwritten on every save (also written when a run is
  interrupted); never pruned.
* ``best.pt`` -- best validation score so far; never pruned, never picked by ``--resume auto``.

A train loop typically does::

    state = make_checkpoint(model=model, config=cfg, optimizer=opt, scheduler=sched,
                            scaler=scaler, step=step)
    save_checkpoint(out_dir / LAST_NAME, state)
    if step % cfg.ckpt_every == 0:
        save_checkpoint(checkpoint_path(out_dir, step), state)
        prune_checkpoints(out_dir, keep=cfg.keep_checkpoints)
    ...
    path = resolve_resume(cfg.resume, out_dir)  # "", "auto" or a file
    step = restore_checkpoint(path, model=model, optimizer=opt, scheduler=sched,
                              scaler=scaler) if path else 0
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.atomic import atomic_torch_save
from common.config import config_to_dict

__all__ = [
    "BEST_NAME",
    "CheckpointError",
    "LAST_NAME",
    "check_finite_state",
    "checkpoint_path",
    "find_latest_checkpoint",
    "is_unsafe_pickle",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights_strict",
    "make_checkpoint",
    "nonfinite_entries",
    "prune_checkpoints",
    "resolve_resume",
    "restore_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "unreadable_message",
    "unwrap_model",
]

LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
_PERIODIC = re.compile(r"^ckpt_(\d+)\.pt$")
_EXPECTED = (
    "a PyTorch checkpoint written by common.checkpoint.save_checkpoint "
    "(a dict loadable with torch.load(..., weights_only=True))"
)

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not hold what was expected."""


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------


def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically and return the path.

    The data goes to a temporary file in the same directory (:func:`common.atomic.atomic_write`),
    is flushed and fsynced, and only then renamed over ``path`` with ``os.replace``. An
    exception or interruption at any point leaves the previous file under ``path`` untouched and
    removes the temporary file (a hard kill can leave a ``.<name>.*.irn-tmp`` file behind, never
    a partial ``path``; :func:`common.atomic.remove_stale_temps` removes it at the next start).
    Parent directories are created as needed.
    """
    return atomic_torch_save(path, dict(state))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _describe(err: BaseException, limit: int = 200) -> str:
    """One line about a ``torch.load`` failure (its messages span many lines of advice)."""
    text = _ANSI.sub("", str(err))
    # weights_only refusals bury the informative part after "WeightsUnpickler error:".
    text = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0].split(". ")[0] if lines else ""  # the first sentence: what went wrong
    line = line if len(line) <= limit else line[:limit] + "..."
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def is_unsafe_pickle(err: BaseException) -> bool:
    """Whether a ``torch.load(..., weights_only=True)`` failure is a refused pickled object."""
    text = str(err)
    return "Unsupported global" in text or _GLOBAL.search(text) is not None


def unreadable_message(path: PathLike, err: BaseException) -> str:
    """One line for a ``torch.load(..., weights_only=True)`` failure: a refused pickle is named
    as such (without torch's advice to turn safe loading off), anything else as unreadable."""
    text = _ANSI.sub("", str(err))
    if is_unsafe_pickle(err):
        found = _GLOBAL.search(text)
        what = f" ({found.group(1)})" if found else ""
        return (
            f"checkpoint {path} holds pickled objects that safe loading refuses{what}; not "
            f"loaded (expected {_EXPECTED})"
        )
    return (
        f"cannot read checkpoint {path}: {_describe(err)} (the file may be truncated or "
        f"corrupt; expected {_EXPECTED})"
    )


def nonfinite_entries(value: Any, where: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested state (dicts, lists) holding NaN or inf
    (a model or optimiser ``state_dict``, a whole checkpoint)."""
    if isinstance(value, torch.Tensor):
        finite = not value.is_floating_point() or bool(torch.isfinite(value).all())
        return [] if finite else [where or "tensor"]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return []
    found: list[str] = []
    for key, item in items:
        found += nonfinite_entries(item, f"{where}.{key}" if where else str(key))
    return found


def check_finite_state(ckpt: Mapping[str, Any], source: str) -> None:
    """:class:`CheckpointError` when the weights or the optimiser state of ``ckpt`` hold NaN or
    inf (resuming from it would only continue a diverged run)."""
    for key, what in (("model", "weights"), ("optimizer", "optimiser state")):
        bad = nonfinite_entries(ckpt.get(key))
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise CheckpointError(
                f"{source}: {what} hold NaN or inf ({', '.join(bad[:3])}{more}); refusing "
                "to resume from it (the run had diverged: resume from an earlier checkpoint)"
            )


def load_checkpoint(
    path: PathLike,
    map_location: str | torch.device | None = "cpu",
    required_keys: tuple[str, ...] = (),
    mmap: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(..., weights_only=True)``.

    Raises :class:`CheckpointError` naming the file if it is missing, truncated, corrupt, holds
    objects that ``weights_only`` refuses, is not a dict, or lacks any of ``required_keys``.
    ``mmap=True`` maps tensor storages instead of reading them (cheap peeks at ``"step"``).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (expected {_EXPECTED})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path} (expected {_EXPECTED})")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for bad files; report one kind
        raise CheckpointError(unreadable_message(path, err)) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(data).__name__}, expected a dict ({_EXPECTED})"
        )
    missing = [k for k in required_keys if k not in data]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks key(s) {missing}; it has {sorted(map(str, data))}"
        )
    return data


# ---------------------------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """States of Python ``random``, numpy's global RNG, torch CPU and every CUDA device.

    Only tensors, ints, floats, strings, ``None``, lists and dicts, so a checkpoint holding it
    loads with ``weights_only=True``.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generators from :func:`rng_state` output; parts absent from ``state`` are skipped.

    CUDA states are restored for as many devices as both the checkpoint and this machine have
    (with a warning if the counts differ).
    """
    if "python" in state:
        py = state["python"]
        internal = tuple(int(v) for v in py["state"].tolist())
        random.setstate((int(py["version"]), internal, py["gauss_next"]))
    if "numpy" in state:
        npst = state["numpy"]
        np.random.set_state(
            (
                npst["bit_generator"],
                npst["keys"].cpu().numpy().astype(np.uint32),
                int(npst["pos"]),
                int(npst["has_gauss"]),
                float(npst["cached_gaussian"]),
            )
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda_states = list(state.get("cuda") or [])
    if cuda_states and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count != len(cuda_states):
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(cuda_states)} device(s), this machine "
                f"has {count}; restoring the first {min(count, len(cuda_states))}",
                stacklevel=2,
            )
        for index, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


# ---------------------------------------------------------------------------------------------
# Checkpoint dict <-> training objects
# ---------------------------------------------------------------------------------------------


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose ``state_dict`` keys carry no DDP (``module.``) / compile prefix."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def load_weights_strict(
    model: torch.nn.Module, state: Any, name: str, what: str, map_location: Any = None
) -> torch.nn.Module:
    """Load ``state`` into ``model`` strictly, refusing non-finite weights; move it to
    ``map_location`` (a device or its name; anything else leaves it where it is).

    Raises:
        CheckpointError: naming the file ``name`` and the model ``what`` when ``state`` is not a
            state_dict, does not fit the architecture, or holds NaN or inf.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{name}: no 'model' state_dict (found {type(state).__name__})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:400]
        raise CheckpointError(
            f"{name}: the weights under 'model' do not fit {what}: {first}"
        ) from None
    bad = [k for k, v in model.state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{name}: weights containing NaN or inf: {bad[:5]}")
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    return model


_SAFE_LEAVES = (
    type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype, torch.device,
    torch.Size,
)  # fmt: skip


def _check_loadable(value: Any, where: str) -> None:
    """Fail at save time, not at resume time, on values ``weights_only=True`` cannot load."""
    if isinstance(value, _SAFE_LEAVES):
        return
    if isinstance(value, dict | OrderedDict):
        for key, item in value.items():
            _check_loadable(key, f"{where} key")
            _check_loadable(item, f"{where}[{key!r}]")
        return
    if isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            _check_loadable(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which "
        "torch.load(..., weights_only=True) cannot load; convert it to a tensor or plain type"
    )


def make_checkpoint(
    *,
    model: torch.nn.Module,
    config: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    step: int = 0,
    extra: Mapping[str, Any] | None = None,
    include_rng: bool = True,
) -> dict[str, Any]:
    """Collect everything needed to resume into the standard checkpoint dict.

    ``config`` is a dataclass (stored via ``config_to_dict``) or an already-plain dict.
    ``model`` may be wrapped in DDP / ``torch.compile``; the bare module's weights are stored.
    ``extra`` holds caller data (e.g. best PSNR); it must be loadable with ``weights_only``.
    The tensors share storage with the live objects: save the dict before training on.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = config_to_dict(config)
    elif config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a dataclass instance or dict, got {type(config)}")
    config = None if config is None else dict(config)
    extra = dict(extra or {})
    _check_loadable(config, "config")
    _check_loadable(extra, "extra")
    return {
        "model": unwrap_model(model).state_dict(),
        "config": config,
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "step": int(step),
        "rng": rng_state() if include_rng else None,
        "extra": extra,
    }


def restore_checkpoint(
    checkpoint: PathLike | Mapping[str, Any],
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
    strict: bool = True,
    map_location: str | torch.device | None = "cpu",
) -> int:
    """Load the given objects' states from a checkpoint (path or dict) and return its step.

    Every object passed must have a state in the checkpoint, otherwise :class:`CheckpointError`
    (pass ``None`` to skip one, e.g. the optimizer when fine-tuning). An empty scaler state
    (saved without AMP) leaves an enabled scaler at its fresh state, with a warning.
    """
    if isinstance(checkpoint, Mapping):
        ckpt, source = checkpoint, "checkpoint"
    else:
        ckpt = load_checkpoint(checkpoint, map_location=map_location)
        source = f"checkpoint {checkpoint}"

    check_finite_state(ckpt, source)

    def need(key: str) -> Any:
        value = ckpt.get(key)
        if value is None:
            raise CheckpointError(
                f"{source} has no {key!r} state (keys present: {sorted(ckpt)}); "
                f"pass {key}=None to restore without it"
            )
        return value

    if model is not None:
        try:
            unwrap_model(model).load_state_dict(need("model"), strict=strict)
        except RuntimeError as err:
            raise CheckpointError(
                f"{source}: weights do not fit {type(unwrap_model(model)).__name__} "
                f"(was it built from the stored config?): {err}"
            ) from None
    if optimizer is not None:
        state = need("optimizer")
        try:
            optimizer.load_state_dict(state)
        except ValueError as err:
            raise CheckpointError(f"{source}: optimizer state does not fit: {err}") from None
    if scheduler is not None:
        scheduler.load_state_dict(need("scheduler"))
    if scaler is not None:
        state = need("scaler")
        enabled = getattr(scaler, "is_enabled", lambda: True)()
        if enabled and not state:
            warnings.warn(
                f"{source} was saved without an active GradScaler; starting with a fresh scale",
                stacklevel=2,
            )
        else:
            scaler.load_state_dict(state)
    if restore_rng and ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    try:
        return int(ckpt["step"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{source} has no integer 'step'") from None


def pack_np_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A numpy bit-generator state (PCG64: integers beyond 64 bits) as strings, so that a
    checkpoint holding it loads with ``weights_only=True``; :func:`unpack_np_state` inverts it."""
    inner = state["state"]
    return {
        "bit_generator": state["bit_generator"],
        "state": str(inner["state"]),
        "inc": str(inner["inc"]),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def unpack_np_state(packed: Mapping[str, Any]) -> dict[str, Any]:
    """The numpy bit-generator state packed by :func:`pack_np_state`."""
    return {
        "bit_generator": packed["bit_generator"],
        "state": {"state": int(packed["state"]), "inc": int(packed["inc"])},
        "has_uint32": int(packed["has_uint32"]),
        "uinteger": int(packed["uinteger"]),
    }


# ---------------------------------------------------------------------------------------------
# Files of an output directory
# ---------------------------------------------------------------------------------------------


def checkpoint_path(out_dir: PathLike, step: int) -> Path:
    """``out_dir / f"ckpt_{step:08d}.pt"`` -- the periodic checkpoint name for ``step``."""
    return Path(out_dir) / f"ckpt_{int(step):08d}.pt"


def list_checkpoints(out_dir: PathLike) -> list[tuple[int, Path]]:
    """Periodic checkpoints ``ckpt_<step>.pt`` in ``out_dir`` as ``(step, path)``, oldest first."""
    directory = Path(out_dir)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _PERIODIC.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _candidates(out_dir: PathLike) -> list[tuple[int, int, Path]]:
    """``(step, is_last, path)`` of the periodic checkpoints and ``last.pt``, newest first
    (``last.pt`` wins ties); an unreadable ``last.pt`` is skipped with a warning."""
    found = [(step, 0, path) for step, path in list_checkpoints(out_dir)]
    last = Path(out_dir) / LAST_NAME
    if last.is_file():
        try:
            step = int(load_checkpoint(last, required_keys=("step",), mmap=True)["step"])
        except (CheckpointError, TypeError, ValueError) as err:
            warnings.warn(f"--resume auto: ignoring {last}: {err}", stacklevel=3)
        else:
            found.append((step, 1, last))
    return sorted(found, reverse=True)


def find_latest_checkpoint(out_dir: PathLike) -> Path | None:
    """The newest usable checkpoint among ``ckpt_<step>.pt`` and ``last.pt`` (``--resume
    auto``).

    Candidates are tried newest first (the step of a periodic checkpoint comes from its name,
    ``last.pt`` is peeked at and wins ties); one that cannot be read (truncated by a kill, not
    a checkpoint) or whose weights or optimiser state hold NaN or inf is skipped with a warning
    naming it, and the next older one is tried. ``best.pt`` is never chosen. Returns ``None``
    if nothing usable is left.
    """
    for _, _, path in _candidates(out_dir):
        try:
            ckpt = load_checkpoint(path, required_keys=("step",))
            check_finite_state(ckpt, f"checkpoint {path}")
        except CheckpointError as err:
            warnings.warn(f"--resume auto: skipping {err}; trying an older one", stacklevel=2)
            continue
        return path
    return None


def prune_checkpoints(out_dir: PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest periodic checkpoints; return the deleted paths.

    Only files named ``ckpt_<step>.pt`` are considered, so ``last.pt`` and ``best.pt`` are never
    deleted. ``keep=0`` deletes every periodic checkpoint.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    periodic = list_checkpoints(out_dir)
    doomed = [path for _, path in periodic[: max(len(periodic) - keep, 0)]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def resolve_resume(resume: str | PathLike | None, out_dir: PathLike) -> Path | None:
    """Interpret a ``--resume`` value: ``""``/``"none"``/``None`` -> ``None`` (fresh start),
    ``"auto"`` -> :func:`find_latest_checkpoint` (``None`` if the directory has none), anything
    else -> that file, which must exist (:class:`CheckpointError` otherwise).
    """
    if resume is None or str(resume).strip().lower() in ("", "none"):
        return None
    if str(resume) == "auto":
        return find_latest_checkpoint(out_dir)
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume: checkpoint not found: {path}")
    return path
