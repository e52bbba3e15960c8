"""The paper's evaluation of one image, shared by ``evaluate.py`` and validation.

The protocol (docs/method.md sec. 5; IRN sec. 4.1; Diss. sec. 3.3.3), for an HR image (RGB
float in [0, 1]):

1. ``HR`` is cropped to a multiple of the scale from the top-left (``modcrop``);
2. ``LR' = Quant(f(HR)[:, :3])`` (8-bit, as a stored image would be);
3. ``HR' = f^-1(LR', z)`` with ``z ~ N(0, temperature^2)`` (``temperature`` is the authors'
   ``gaussian_scale``; 0 gives the mean upscaling ``z = 0``), for each of ``draws`` samples;
4. images to uint8 by ``round(clamp(v, 0, 1) * 255)``; PSNR/SSIM of ``HR'`` on Y and RGB with
   ``scale`` pixels cropped on each side, and of ``LR'`` against the bicubic LR (no crop).

Metrics are the mean over draws. The bicubic baseline downsamples and upsamples with the
MATLAB-style bicubic.

Two variations (``evaluate.py --z-from``, ``--lr-source bicubic``): a fixed ``z`` (taken from
another HR image by :func:`irn.tiling.latent_tiled`, one draw) instead of a sampled one, and the
8-bit bicubic LR of the HR upscaled in place of ``LR'`` (super-resolution; no ``LR'`` metrics).

Large images (e.g. 5K photos) are handled in bounded memory: the network runs tile by tile when
``tile`` is given (:mod:`irn.tiling`), and above :data:`LOWMEM_PIXELS` HR pixels the metrics, the
bicubic resizes and the uint8 conversions run over bands of rows (SSIM's bands overlap by the
10 rows its 11x11 window needs, the bicubic bands by 3 pixels of the kernel's support). The
banded results equal the whole-image ones up to float64 summation order
(``tests/test_evaluate.py`` checks both).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from common.images import jpeg_roundtrip
from common.imresize import imresize
from common.metrics import image_metrics, modcrop, quantize_to_uint8, rgb_to_y, ssim
from irn.tiling import DEFAULT_OVERLAP, downscale_tiled, estimate_z, sample_z, upscale_tiled

__all__ = [
    "HR_KEYS",
    "LOWMEM_PIXELS",
    "LR_KEYS",
    "bicubic_baseline",
    "bicubic_resize",
    "evaluate_rescaling",
    "image_metrics_lowmem",
    "mean_metrics",
]

HR_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
LR_KEYS = tuple(f"lr_{k}" for k in HR_KEYS)

# Above this many pixels, metrics and bicubic resizes are computed over bands of rows.
LOWMEM_PIXELS = 4_000_000
# Pixels per band in the banded computations (about 8 MB per float64 RGB array).
BAND_PIXELS = 1_000_000
# Context (in the smaller image's pixels) of a bicubic band; the kernel reaches 2.
_BICUBIC_MARGIN = 3
_SSIM_WINDOW = 11


def _to_uint8_hwc(t: torch.Tensor) -> np.ndarray:
    return quantize_to_uint8(t[0].float()).permute(1, 2, 0).cpu().numpy()


def _band_rows(width: int, band_pixels: int | None) -> int:
    return max(16, (band_pixels or BAND_PIXELS) // max(width, 1))


def _big(img: np.ndarray) -> bool:
    return img.shape[0] * img.shape[1] > LOWMEM_PIXELS


def _quantize_hwc(img: np.ndarray, band_pixels: int | None = None) -> np.ndarray:
    """``quantize_to_uint8(img.astype(float64))``, band by band for large images."""
    if not _big(img):
        return quantize_to_uint8(img.astype(np.float64))
    out = np.empty(img.shape, dtype=np.uint8)
    step = _band_rows(img.shape[1], band_pixels)
    for r in range(0, img.shape[0], step):
        out[r : r + step] = quantize_to_uint8(img[r : r + step].astype(np.float64))
    return out


def bicubic_resize(
    img: np.ndarray,
    scale: int,
    *,
    up: bool,
    to_uint8: bool = False,
    band_pixels: int | None = None,
    banded: bool | None = None,
) -> np.ndarray:
    """MATLAB-style bicubic resize of an ``[H, W, C]`` image by an integer factor, in float64.

    ``up=False`` divides the size by ``scale`` (``H``, ``W`` must be multiples of it), ``up=True``
    multiplies it. Equals ``imresize(img.astype(float64), scale=s or 1/s)``; for large images
    (``banded``, default: above :data:`LOWMEM_PIXELS` pixels) the output is computed over bands
    of rows, each from the input rows it needs plus 3 pixels (of the smaller image) of kernel
    support, so only one band is ever held in float64. ``to_uint8`` quantises each band
    (``quantize_to_uint8``) instead of returning float64.
    """
    s = int(scale)
    factor = float(s) if up else 1.0 / s
    h, w = img.shape[:2]
    if not up and (h % s or w % s):
        raise ValueError(f"bicubic_resize: {h}x{w} is not a multiple of the scale {s}")
    if banded is None:
        banded = _big(img) or (up and h * w * s * s > LOWMEM_PIXELS)
    if not banded:
        out = imresize(img.astype(np.float64), scale=factor)
        return quantize_to_uint8(out) if to_uint8 else out
    out_h, out_w = (h * s, w * s) if up else (h // s, w // s)
    shape = (out_h, out_w, *img.shape[2:])
    out = np.empty(shape, dtype=np.uint8 if to_uint8 else np.float64)
    step = _band_rows(max(w, out_w), band_pixels)
    m = _BICUBIC_MARGIN
    for o0 in range(0, out_h, step):
        o1 = min(out_h, o0 + step)
        if up:
            i0, i1 = max(0, o0 // s - m), min(h, -(-o1 // s) + m)
            offset = o0 - i0 * s
        else:
            i0, i1 = max(0, (o0 - m) * s), min(h, (o1 + m) * s)
            offset = o0 - i0 // s
        part = imresize(img[i0:i1].astype(np.float64), scale=factor)[offset : offset + o1 - o0]
        out[o0:o1] = quantize_to_uint8(part) if to_uint8 else part
    return out


def image_metrics_lowmem(
    hr: np.ndarray,
    sr: np.ndarray,
    crop_border: int = 0,
    band_pixels: int | None = None,
    banded: bool | None = None,
) -> dict[str, float]:
    """:func:`common.metrics.image_metrics` of two uint8 ``[H, W, 3]`` images in bounded memory.

    Small images (``banded`` None and at most :data:`LOWMEM_PIXELS` pixels) go straight to
    ``image_metrics``. Otherwise PSNR accumulates the squared errors band by band, and SSIM (whose
    value is the mean of its map over all pixels and channels) is the row-weighted mean of
    :func:`common.metrics.ssim` over bands of output rows, each band read with the 10 extra
    input rows of the 11x11 'valid' window; Y is :func:`common.metrics.rgb_to_y` of each band.
    """
    if hr.shape != sr.shape or hr.ndim != 3 or hr.shape[2] != 3:
        raise ValueError(f"expected two RGB images of equal shape, got {hr.shape}, {sr.shape}")
    if banded is None:
        banded = _big(hr)
    if not banded:
        return image_metrics(hr, sr, crop_border=crop_border)
    c = int(crop_border)
    h, w = hr.shape[:2]
    if c < 0 or 2 * c >= min(h, w):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    if c:
        hr, sr = hr[c:-c, c:-c], sr[c:-c, c:-c]
    h, w = hr.shape[:2]
    if min(h, w) < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {(h, w)}")

    def pair(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a = hr[r0:r1].astype(np.float64)
        b = sr[r0:r1].astype(np.float64)
        return a, b, rgb_to_y(a, data_range=255.0), rgb_to_y(b, data_range=255.0)

    step = _band_rows(w, band_pixels)
    sse_rgb = sse_y = 0.0
    for r0 in range(0, h, step):
        a, b, ya, yb = pair(r0, min(h, r0 + step))
        sse_rgb += float(np.sum((a - b) ** 2))
        sse_y += float(np.sum((ya - yb) ** 2))
    rows_out = h - _SSIM_WINDOW + 1
    ssim_rgb = ssim_y = 0.0
    for o0 in range(0, rows_out, step):
        o1 = min(rows_out, o0 + step)
        a, b, ya, yb = pair(o0, o1 + _SSIM_WINDOW - 1)
        ssim_rgb += ssim(a, b) * (o1 - o0)
        ssim_y += ssim(ya, yb) * (o1 - o0)

    def to_psnr(sse: float, count: int) -> float:
        return math.inf if sse == 0 else 20.0 * math.log10(255.0 / math.sqrt(sse / count))

    return {
        "psnr_y": to_psnr(sse_y, h * w),
        "ssim_y": ssim_y / rows_out,
        "psnr_rgb": to_psnr(sse_rgb, h * w * 3),
        "ssim_rgb": ssim_rgb / rows_out,
    }


def _lr_metrics(lr_uint8: np.ndarray, lr_bicubic: np.ndarray) -> dict[str, float]:
    ref = _quantize_hwc(lr_bicubic)
    return {f"lr_{k}": v for k, v in image_metrics_lowmem(ref, lr_uint8, 0).items()}


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each numeric key over ``rows`` (keys present in every row)."""
    if not rows:
        return {}
    keys = [
        k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys if all(k in r for r in rows)}


