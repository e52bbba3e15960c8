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
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import config_to_dict

__all__ = [
    "BEST_NAME",
    "CheckpointError",
    "LAST_NAME",
    "checkpoint_path",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights_strict",
    "make_checkpoint",
    "prune_checkpoints",
    "resolve_resume",
    "restore_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
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


def _fsync_dir(directory: Path) -> None:
    """Persist a rename on POSIX; directories cannot be opened this way on Windows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically and return the path.

    The data goes to a hidden temporary file in the same directory, is flushed and fsynced, and
    only then renamed over ``path`` with ``os.replace``. An exception or interruption at any
    point leaves the previous file under ``path`` untouched and removes the temporary file (a
    hard kill can leave a ``.<name>.*.tmp`` file behind, never a partial ``path``). Parent
    directories are created as needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    # O_EXCL: never clobber someone else's file; mode 0o666 lets the umask apply as usual.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _describe(err: BaseException, limit: int = 200) -> str:
    """One line about a ``torch.load`` failure (its messages span many lines of advice)."""
    text = _ANSI.sub("", str(err))
    # weights_only refusals bury the informative part after "WeightsUnpickler error:".
    text = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    line = line if len(line) <= limit else line[:limit] + "..."
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


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
        if "Unsupported global" in str(err):
            hint = "it holds objects that weights_only=True refuses to unpickle"
        else:
            hint = "the file may be truncated or corrupt"
        raise CheckpointError(
            f"cannot read checkpoint {path}: {_describe(err)} (expected {_EXPECTED}; {hint})"
        ) from None
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


def find_latest_checkpoint(out_dir: PathLike) -> Path | None:
    """The checkpoint with the highest step among ``ckpt_<step>.pt`` and ``last.pt``.

    The step of a periodic checkpoint comes from its name; ``last.pt`` is peeked at (memory
    mapped, tensors are not read) and wins ties. An unreadable ``last.pt`` is skipped with a
    warning. ``best.pt`` is never chosen. Returns ``None`` if there is nothing to resume from.
    """
    candidates = list_checkpoints(out_dir)
    best: tuple[int, int, Path] | None = None
    if candidates:
        step, path = candidates[-1]
        best = (step, 0, path)
    last = Path(out_dir) / LAST_NAME
    if last.is_file():
        try:
            step = int(load_checkpoint(last, required_keys=("step",), mmap=True)["step"])
        except (CheckpointError, TypeError, ValueError) as err:
            warnings.warn(f"ignoring {last}: {err}", stacklevel=2)
        else:
            if best is None or (step, 1) > best[:2]:
                best = (step, 1, last)
    return None if best is None else best[2]


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
