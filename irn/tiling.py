"""Rescale images of any size with an IRN in bounded memory: tiles, one latent, padding.

Tiles
-----
The image is cut into a grid of tiles (:func:`tile_spans`: ``ceil(L / tile)`` near-equal spans per
axis, boundaries on multiples of the scale). Each tile is processed together with ``overlap`` LR
pixels of context on every side (``overlap * scale`` HR pixels; less at the image border, where
the untiled network sees its zero padding too), and only the tile's own part of the result is
kept; the context margins are discarded. Tiles are processed one at a time, so the network's
memory is that of one padded tile, whatever the image size.

The IRN is fully convolutional, but its receptive field is large (x4: 8 couplings at 1/2 size
and 8 at 1/4 size, each applying two dense blocks of five 3x3 convolutions one after the other,
i.e. 8 * 10 / 2 + 8 * 10 = 120 LR pixels of radius), so a tile is never *exactly* the untiled
result. The influence of far pixels decays quickly, though: a few LR pixels of context
already bring the tiled result within a rounding flip of the untiled one, and
:data:`DEFAULT_OVERLAP` = 16 LR pixels leaves a wide margin (docs/performance.md, "Large
images: tiles", gives the measurements and their commands).

The latent
----------
Upscaling a tile uses the crop of ONE full-size ``z`` (:func:`sample_z`), drawn once per image
exactly as :meth:`irn.model.IRN.upscale` draws it (``torch.randn(z_shape, generator) *
temperature`` in the LR image's dtype and device). With the same generator state the tiled
and untiled upscalings therefore use the same ``z``, and differ only by the boundary effects
above. A full ``z`` costs ``4 * 3 * (s^2 - 1) / s^2`` bytes per HR pixel (under 12), the same as
the float32 HR image itself.

Latent transfer (``evaluate.py --z-from``) takes ``z = f(x)[:, C:]`` of another HR image ``x``
instead of a sample: :func:`latent_tiled` computes that whole-image ``z`` with the same tiles and
context as :func:`downscale_tiled`, and :func:`upscale_tiled` crops it per tile like a sampled
one, so tiled latent transfer equals the untiled one up to the same boundary effects.

Sizes that are not a multiple of the scale
------------------------------------------
Evaluation follows the paper's protocol (crop to a multiple of the scale from the top-left,
:func:`common.metrics.modcrop`). For rescaling one's own photos, :func:`pad_to_multiple`
instead extends the image at the bottom and right by reflection (numpy ``mode="reflect"``: the
edge row/column is not repeated, ``... a b c | b a``) to ``ceil(H / s) * s`` by
``ceil(W / s) * s``; the LR image is then ``ceil(H / s) x ceil(W / s)`` and the upscaled result is
cropped back to the top-left ``H x W``.

Memory
------
:func:`choose_tile` turns a memory budget into a tile size from :data:`BYTES_PER_PIXEL`, the
peak resident memory per HR pixel of a tile (context included) of the authors' architecture
(gc = 32) under ``torch.no_grad`` measured on a CPU with torch 2.13.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from common.metrics import quantize_to_uint8
from common.runtime import autocast_context

__all__ = [
    "BYTES_PER_PIXEL",
    "DEFAULT_OVERLAP",
    "DEFAULT_Z_WINDOW",
    "MIN_TILE",
    "choose_tile",
    "downscale_tiled",
    "estimate_z",
    "image_bytes_per_pixel",
    "latent_tiled",
    "local_mean",
    "pad_to_multiple",
    "parse_tile",
    "sample_z",
    "tile_spans",
    "tiles",
    "upscale_tiled",
]

# Context (LR pixels) on each side of a tile; see the module docstring and the README for the
# measurement behind it.
DEFAULT_OVERLAP = 16

# Peak resident memory per HR pixel of a padded tile for the authors' architecture (gc = 32),
# forward or inverse under no_grad, float32: measured with resource.getrusage on a 2-core CPU
# (torch 2.13, MKL-DNN) as the slope between 768^2 and 1536^2 tiles, 459 B (forward) and 467 B
# (inverse) for x4, similar for x2 (the peak is in the first level's dense blocks); 600 leaves
# room for the allocator.
BYTES_PER_PIXEL = 600.0

# LR pixels over which --z estimate averages the latent of the bicubic upscale (estimate_z).
DEFAULT_Z_WINDOW = 7

# Channels of the latent averaged at once by estimate_z (bounds its temporaries).
_MEAN_CHANNELS = 3

# Smallest HR tile accepted (the network needs some context to be meaningful).
MIN_TILE = 32

ProgressFn = Callable[[int, int], None]


def parse_tile(value: int | str | None) -> int | str | None:
    """``None``/``"none"``/``0`` -> None (no tiling), ``"auto"`` -> ``"auto"``, else a positive
    int (the HR tile size). Raises ``ValueError`` otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "0", "off"):
            return None
        if text == "auto":
            return "auto"
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"tile must be a positive int (HR pixels), 'auto' or 'none', got {text!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"tile must be a positive int, 'auto' or None, got {value!r}")
    if value == 0:
        return None
    if value < MIN_TILE:
        raise ValueError(f"tile must be at least {MIN_TILE} HR pixels, got {value}")
    return int(value)