def bicubic_baseline(
    hr: np.ndarray,
    scale: int,
    quantize_lr: bool = False,
    jpeg_quality: int | None = None,
    return_images: bool = False,
) -> dict:
    """The "Bicubic & Bicubic" baseline: MATLAB-style bicubic down then up, HR metrics.

    By default the LR stays in float, as in the reference numbers this project is checked
    against (28.39 / 0.7794 Y on the sample validation photos at x4; with ``quantize_lr=True``,
    i.e. an 8-bit LR as a stored image, it is 28.39 / 0.7792). ``jpeg_quality`` stores the LR
    as 8-bit and JPEG-compresses it at that quality (implies ``quantize_lr``).
    ``return_images`` adds ``lr`` and ``hr_rec`` (uint8 HWC).
    """
    hr = modcrop(hr, scale)
    lr = bicubic_resize(hr, scale, up=False)
    if quantize_lr or jpeg_quality is not None:
        lr = quantize_to_uint8(lr)
        if jpeg_quality is not None:
            lr = jpeg_roundtrip(lr, int(jpeg_quality))
        lr = lr.astype(np.float64) / 255.0
    up = bicubic_resize(lr, scale, up=True, to_uint8=True)
    out: dict = image_metrics_lowmem(_quantize_hwc(hr), up, crop_border=scale)
    if return_images:
        out["lr"] = quantize_to_uint8(lr)
        out["hr_rec"] = up
    return out


