"""Which images the IRN scripts can process: too small for the metrics, too large for memory.

Too small: SSIM uses an 11 x 11 Gaussian window (Wang et al., 2004), so every image a metric is
computed on needs at least 11 pixels a side: the HR after modcrop and the ``scale``-pixel border
crop, and, when the LR' metrics are computed (IRN, Xiao et al., ECCV 2020, sec. 4: LR' against
the bicubic LR, no crop), the LR, i.e. ``11 * scale`` HR pixels. :func:`min_side` is that rule;
validation images below it are left out before training starts (:func:`usable_validation_images`)
and ``evaluate.py`` skips them with a note.

Too large: an image's decoded size is read from its header (PIL reads the size without decoding
the pixels) and refused above ``--max-megapixels`` (:func:`check_pixels`), before a decoder
allocates gigabytes. An allocation failure while running the network becomes a one-line message
suggesting tiling (:func:`allocation_message`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_MAX_MEGAPIXELS",
    "SSIM_WINDOW",
    "allocation_message",
    "check_pixels",
    "header_size",
    "is_allocation_failure",
    "min_side",
    "pil_unbounded",
    "too_small",
    "usable_validation_images",
]

SSIM_WINDOW = 11
DEFAULT_MAX_MEGAPIXELS = 100.0


def min_side(scale: int, lr_metrics: bool = True) -> int:
    """Smallest modcropped HR side every metric accepts at ``scale``: 11 SSIM pixels after the
    ``scale``-pixel border crop, and with ``lr_metrics`` 11 LR pixels (``11 * scale`` HR)."""
    side = SSIM_WINDOW + 2 * scale
    side += (-side) % scale
    return max(side, SSIM_WINDOW * scale) if lr_metrics else side


def too_small(scale: int, hw: tuple[int, int], lr_metrics: bool = True) -> str | None:
    """Why an HR image of ``(height, width)`` cannot be evaluated at ``scale``, or ``None``."""
    h0, w0 = hw
    need = min_side(scale, lr_metrics)
    if min(h0 - h0 % scale, w0 - w0 % scale) < need:
        why = f" ({SSIM_WINDOW} LR pixels for the LR' SSIM)" if lr_metrics and scale > 1 else ""
        return f"{w0}x{h0} is too small for x{scale}: needs {need}px a side{why}"
    return None


def usable_validation_images(items: Sequence[Any], scale: int, say: bool = True) -> list[Any]:
    """The validation images large enough for every metric; the others are named in one
    warning line (on stderr) before training starts, never a failure mid-run."""
    keep, dropped = [], []
    for item in items:
        reason = too_small(scale, tuple(item.size))
        if reason is None:
            keep.append(item)
        else:
            dropped.append(f"{item.name} ({reason})")
    if dropped and say:
        rest = "no validation is left" if not keep else f"validating on the other {len(keep)}"
        print(
            f"warning: --val-data: skipping {len(dropped)} image(s) too small to validate on: "
            f"{'; '.join(dropped[:5])}{' ...' if len(dropped) > 5 else ''}; {rest}",
            file=sys.stderr,
            flush=True,
        )
    return keep


@contextlib.contextmanager
def pil_unbounded() -> Iterator[None]:
    """PIL's decompression-bomb check off while reading a header: the size limit is
    :func:`check_pixels`' job, with a message naming the flag."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def header_size(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` of an image file from its header (no pixel decoding), or ``None``
    when PIL cannot read the header (the decoder then reports the real error)."""
    from PIL import Image

    try:
        with pil_unbounded(), Image.open(path) as im:
            w, h = im.size
    except Exception:  # not readable by PIL: leave it to the decoder
        return None
    return int(h), int(w)


def check_pixels(path: str | Path, flag: str, max_megapixels: float) -> None:
    """``ValueError`` naming the file, its size, the limit and ``--max-megapixels`` when the
    image decodes to more than ``max_megapixels`` million pixels (read from the header)."""
    hw = header_size(path)
    if hw is None:
        return
    pixels = hw[0] * hw[1]
    if pixels > max_megapixels * 1e6:
        raise ValueError(
            f"{flag} {path}: {hw[1]}x{hw[0]} decodes to {pixels / 1e6:.1f} megapixels, above the "
            f"limit of {max_megapixels:g} (--max-megapixels; raise it if the memory allows, "
            "with --tile auto)"
        )


def is_allocation_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failed memory allocation (CPU or CUDA)."""
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "can't allocate" in text
        or "not enough memory" in text
        or "out of memory" in text
        or "failed to allocate" in text
    )


def allocation_message(err: BaseException, what: str) -> str:
    """One line for an allocation failure while processing ``what``, suggesting tiling."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    first = lines[0][:160] if lines else type(err).__name__
    return (
        f"{what}: out of memory ({first}); use --tile auto (it fits --memory-budget) or a "
        "smaller --tile"
    )
