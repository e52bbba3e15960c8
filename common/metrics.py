"""Evaluation metrics exactly as the IRN authors' test script computes them.

The protocol is written out in docs/method.md sec. 5.

All metric arithmetic is float64. Conventions (RGB inside the project):

- numpy images are ``[H, W]`` or ``[H, W, C]`` (channel last), torch images ``[C, H, W]`` (or
  ``[B, C, H, W]`` where a function says so);
- ``psnr``/``ssim``/``image_metrics`` take pixel values on the 0..255 scale (uint8, or float
  holding uint8 values), because the SSIM constants ``C1 = (0.01*255)^2``,
  ``C2 = (0.03*255)^2`` assume it;
- images are made uint8 with ``quantize_to_uint8`` (``round(clamp(v, 0, 1) * 255)``), and the Y
  channel is then computed in float from those uint8 values, never re-rounded.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "rgb_to_y",
    "psnr",
    "ssim",
    "image_metrics",
    "quantize_to_uint8",
    "modcrop",
]

# ITU-R BT.601 luma as MATLAB rgb2ycbcr: Y = 16 + 65.481 R + 128.553 G + 24.966 B, RGB in [0, 1].
_Y_OFFSET = 16.0
_Y_COEFFS = (65.481, 128.553, 24.966)

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


def rgb_to_y(img: np.ndarray | torch.Tensor, data_range: float = 1.0) -> np.ndarray | torch.Tensor:
    """Luma of an RGB image, BT.601 as MATLAB ``rgb2ycbcr`` (Diss. eq. 2.24, sec. 2.4.1).

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for RGB in [0, 1], giving Y in [16, 235]. The
    result is returned on the input's scale: for RGB in ``[0, data_range]`` the Y values lie in
    ``[16, 235] * data_range / 255``, i.e. ``data_range=1`` gives [16/255, 235/255] (the authors'
    ``bgr2ycbcr(only_y=True)`` on float images) and ``data_range=255`` gives [16, 235].
    No rounding.

    Args:
        img: numpy ``[..., H, W, 3]`` (channel last) or torch ``[..., 3, H, W]`` (channel at -3),
            RGB order. uint8 input must use ``data_range=255``.
        data_range: the value of full white in ``img`` (1.0 or 255.0).

    Returns:
        numpy: float64 ``[..., H, W]``. torch: ``[..., H, W]`` in the input's floating dtype
        (float64 for integer tensors), differentiable (usable inside a Y-channel loss).
    """
    if not (isinstance(data_range, (int, float)) and data_range > 0):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")
    is_uint8 = (isinstance(img, np.ndarray) and img.dtype == np.uint8) or (
        isinstance(img, torch.Tensor) and img.dtype == torch.uint8
    )
    if is_uint8 and data_range != 255:
        raise ValueError(
            "uint8 images hold values in [0, 255]: call rgb_to_y(img, data_range=255)"
        )
    offset = _Y_OFFSET * data_range / 255.0
    kr, kg, kb = (k / 255.0 for k in _Y_COEFFS)
    if isinstance(img, np.ndarray):
        if img.ndim < 3 or img.shape[-1] != 3:
            raise ValueError(f"expected a numpy RGB image [..., H, W, 3], got shape {img.shape}")
        x = img.astype(np.float64, copy=False)
        return offset + kr * x[..., 0] + kg * x[..., 1] + kb * x[..., 2]
    if isinstance(img, torch.Tensor):
        if img.ndim < 3 or img.shape[-3] != 3:
            raise ValueError(
                f"expected a torch RGB image [..., 3, H, W], got shape {tuple(img.shape)}"
            )
        x = img if img.is_floating_point() else img.to(torch.float64)
        r, g, b = x.unbind(dim=-3)
        return offset + kr * r + kg * g + kb * b
    raise TypeError(f"expected a numpy array or torch tensor, got {type(img)}")


def _as_float64_image(img: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """numpy ``HW``/``HWC`` or torch ``HW``/``CHW`` -> float64 numpy ``HW``/``HWC``."""
    if isinstance(img, torch.Tensor):
        if img.ndim not in (2, 3):
            raise ValueError(
                f"{name}: expected a torch image [C, H, W] or [H, W], got {tuple(img.shape)} "
                "(compute metrics per image of a batch)"
            )
        arr = img.detach().cpu().to(torch.float64).numpy()
        return np.moveaxis(arr, 0, -1) if arr.ndim == 3 else arr
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3):
            raise ValueError(
                f"{name}: expected a numpy image [H, W, C] or [H, W], got {img.shape}"
            )
        return img.astype(np.float64, copy=False)
    raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(img)}")


def _prepare_pair(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, crop_border: int
) -> tuple[np.ndarray, np.ndarray]:
    x = _as_float64_image(a, "a")
    y = _as_float64_image(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)):
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border > 0:
        h, w = x.shape[:2]
        if 2 * crop_border >= min(h, w):
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
        x = x[crop_border:-crop_border, crop_border:-crop_border]
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    return x, y


def psnr(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    crop_border: int = 0,
    max_val: float = 255.0,
) -> float:
    """Peak signal-to-noise ratio ``20 log10(max_val / sqrt(MSE))`` in dB, float64 (method.md 5).

    ``crop_border`` pixels are removed on every side first; the MSE is the mean over all remaining
    pixels and channels. Identical images give ``inf``.
    """
    x, y = _prepare_pair(a, b, crop_border)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 20.0 * math.log10(max_val / math.sqrt(mse))


def _gaussian_window(size: int = _SSIM_WINDOW, sigma: float = _SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian, the separable factor of the 11x11 SSIM window (OpenCV's)."""
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of axes 0 and 1 with ``g`` (symmetric, so = convolution).

    A loop over the 11 taps; each step is a whole-image shifted multiply-add.
    """
    k = g.shape[0]
    h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
    rows = g[0] * x[0:h]
    for i in range(1, k):
        rows += g[i] * x[i : i + h]
    out = g[0] * rows[:, 0:w]
    for j in range(1, k):
        out += g[j] * rows[:, j : j + w]
    return out


def ssim(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    crop_border: int = 0,
    max_val: float = 255.0,
) -> float:
    """Structural similarity (Wang et al. 2004) as the authors' ``calculate_ssim``.

    Gaussian window 11x11 with sigma 1.5, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with
    ``L = max_val`` (255), 'valid' filtering (5 px lost per side), mean of the SSIM map:

        ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))``

    For a multichannel image, SSIM is computed per channel and the channel values are averaged.
    ``crop_border`` pixels are removed on every side before filtering.
    """
    x, y = _prepare_pair(a, b, crop_border)
    if min(x.shape[:2]) < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after cropping, "
            f"got {x.shape[:2]}"
        )
    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    g = _gaussian_window()
    mu_x = _filter_valid(x, g)
    mu_y = _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x * mu_x
    var_y = _filter_valid(y * y, g) - mu_y * mu_y
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    ssim_map = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    per_channel = ssim_map.mean(axis=(0, 1))
    return float(np.mean(per_channel))


def image_metrics(
    hr: np.ndarray | torch.Tensor, sr: np.ndarray | torch.Tensor, crop_border: int = 0
) -> dict[str, float]:
    """PSNR/SSIM on the Y channel and on RGB, as the authors' test script (Diss. sec. 3.3.3).

    Args:
        hr, sr: RGB images with values on the 0..255 scale: numpy ``[H, W, 3]`` uint8 (or float
            holding uint8 values), or torch ``[3, H, W]``. Make them with ``quantize_to_uint8``.
        crop_border: pixels removed on every side (the evaluation uses ``scale``).

    Returns:
        ``{"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}``; Y is computed in float from the given
        values (not re-rounded), in [16, 235].
    """
    a = _as_float64_image(hr, "hr")
    b = _as_float64_image(sr, "sr")
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected RGB images [H, W, 3], got {a.shape}")
    for name, arr in (("hr", a), ("sr", b)):
        if arr.size and (arr.min() < 0.0 or arr.max() > 255.0):
            raise ValueError(f"{name} values must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
    y_a = rgb_to_y(a, data_range=255.0)
    y_b = rgb_to_y(b, data_range=255.0)
    return {
        "psnr_y": psnr(y_a, y_b, crop_border),
        "ssim_y": ssim(y_a, y_b, crop_border),
        "psnr_rgb": psnr(a, b, crop_border),
        "ssim_rgb": ssim(a, b, crop_border),
    }


def quantize_to_uint8(img: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``round(clamp(v, 0, 1) * 255)`` as uint8 (docs/method.md sec. 5), ties to even.

    Accepts any shape; returns the same kind (numpy array, or tensor on the same device). Computed
    in the input's floating precision, as the authors' ``tensor2img``. NaN raises ValueError.
    """
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise TypeError(f"expected a floating-point tensor in [0, 1], got {img.dtype}")
        if torch.isnan(img).any():
            raise ValueError("cannot quantise an image containing NaN")
        return (img.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    if isinstance(img, np.ndarray):
        if not np.issubdtype(img.dtype, np.floating):
            raise TypeError(f"expected a floating-point array in [0, 1], got {img.dtype}")
        if np.isnan(img).any():
            raise ValueError("cannot quantise an image containing NaN")
        return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise TypeError(f"expected a numpy array or torch tensor, got {type(img)}")


def modcrop(img: np.ndarray | torch.Tensor, scale: int) -> np.ndarray | torch.Tensor:
    """Crop the bottom/right so that H and W are multiples of ``scale`` (Diss. eq. 3.10).

    numpy ``[H, W]``/``[H, W, C]`` (crops axes 0, 1) or torch ``[C, H, W]``/``[B, C, H, W]``
    (crops the last two axes). Returns a view of the top-left part.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3):
            raise ValueError(f"expected a numpy image [H, W] or [H, W, C], got {img.shape}")
        h, w = img.shape[:2]
        return img[: h - h % scale, : w - w % scale]
    if isinstance(img, torch.Tensor):
        if img.ndim not in (3, 4):
            raise ValueError(
                f"expected a torch image [C, H, W] or [B, C, H, W], got {tuple(img.shape)}"
            )
        h, w = img.shape[-2:]
        return img[..., : h - h % scale, : w - w % scale]
    raise TypeError(f"expected a numpy array or torch tensor, got {type(img)}")