@torch.no_grad()
def evaluate_rescaling(
    model: torch.nn.Module,
    hr: np.ndarray,
    *,
    draws: int = 5,
    temperature: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = False,
    jpeg_quality: int | None = None,
    return_images: bool = False,
    tile: int | None = None,
    tile_overlap: int = DEFAULT_OVERLAP,
    progress: Callable[[str, int, int], None] | None = None,
    z: torch.Tensor | None = None,
    lr_source: str = "irn",
    z_estimate: int | None = None,
) -> dict:
    """Rescale one HR image with an IRN and measure it as the paper does.

    Args:
        model: an :class:`irn.IRN` (eval mode is set here and restored afterwards).
        hr: RGB float ``[H, W, 3]`` in [0, 1]; cropped to a multiple of the scale here.
        draws: samples of ``z`` to average over (the paper: 5).
        temperature: standard deviation of ``z``; 0 = the mean upscaling (then one draw).
        seed: seed of the ``z`` generator, so evaluations are reproducible.
        device: device of the ``z`` generator (and of the model).
        amp: run under autocast (bf16 on CPU, fp16 on CUDA); metrics are still from uint8.
        jpeg_quality: JPEG-compress ``LR'`` at this quality before upscaling (the dissertation's
            compression-resistant rescaling test, q = 90); LR metrics are of the stored LR.
        return_images: also return ``lr`` (uint8 HWC) and ``hr_rec`` (uint8 HWC, first draw).
        tile: run the network on HR tiles of this size (a multiple of the scale; LR tiles of
            ``tile / scale`` for upscaling) with ``tile_overlap`` LR pixels of context, one at a
            time (:mod:`irn.tiling`); None = the whole image at once. Each draw's ``z`` is one
            full-size sample, so tiled and untiled use the same ``z``.
        tile_overlap: LR pixels of context on each side of a tile.
        progress: called as ``progress(stage, done, total)`` after each tile
            (``stage`` is ``"downscale"`` or ``"upscale k/n"``).
        z: a fixed latent ``[1, z_channels, h, w]`` for the whole LR (latent transfer,
            :func:`irn.tiling.latent_tiled`); then one draw, and ``temperature`` must stay 1.
        lr_source: ``"irn"`` upscales ``LR'`` (the protocol); ``"bicubic"`` upscales the 8-bit
            MATLAB-bicubic LR of the HR instead (super-resolution with the non-retrained IRN,
            the dissertation's SR approach #3, appendix A.2). ``LR'`` then does not exist, so the
            ``lr_*`` metrics are None.
        z_estimate: upscale with ``z`` estimated from the stored LR, :func:`irn.tiling.estimate_z`
            with this window (LR pixels; 0 = whole image); one draw, ``temperature`` stays 1.

    Returns:
        ``{psnr_y, ssim_y, psnr_rgb, ssim_rgb, lr_psnr_y, ..., draws, draw_psnr_y, seconds}``:
        metrics are means over draws; ``draw_psnr_y`` lists each draw's PSNR-Y.
    """
    start, scale = time.perf_counter(), int(model.scale)
    hr = modcrop(hr, scale).astype(np.float32, copy=False)
    _check_options(hr.shape, scale, lr_source, z, temperature, z_estimate)
    n = 1 if temperature == 0 or z is not None or z_estimate is not None else int(draws)
    tiling = (tile, tile_overlap, amp, progress)
    was_training = model.training
    model.eval()
    try:
        lr_u8 = _stored_lr(model, hr, lr_source, jpeg_quality, tiling)
        if z_estimate is not None:
            z = _estimated_z(model, lr_u8, z_estimate, tiling)
        rows, first = _upscale_draws(
            model, hr, lr_u8, n, z, temperature, seed, torch.device(device), tiling
        )
    finally:
        model.train(was_training)
    out: dict = mean_metrics(rows)
    if lr_source == "bicubic":
        out.update(dict.fromkeys(LR_KEYS))  # the upscaled LR is the bicubic LR: nothing to compare
    else:
        out.update(_lr_metrics(lr_u8, bicubic_resize(hr, scale, up=False)))
    out["draws"] = n
    out["draw_psnr_y"] = [r["psnr_y"] for r in rows]
    out["seconds"] = time.perf_counter() - start
    if return_images:
        out["lr"] = lr_u8
        out["hr_rec"] = np.ascontiguousarray(first)
    return out