def tile_spans(length: int, tile: int, align: int = 1) -> list[tuple[int, int]]:
    """Split ``[0, length)`` into ``ceil(length / tile)`` near-equal spans ``[start, stop)``.

    Boundaries are multiples of ``align`` (``length`` must be one), so no span exceeds ``tile``
    rounded up to ``align``, and no span is a sliver.
    """
    if length <= 0 or tile <= 0 or align <= 0 or length % align:
        raise ValueError(
            f"tile_spans: need length > 0 divisible by align > 0 and tile > 0, got "
            f"length={length}, tile={tile}, align={align}"
        )
    units, unit_tile = length // align, max(tile // align, 1)
    n = math.ceil(units / unit_tile)
    bounds = [round(k * units / n) * align for k in range(n + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def tiles(
    height: int, width: int, tile: int | None, overlap: int, align: int = 1
) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Yield ``(core, region)`` boxes ``(top, bottom, left, right)`` covering a ``height x width``
    grid: ``core`` is the tile kept, ``region`` the tile plus ``overlap`` cells of context on
    each side, clipped to the image. ``tile=None`` gives one tile (the whole image)."""
    if tile is None:
        box = (0, height, 0, width)
        yield box, box
        return
    for top, bottom in tile_spans(height, tile, align):
        for left, right in tile_spans(width, tile, align):
            region = (
                max(0, top - overlap),
                min(height, bottom + overlap),
                max(0, left - overlap),
                min(width, right + overlap),
            )
            yield (top, bottom, left, right), region


def _check_overlap(overlap: int) -> int:
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0:
        raise ValueError(f"overlap must be an int >= 0 (LR pixels), got {overlap!r}")
    return int(overlap)


def _check_tile(tile: int | None, scale: int) -> int | None:
    if tile is None:
        return None
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < MIN_TILE:
        raise ValueError(f"tile must be an int >= {MIN_TILE} (HR pixels) or None, got {tile!r}")
    if tile % scale:
        raise ValueError(f"tile {tile} must be a multiple of the scale {scale}")
    return int(tile)


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


# LR pixels of margin that make a bicubic upscale of an LR crop equal that of the whole image
# on the crop: each HR pixel reads the 4 x 4 LR pixels around its source point, at most 2 away.
_BICUBIC_MARGIN = 2


def bicubic_region(
    lr: torch.Tensor,
    region: tuple[int, int, int, int],
    scale: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``B(lr)`` on the HR pixels of the LR box ``region`` (top, bottom, left, right), clipped
    to [0, 1], computed on ``device`` (default ``lr``'s) from that box and
    :data:`_BICUBIC_MARGIN` LR pixels around it only.

    Equal to cropping the bicubic upscale of the whole ``lr`` (float32, ``align_corners=False``)
    up to float rounding: inside the image the margin holds every LR pixel the crop reads, and
    at its border the crop replicates the same edge pixel the whole image does.
    """
    r0, r1, c0, c1 = region
    m = _BICUBIC_MARGIN
    t, b = max(0, r0 - m), min(lr.shape[2], r1 + m)
    left, right = max(0, c0 - m), min(lr.shape[3], c1 + m)
    crop = lr[:, :, t:b, left:right].to(device or lr.device, torch.float32)
    up = torch.nn.functional.interpolate(
        crop, scale_factor=scale, mode="bicubic", align_corners=False
    )
    rows = slice((r0 - t) * scale, (r1 - t) * scale)
    cols = slice((c0 - left) * scale, (c1 - left) * scale)
    return up[:, :, rows, cols].clamp_(0.0, 1.0)


def _forward_tiled(
    model: torch.nn.Module,
    image: torch.Tensor,
    part: str,
    tile: int | None,
    overlap: int,
    amp: bool,
    progress: ProgressFn | None,
) -> torch.Tensor:
    """One part of ``f(x)`` tile by tile: ``"lr"`` (quantised, ``model.downscale``) or ``"z"``
    (``model.encode(x)[1]``) of the HR ``x = image``, or ``"z_bicubic"``: ``"z"`` of the bicubic
    upscale of the LR ``image``, made tile by tile (:func:`bicubic_region`); see
    :func:`downscale_tiled`, :func:`latent_tiled` and :func:`estimate_z`."""
    names = {"lr": "downscale_tiled", "z": "latent_tiled", "z_bicubic": "estimate_z"}
    name, s = names[part], int(model.scale)
    tile = _check_tile(tile, s)
    overlap = _check_overlap(overlap)
    kind = "lr" if part == "z_bicubic" else "hr"
    if image.dim() != 4 or image.shape[0] != 1:
        shape = tuple(image.shape)
        raise ValueError(f"{name}: expected {kind} of shape [1, C, H, W], got {shape}")
    _, c, height, width = image.shape
    if part == "z_bicubic":
        height, width = height * s, width * s
    elif height % s or width % s:
        raise ValueError(
            f"{name}: HR size {height}x{width} is not a multiple of the scale {s}; "
            "modcrop or pad_to_multiple first"
        )
    device = _model_device(model)
    lr_shape = (1, c, height // s, width // s)
    shape = lr_shape if part == "lr" else tuple(model.z_shape(lr_shape))
    out = torch.empty(shape, dtype=torch.float32, device=image.device)
    boxes = list(tiles(height // s, width // s, None if tile is None else tile // s, overlap))
    for done, (core, region) in enumerate(boxes, 1):
        r0, r1, c0, c1 = region
        if part == "z_bicubic":  # the crop plus its bicubic margin moves to the device
            x = bicubic_region(image, region, s, device)
        else:
            x = image[:, :, r0 * s : r1 * s, c0 * s : c1 * s].to(device, torch.float32)
        x = x.contiguous()
        with autocast_context(device, amp):
            y = model.downscale(x) if part == "lr" else model.encode(x)[1]
        y = y.float()
        t, b, left, right = core
        out[:, :, t:b, left:right] = y[:, :, t - r0 : b - r0, left - c0 : right - c0].to(
            out.device
        )
        del x, y
        if progress is not None:
            progress(done, len(boxes))
    return out


@torch.no_grad()
def downscale_tiled(
    model: torch.nn.Module,
    hr: torch.Tensor,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    amp: bool = False,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """The 8-bit LR image ``Quant(f(hr)[:, :C])`` computed tile by tile.

    Args:
        model: an :class:`irn.IRN` (put in eval mode by the caller).
        hr: ``[1, C, H, W]`` float in [0, 1], ``H`` and ``W`` multiples of the scale; may live
            on the CPU (and be a non-contiguous view) while the model is on another device:
            only one padded tile at a time is moved there.
        tile: HR tile size (a multiple of the scale), or None for the whole image at once.
        overlap: LR pixels of context on each side of a tile (``overlap * scale`` HR pixels).
        amp: run the network under autocast (bf16 on CPU, fp16 on CUDA).
        progress: called as ``progress(done, total)`` after each tile.

    Returns:
        float32 ``[1, C, H/s, W/s]`` on ``hr``'s device, values ``k / 255``.
    """
    return _forward_tiled(model, hr, "lr", tile, overlap, amp, progress)


@torch.no_grad()
def latent_tiled(
    model: torch.nn.Module,
    hr: torch.Tensor,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    amp: bool = False,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """The latent ``z = f(hr)[:, C:]`` of an HR image, computed tile by tile (latent transfer).

    The same tiles and context as :func:`downscale_tiled` (arguments as there), so a tiled ``z``
    differs from the untiled one only by the boundary effects described in the module docstring.
    The result is one whole-image latent: :func:`upscale_tiled` crops it per tile exactly as it
    crops a sampled ``z``.

    Returns:
        float32 ``[1, C * (s^2 - 1), H/s, W/s]`` (``model.z_shape`` of the LR) on ``hr``'s device.
    """
    return _forward_tiled(model, hr, "z", tile, overlap, amp, progress)


def local_mean(z: torch.Tensor, window: int) -> torch.Tensor:
    """Each channel of ``z`` ``[1, C, h, w]`` averaged over a ``window`` x ``window`` box around
    every pixel (the edges replicated); ``window == 0``: over the whole image."""
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if window == 0:
        return z.mean((2, 3), keepdim=True).expand_as(z).contiguous()
    lo = window // 2
    hi = window - 1 - lo
    padded = torch.nn.functional.pad(z, (lo, hi, lo, hi), mode="replicate")
    return torch.nn.functional.avg_pool2d(padded, window, stride=1)


@torch.no_grad()
def estimate_z(
    model: torch.nn.Module,
    lr: torch.Tensor,
    window: int = DEFAULT_Z_WINDOW,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    amp: bool = False,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """A latent for upscaling ``lr`` estimated from ``lr`` alone (``--z estimate``).

    ``z_hat = local_mean(f(B(lr))[:, C:], window)``: the latent the model assigns to the bicubic
    upscale ``B(lr)`` of the LR (clipped to [0, 1]; any HR with this LR's colours), averaged
    over ``window`` LR pixels (:func:`local_mean`). A trained IRN's forward pass leaves a
    small offset in ``z`` that depends on the local colour, not on the detail (on flat
    regions it is most of ``z``); ``z = 0`` throws it away and the inverse turns the loss into
    a fixed pattern, while ``z_hat`` keeps it and the window averages away the detail that
    ``B(lr)`` makes up. The forward pass runs tile by tile like :func:`latent_tiled`, each
    tile's ``B(lr)`` made from its own LR crop (:func:`bicubic_region`), and the average runs
    in place a few channels at a time: beyond one tile, the only whole-image tensor is the
    latent itself, as for a sampled ``z``.

    Returns:
        float32 ``model.z_shape(lr.shape)`` on ``lr``'s device.
    """
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 0:
        raise ValueError(f"window must be an int >= 0 (LR pixels), got {window!r}")
    z = _forward_tiled(model, lr, "z_bicubic", tile, overlap, amp, progress)
    for c in range(0, z.shape[1], _MEAN_CHANNELS):
        part = z[:, c : c + _MEAN_CHANNELS]
        part.copy_(local_mean(part, int(window)))
    return z


def sample_z(
    model: torch.nn.Module,
    lr_shape: tuple[int, ...] | torch.Size,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One full-size latent for an LR image, drawn as :meth:`IRN.upscale` draws it.

    ``z ~ N(0, temperature^2)`` of shape ``model.z_shape(lr_shape)``, from
    ``torch.randn(..., generator=generator)`` (the same numbers ``upscale`` would take from that
    generator for an LR of this dtype and device), zeros for ``temperature == 0``.
    """
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    shape = model.z_shape(tuple(lr_shape))
    if temperature == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return z.mul_(temperature) if temperature != 1 else z


@torch.no_grad()
def upscale_tiled(
    model: torch.nn.Module,
    lr: torch.Tensor,
    z: torch.Tensor,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    amp: bool = False,
    to_uint8: bool = False,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """``f^-1(cat(lr, z))`` computed tile by tile, each tile with its crop of the one ``z``.

    Args:
        model: an :class:`irn.IRN` (put in eval mode by the caller).
        lr: ``[1, C, h, w]`` LR image (used as given; quantise it first for an 8-bit LR).
        z: ``[1, z_channels, h, w]`` latent for the whole image (:func:`sample_z`).
        tile: HR tile size (a multiple of the scale; the LR tile is ``tile / scale``), or None.
        overlap: LR pixels of context on each side of a tile.
        amp: run the network under autocast.
        to_uint8: return ``round(clamp(v, 0, 1) * 255)`` as uint8 (quantised tile by tile, so a
            float32 copy of the whole HR image is never held).
        progress: called as ``progress(done, total)`` after each tile.

    Returns:
        ``[1, C, h*s, w*s]`` float32 (or uint8) on ``lr``'s device.
    """
    s = int(model.scale)
    tile = _check_tile(tile, s)
    overlap = _check_overlap(overlap)
    if lr.dim() != 4 or lr.shape[0] != 1:
        raise ValueError(f"upscale_tiled: expected lr of shape [1, C, h, w], got {lr.shape}")
    expected = tuple(model.z_shape(lr.shape))
    if tuple(z.shape) != expected:
        raise ValueError(f"upscale_tiled: z must have shape {expected}, got {tuple(z.shape)}")
    _, c, h, w = lr.shape
    device = _model_device(model)
    dtype = torch.uint8 if to_uint8 else torch.float32
    out = torch.empty(1, c, h * s, w * s, dtype=dtype, device=lr.device)
    boxes = list(tiles(h, w, None if tile is None else tile // s, overlap))
    for done, (core, region) in enumerate(boxes, 1):
        r0, r1, c0, c1 = region
        lr_t = lr[:, :, r0:r1, c0:c1].to(device, torch.float32)
        z_t = z[:, :, r0:r1, c0:c1].to(device, torch.float32)
        with autocast_context(device, amp):
            hr_t = model.upscale(lr_t, z=z_t).float()
        t, b, left, right = core
        hr_t = hr_t[:, :, (t - r0) * s : (b - r0) * s, (left - c0) * s : (right - c0) * s]
        if to_uint8:
            hr_t = quantize_to_uint8(hr_t)
        out[:, :, t * s : b * s, left * s : right * s] = hr_t.to(out.device)
        del lr_t, z_t, hr_t
        if progress is not None:
            progress(done, len(boxes))
    return out


def pad_to_multiple(img: np.ndarray, scale: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad an ``[H, W, C]`` image at the bottom/right to multiples of ``scale``.

    Returns ``(padded, (H, W))``; ``padded`` is ``img`` itself when no padding is needed. The
    padding mirrors about the last row/column without repeating it (numpy ``"reflect"``); an
    image thinner than the padding is mirrored repeatedly, as numpy does.
    """
    h, w = img.shape[:2]
    ph, pw = (-h) % scale, (-w) % scale
    if ph == 0 and pw == 0:
        return img, (h, w)
    mode = "reflect" if min(h, w) > 1 else "edge"  # a 1-pixel side has nothing to reflect
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pad, mode=mode), (h, w)


def image_bytes_per_pixel(scale: int) -> float:
    """Whole-image buffers per HR pixel during an evaluation: the float32 HR (12 B), its uint8
    copy and the uint8 HR' (3 + 3 B), one float32 ``z`` (< 12 B) and the LR images (< 4 B)."""
    return 12.0 + 3.0 + 3.0 + 12.0 * (scale * scale - 1) / scale**2 + 4.0


def choose_tile(
    budget_gb: float,
    scale: int,
    overlap: int = DEFAULT_OVERLAP,
    image_hw: tuple[int, int] | None = None,
    gc: int = 32,
    fixed_gb: float = 0.5,
) -> int:
    """HR tile size that keeps the peak resident memory within ``budget_gb``.

    The budget minus ``fixed_gb`` (Python, torch and the model) and the whole-image buffers of
    ``image_hw`` (:func:`image_bytes_per_pixel`) is divided by :data:`BYTES_PER_PIXEL` (scaled by
    ``gc / 32``) to get the pixels of one padded tile; the tile is its square root minus the
    context on both sides, rounded down to a multiple of ``scale``, at least :data:`MIN_TILE`.
    """
    if not budget_gb > 0:
        raise ValueError(f"memory budget must be > 0 GB, got {budget_gb!r}")
    available = (budget_gb - fixed_gb) * 1e9
    if image_hw is not None:
        available -= image_hw[0] * image_hw[1] * image_bytes_per_pixel(scale)
    per_pixel = BYTES_PER_PIXEL * max(gc, 1) / 32.0
    side = math.sqrt(max(available, 0.0) / per_pixel) - 2 * overlap * scale
    tile = int(side) // scale * scale
    return max(tile, -(-MIN_TILE // scale) * scale)
