"""Runtime helpers shared by the train scripts: device, AMP, signals, divergence, logging.

One code path for CPU and CUDA, with and without AMP::

    device = resolve_device(cfg.device)
    amp = amp_setting(device, cfg.amp, cfg.amp_dtype)  # None, bf16 or fp16
    scaler = make_grad_scaler(device, amp)            # enabled for fp16 only
    guard = NonFiniteGuard(max_consecutive=cfg.max_nonfinite)
    with GracefulInterrupt() as stop, ProgressLogger(cfg.steps, initial=step) as progress:
        while step < cfg.steps and not stop.requested:
            with autocast_context(device, amp):       # no-op when amp is None
                loss = compute_loss(...)
            if not guard.check(loss):
                optimizer.zero_grad(set_to_none=True)
                continue
            scaler.scale(loss).backward()
            skipped = scaler_step(scaler, optimizer)  # True: inf/NaN gradients, scale lowered
            ...
            guard.note_checkpoint(save_checkpoint(out_dir / "last.pt", state))
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "GracefulInterrupt",
    "NonFiniteGuard",
    "ProgressLogger",
    "TensorBoardLogger",
    "TrainingDiverged",
    "AMP_DTYPES",
    "amp_dtype",
    "amp_setting",
    "autocast_context",
    "describe_amp",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "make_grad_scaler",
    "resolve_device",
    "scaler_step",
    "seed_everything",
    "set_num_threads",
]


# ---------------------------------------------------------------------------------------------
# Distributed
# ---------------------------------------------------------------------------------------------


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def get_rank() -> int:
    """This process's rank: from ``torch.distributed`` if initialised, else ``$RANK`` (set by
    ``torchrun`` before the process group exists), else 0."""
    if _dist_ready():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    """Number of processes: from ``torch.distributed`` if initialised, else ``$WORLD_SIZE``,
    else 1."""
    if _dist_ready():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on rank 0 (and in every non-distributed run): the process that logs and saves."""
    return get_rank() == 0