def _check_options(
    hr_shape: tuple[int, ...],
    scale: int,
    lr_source: str,
    z: torch.Tensor | None,
    temperature: float,
    z_estimate: int | None = None,
) -> None:
    """:func:`evaluate_rescaling`'s argument checks, as ``ValueError`` naming the argument."""
    if lr_source not in ("irn", "bicubic"):
        raise ValueError(f"lr_source must be 'irn' or 'bicubic', got {lr_source!r}")
    if z_estimate is not None:
        if z is not None or temperature != 1.0:
            raise ValueError("z_estimate replaces a given z and the sampling temperature")
        if not z_estimate >= 0:
            raise ValueError(f"z_estimate (a window in LR pixels) must be >= 0, got {z_estimate}")
    if z is not None and temperature != 1.0:
        raise ValueError(
            f"temperature={temperature} applies only to a sampled z, not to a given z"
        )
    lr_hw = (hr_shape[0] // scale, hr_shape[1] // scale)
    if z is not None and tuple(z.shape[-2:]) != lr_hw:
        raise ValueError(
            f"the given z is for a {z.shape[-1]}x{z.shape[-2]} LR, but this image's x{scale} LR "
            f"is {lr_hw[1]}x{lr_hw[0]} (HR {hr_shape[1]}x{hr_shape[0]} after modcrop)"
        )


def _stage(
    progress: Callable[[str, int, int], None] | None, stage: str
) -> Callable[[int, int], None] | None:
    """``progress`` with its stage name bound (``None`` stays ``None``)."""
    return None if progress is None else functools.partial(progress, stage)


def _stored_lr(
    model: torch.nn.Module,
    hr: np.ndarray,
    lr_source: str,
    jpeg_quality: int | None,
    tiling: tuple,
) -> np.ndarray:
    """The 8-bit LR a user would store (uint8 HWC): ``Quant(f(HR))`` or, for ``lr_source
    "bicubic"``, the MATLAB-bicubic LR; JPEG-compressed at ``jpeg_quality`` if given."""
    scale = int(model.scale)
    tile, overlap, amp, progress = tiling
    if lr_source == "bicubic":
        lr_u8 = _quantize_hwc(bicubic_resize(hr, scale, up=False))
        return lr_u8 if jpeg_quality is None else jpeg_roundtrip(lr_u8, int(jpeg_quality))
    # [1, 3, H, W] view of the HWC array: tiles are copied to the device one at a time.
    x = torch.from_numpy(hr).permute(2, 0, 1)[None]
    lr_q = downscale_tiled(model, x, tile, overlap, amp, _stage(progress, "downscale"))
    if jpeg_quality is not None:
        lr_q = jpeg_roundtrip(lr_q, int(jpeg_quality))
    return _to_uint8_hwc(lr_q)


def _estimated_z(
    model: torch.nn.Module, lr_u8: np.ndarray, window: int, tiling: tuple
) -> torch.Tensor:
    """:func:`irn.tiling.estimate_z` of the stored 8-bit LR (uint8 HWC)."""
    tile, overlap, amp, progress = tiling
    lr_q = torch.from_numpy(lr_u8.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
    return estimate_z(model, lr_q, window, tile, overlap, amp, _stage(progress, "estimate z"))


def _upscale_draws(
    model: torch.nn.Module,
    hr: np.ndarray,
    lr_u8: np.ndarray,
    n: int,
    z: torch.Tensor | None,
    temperature: float,
    seed: int,
    device: torch.device,
    tiling: tuple,
) -> tuple[list[dict], np.ndarray]:
    """Upscale ``lr_u8`` ``n`` times (``z`` given, or drawn from ``seed``) and measure each
    8-bit result against the HR; returns the per-draw metrics and the first upscaled image."""
    tile, overlap, amp, progress = tiling
    scale = int(model.scale)
    lr_q = torch.from_numpy(lr_u8.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
    lr_q = lr_q.to(device)
    hr_u8 = _quantize_hwc(hr)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    rows, first = [], None
    fixed = None if z is None else z.to(lr_q.device, lr_q.dtype)
    for k in range(n):
        if fixed is None:
            z_k = sample_z(model, lr_q.shape, temperature, gen, lr_q.dtype, lr_q.device)
        else:
            z_k = fixed
        report = _stage(progress, f"upscale {k + 1}/{n}")
        rec = upscale_tiled(model, lr_q, z_k, tile, overlap, amp, True, report)
        del z_k
        rec_u8 = rec[0].permute(1, 2, 0).cpu().numpy()
        first = rec_u8 if first is None else first
        rows.append(image_metrics_lowmem(hr_u8, rec_u8, crop_border=scale))
        del rec, rec_u8
    return rows, first