# ---------------------------------------------------------------------------------------------
# Device, seeds, threads
# ---------------------------------------------------------------------------------------------


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises ``ValueError`` for other names and ``RuntimeError`` when CUDA (or device ``N``) is
    requested but not available, instead of failing later inside the first ``.to(device)``.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text[5:] if text.startswith("cuda:") else ""
        if index_text and not index_text.isdigit():
            raise ValueError(f"invalid device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {name!r} requested but CUDA is not available (torch "
                f"{torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu"
            )
        count = torch.cuda.device_count()
        if index_text and int(index_text) >= count:
            raise RuntimeError(f"device {name!r} requested but only {count} CUDA device(s) exist")
        return torch.device(text)
    raise ValueError(f"invalid device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python ``random``, numpy's global RNG and torch (CPU and all CUDA devices).

    ``deterministic=True`` also asks torch for deterministic kernels (warning, not failing, where
    none exist) and turns off the cuDNN autotuner.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def set_num_threads(num_threads: int | None) -> int:
    """Set torch's intra-op thread count when ``num_threads`` is a positive int; return the
    count in effect (``None`` or ``0`` keeps torch's default)."""
    if num_threads:
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------
# Mixed precision
# ---------------------------------------------------------------------------------------------


AMP_DTYPES = ("auto", "bf16", "fp16")
_AMP_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """The ``--amp-dtype auto`` choice for ``device``: bfloat16 on CPU, float16 on CUDA."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def amp_setting(device: torch.device | str, amp: bool, dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype of a run: ``None`` without ``--amp``, else ``--amp-dtype`` resolved
    (``auto``: fp16 on CUDA, bf16 on CPU; ``fp16`` on the CPU runs the CUDA code path, gradient
    scaler included). An unknown name is a ``ValueError`` naming the flag."""
    if dtype not in AMP_DTYPES:
        raise ValueError(f"--amp-dtype: expected one of {', '.join(AMP_DTYPES)}, got {dtype!r}")
    if not amp:
        return None
    if dtype == "auto":
        return amp_dtype(device)
    return torch.float16 if dtype == "fp16" else torch.bfloat16


def describe_amp(
    device: torch.device | str,
    dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None = None,
) -> str:
    """One line saying how a run computes: float32, or which autocast dtype, with or without a
    gradient scaler (and its current scale)."""
    where = torch.device(device).type
    if dtype is None:
        return f"Precision: float32 on {where} (no --amp)."
    name = _AMP_NAMES.get(dtype, str(dtype))
    text = f"Precision: {name} autocast on {where} (invertible arithmetic in float32)"
    if scaler is not None and scaler.is_enabled():
        text += f", gradient scaler from scale {scaler.get_scale():g}"
        if where == "cpu":
            text += " (the CUDA --amp code path, run on the CPU)"
    elif scaler is not None:
        text += ", no gradient scaler"
    return text + "."


def autocast_context(
    device: torch.device | str,
    enabled: bool | torch.dtype | None,
    dtype: torch.dtype | None = None,
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``device``, or a no-op context when ``enabled`` is false/None.

    ``enabled`` may itself be the dtype (what :func:`amp_setting` returns); otherwise the
    dtype is ``dtype``, or :func:`amp_dtype` of the device."""
    if not enabled:
        return contextlib.nullcontext()
    if isinstance(enabled, torch.dtype):
        dtype = enabled
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=dtype or amp_dtype(device))


def make_grad_scaler(
    device: torch.device | str,
    enabled: bool | torch.dtype | None,
    dtype: torch.dtype | None = None,
    init_scale: float | None = None,
) -> torch.amp.GradScaler:
    """A loss scaler with one interface for every setup.

    Enabled for fp16 autocast on any device (the dtype is ``enabled`` when that is a dtype,
    else ``dtype``, else :func:`amp_dtype` of the device: fp16 on CUDA); otherwise a disabled
    ``torch.amp.GradScaler`` whose ``scale`` returns the loss unchanged, ``step`` just calls
    ``optimizer.step()`` and whose ``state_dict`` is ``{}`` (so it still round-trips through
    checkpoints). bf16 has float32's exponent range and needs no loss scaling. ``init_scale``
    (``--amp-init-scale``; ``None``: torch's 2**16) is the first scale.
    """
    device = torch.device(device)
    if isinstance(enabled, torch.dtype):
        dtype = enabled
    dtype = dtype or amp_dtype(device)
    on = bool(enabled) and dtype == torch.float16
    kwargs = {} if init_scale is None else {"init_scale": float(init_scale)}
    return torch.amp.GradScaler(device.type, enabled=on, **kwargs)


def scaler_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """``scaler.step(optimizer)`` and ``scaler.update()``; return True when the scaler skipped
    the step (an inf/NaN among the scaled gradients: the weights are untouched and the scale
    is lowered by its backoff factor). Always False for a disabled scaler."""
    if not scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
        return False
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() < before


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------


class GracefulInterrupt:
    """Turn the first SIGINT/SIGTERM into a flag so the loop can save and exit cleanly.

    ``with GracefulInterrupt() as stop: ... if stop.requested: save(); break``. After the first
    signal a further SIGINT raises ``KeyboardInterrupt`` (press Ctrl-C twice to abort at once).
    The previous handlers are restored on exit. Signal handlers can only be installed from the
    main thread; elsewhere the context manager does nothing and ``requested`` stays false.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = tuple(signals)
        self.requested = False
        self.signal_name: str | None = None
        self.active = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        first = not self.requested
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if first:
            # os.write, not print: a handler may run in the middle of another write to stderr.
            note = (
                f"\n{self.signal_name} received: stopping after this step and saving a "
                "checkpoint (press Ctrl-C again to abort immediately)\n"
            )
            with contextlib.suppress(OSError):
                os.write(2, note.encode())

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        self.active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.active:
            return
        for signum, previous in self._previous.items():
            # None means the old handler was not installed from Python; the default is closest.
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        self.active = False


# ---------------------------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------------------------


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses; ``checkpoint`` is the last one saved (or None)."""

    def __init__(self, message: str, *, step: int | None, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


def _is_finite(value: torch.Tensor | float) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())  # syncs with the device
    return math.isfinite(float(value))


class NonFiniteGuard:
    """Skip steps whose loss (or gradient norm) is NaN/inf; give up after too many in a row.

    ``check`` returns True when the step may be applied and False when it should be skipped;
    the ``max_consecutive``-th non-finite value in a row raises :class:`TrainingDiverged`. Tell
    the guard about every checkpoint you save (:meth:`note_checkpoint`) and the error names the
    last one, i.e. the one to resume from (skipped steps never reach the weights).
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total_skipped = 0
        self.last_checkpoint: Path | None = None

    def note_checkpoint(self, path: str | os.PathLike | None) -> None:
        """Record the checkpoint just saved; it is named if training later diverges."""
        self.last_checkpoint = None if path is None else Path(path)

    def check(
        self,
        loss: torch.Tensor | float,
        grad_norm: torch.Tensor | float | None = None,
        step: int | None = None,
    ) -> bool:
        """True if ``loss`` (and ``grad_norm``, if given) are finite; False to skip the step."""
        if _is_finite(loss) and (grad_norm is None or _is_finite(grad_norm)):
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total_skipped += 1
        if self.consecutive >= self.max_consecutive:
            at = "" if step is None else f" (at step {step})"
            where = (
                f"last good checkpoint: {self.last_checkpoint}"
                if self.last_checkpoint is not None
                else "no checkpoint was saved yet"
            )
            raise TrainingDiverged(
                f"training diverged: {self.consecutive} consecutive non-finite losses or "
                f"gradients{at}; {where}. Resume from it with a lower learning rate, gradient "
                "clipping or AMP off.",
                step=step,
                checkpoint=self.last_checkpoint,
            )
        return False

    def state_dict(self) -> dict[str, int]:
        """Counters, for the checkpoint's ``extra``."""
        return {"consecutive": self.consecutive, "total_skipped": self.total_skipped}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore counters saved by :meth:`state_dict`."""
        self.consecutive = int(state.get("consecutive", 0))
        self.total_skipped = int(state.get("total_skipped", 0))


# ---------------------------------------------------------------------------------------------
# Console progress
# ---------------------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


class ProgressLogger:
    """Progress over training steps: a tqdm bar on a terminal, plain log lines otherwise.

    When the output stream is not a TTY (a log file, a batch job) it prints every
    ``log_every`` steps, and at :meth:`close`, a line such as
    ``step 100/1000 | loss 1.23 | 2.3 it/s | eta 0:05:00``. ``enabled=False`` (e.g. on ranks
    other than 0) makes every method a no-op.
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "",
        log_every: int = 100,
        enabled: bool = True,
        use_tqdm: bool | None = None,
        file: IO[str] | None = None,
    ) -> None:
        self.total = int(total)
        self.n = int(initial)
        self.desc = desc
        self.log_every = max(int(log_every), 1)
        self.enabled = enabled
        self.file = file if file is not None else sys.stderr
        self.postfix: dict[str, str] = {}
        self._start_n = self.n
        self._start_time = time.perf_counter()
        self._last_logged = self.n
        if use_tqdm is None:
            use_tqdm = bool(getattr(self.file, "isatty", lambda: False)())
        self._bar = None
        if enabled and use_tqdm:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.n,
                desc=desc or None,
                file=self.file,
                dynamic_ncols=True,
            )

    def rate(self) -> float:
        """Steps per second since this logger was created."""
        elapsed = time.perf_counter() - self._start_time
        return (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The plain progress line for the current state."""
        rate = self.rate()
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        parts = [f"{self.desc + ' ' if self.desc else ''}step {self.n}/{self.total}"]
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        parts += [f"{rate:.3g} it/s", f"eta {_format_eta(eta)}"]
        return " | ".join(parts)

    def set_postfix(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Values shown after the step count (floats as 4 significant digits)."""
        if not self.enabled:
            return
        merged = {**(values or {}), **kwargs}
        self.postfix = {key: _format_value(value) for key, value in merged.items()}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps (printing a line every ``log_every`` steps without tqdm)."""
        if not self.enabled:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.n // self.log_every > self._last_logged // self.log_every:
            self._emit()

    def _emit(self) -> None:
        self._last_logged = self.n
        print(self.line(), file=self.file, flush=True)

    def write(self, message: str) -> None:
        """Print a message without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def close(self) -> None:
        """Close the bar, or print a final line if the last step was not logged yet."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.n != self._last_logged:
            self._emit()
        self.enabled = False

    def __enter__(self) -> ProgressLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------


def _scalar_value(value: torch.Tensor | float) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().cpu().item())
    return float(value)


def _image_array(image: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Float images are clamped to [0, 1] (TensorBoard scales them by 255 without clipping)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        return image.float().clamp(0, 1) if image.is_floating_point() else image
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    return image


class TensorBoardLogger:
    """A thin ``SummaryWriter`` wrapper that does nothing unless enabled on the main process.

    ``enabled`` is combined with :func:`is_main_process`, so every rank can call the same
    methods. Images are RGB floats in [0, 1] (clamped) or uint8, ``CHW`` by default.
    """

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True, **writer_kwargs: Any):
        self.enabled = bool(enabled) and is_main_process()
        self.log_dir = Path(log_dir)
        self.writer = None
        if self.enabled:
            # Imported lazily: tensorboard costs about a second to import.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir), **writer_kwargs)

    def scalar(self, tag: str, value: torch.Tensor | float, step: int) -> None:
        """Log one scalar."""
        if self.writer is not None:
            self.writer.add_scalar(tag, _scalar_value(value), step)

    def scalars(
        self, values: Mapping[str, torch.Tensor | float], step: int, prefix: str = ""
    ) -> None:
        """Log each ``values[name]`` under tag ``prefix/name`` (``name`` if no prefix)."""
        if self.writer is None:
            return
        for name, value in values.items():
            tag = f"{prefix.rstrip('/')}/{name}" if prefix else name
            self.writer.add_scalar(tag, _scalar_value(value), step)

    def image(
        self,
        tag: str,
        image: torch.Tensor | np.ndarray,
        step: int,
        dataformats: str = "CHW",
    ) -> None:
        """Log one image (``CHW`` or ``HWC``/``HW`` via ``dataformats``)."""
        if self.writer is not None:
            self.writer.add_image(tag, _image_array(image), step, dataformats=dataformats)

    def images(
        self,
        tag: str,
        images: torch.Tensor | np.ndarray,
        step: int,
        dataformats: str = "NCHW",
    ) -> None:
        """Log a batch of images as one grid under ``tag``."""
        if self.writer is not None:
            self.writer.add_images(tag, _image_array(images), step, dataformats=dataformats)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Log markdown text (e.g. ``config_to_text(cfg)``)."""
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        """Write pending events to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file; further calls are no-ops."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
