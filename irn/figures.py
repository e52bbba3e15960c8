"""Comparison figures of ``evaluate.py --save-images``: HR crop, bicubic, IRN's HR', error map.

:func:`save_outputs` writes, per evaluated image, its LR', its HR' and the figure.

The crop is the most textured window of the image (where rescaling methods differ most); the
bicubic panel is Bicubic & Bicubic (MATLAB-style ``imresize`` down then up, IRN, Xiao et al.,
ECCV 2020, sec. 4, the baseline) computed with context around the crop, as the whole image gives
it; error maps are ``|a - b|`` scaled up and colour-mapped (OpenCV's inferno).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from common.images import save_image
from common.metrics import modcrop, quantize_to_uint8, rgb_to_y
from irn.eval_io import safe_name
from irn.evaluation import bicubic_resize

__all__ = ["bicubic_crop", "comparison_figure", "crop_box", "error_map", "save_outputs"]


def crop_box(hr_u8: np.ndarray, size: int, scale: int) -> tuple[int, int, int]:
    """``(top, left, size)`` of the most textured ``size`` x ``size`` window (multiples of
    ``scale``), by the sum of absolute luma gradients, on a grid of stride ``size / 4``."""
    h, w = hr_u8.shape[:2]
    size = min(size, h, w)
    size -= size % scale
    y = rgb_to_y(hr_u8, data_range=255.0).astype(np.float32)
    grad = np.zeros_like(y)
    grad[:, 1:] += np.abs(np.diff(y, axis=1))
    grad[1:, :] += np.abs(np.diff(y, axis=0))
    integral = cv2.integral(grad)
    stride = max(scale, size // 4 // scale * scale)
    best, box = -1.0, (0, 0)
    for top in range(0, h - size + 1, stride):
        for left in range(0, w - size + 1, stride):
            total = (
                integral[top + size, left + size]
                - integral[top, left + size]
                - integral[top + size, left]
                + integral[top, left]
            )
            if total > best:
                best, box = total, (top, left)
    return box[0], box[1], size


def bicubic_crop(hr: np.ndarray, top: int, left: int, size: int, scale: int) -> np.ndarray:
    """Bicubic down+up of the HR (float, modcropped) at the crop, as the whole image gives it:
    the crop is resized with 4 LR pixels of context where the image has them."""
    m = 4 * scale
    h, w = hr.shape[:2]
    r0, c0 = max(0, top - m), max(0, left - m)
    r1, c1 = min(h, top + size + m), min(w, left + size + m)
    region = hr[r0:r1, c0:c1]
    up = bicubic_resize(bicubic_resize(region, scale, up=False), scale, up=True, to_uint8=True)
    return up[top - r0 : top - r0 + size, left - c0 : left - c0 + size]


def _panel(image: np.ndarray, label: str, header: int = 24) -> np.ndarray:
    """An RGB uint8 panel with a black label bar on top (cv2.putText)."""
    h, w = image.shape[:2]
    out = np.zeros((h + header, w, 3), dtype=np.uint8)
    out[header:] = image
    scale = 0.45 if w >= 160 else 0.35
    cv2.putText(
        out,
        label,
        (4, header - 8),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return out


def error_map(a: np.ndarray, b: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """``|a - b|`` (mean over RGB) times ``gain``, as an RGB 'inferno' colour map."""
    err = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2) * gain
    bgr = cv2.applyColorMap(np.clip(err, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def comparison_figure(
    panels: Sequence[tuple[np.ndarray, str]], min_size: int = 192, gap: int = 4
) -> np.ndarray:
    """Side-by-side RGB uint8 figure of labelled panels (small crops enlarged, nearest)."""
    size = panels[0][0].shape[0]
    factor = max(1, math.ceil(min_size / max(size, 1)))
    parts = []
    for k, (image, label) in enumerate(panels):
        if factor > 1:
            image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
        parts.append(_panel(image, label))
        if k + 1 < len(panels):
            parts.append(np.full((parts[-1].shape[0], gap, 3), 255, dtype=np.uint8))
    return np.concatenate(parts, axis=1)


def _figure_panels(
    ref: np.ndarray, bic: np.ndarray, rec: np.ndarray, row: dict, bicubic_psnr: float | None
) -> list[tuple[np.ndarray, str]]:
    """The labelled panels: HR crop, bicubic, and (for an IRN) HR' and its error map."""
    if rec is bic:  # --method bicubic: HR' is the bicubic image
        return [
            (ref, "HR crop"),
            (bic, f"Bicubic {row['psnr_y']:.2f} dB"),
            (error_map(bic, ref), "|Bicubic-HR| x4"),
        ]
    bic_label = "Bicubic" if bicubic_psnr is None else f"Bicubic {bicubic_psnr:.2f} dB"
    return [
        (ref, "HR crop"),
        (bic, bic_label),
        (rec, f"IRN {row['psnr_y']:.2f} dB"),
        (error_map(rec, ref), "|IRN-HR| x4"),
    ]


def save_outputs(
    out_dir: Path,
    dataset: str,
    name: str,
    hr: np.ndarray,
    row: dict,
    bicubic_psnr: float | None,
    method: str,
    scale: int,
    crop: int,
) -> list[str]:
    """Write ``<stem>_LR.png``, ``<stem>_HR.png`` and ``<stem>_compare.png``; return paths."""
    stem = out_dir / safe_name(dataset) / Path(safe_name(name)).with_suffix("")
    paths = [
        stem.with_name(stem.name + suffix) for suffix in ("_LR.png", "_HR.png", "_compare.png")
    ]
    save_image(paths[0], row["lr"])
    save_image(paths[1], row["hr_rec"])
    hr = modcrop(hr, scale)
    hr_u8 = quantize_to_uint8(hr)
    top, left, size = crop_box(hr_u8, crop, scale)
    sl = (slice(top, top + size), slice(left, left + size))
    bic = bicubic_crop(hr, top, left, size, scale)
    rec = bic if method == "bicubic" else row["hr_rec"][sl]
    save_image(paths[2], comparison_figure(_figure_panels(hr_u8[sl], bic, rec, row, bicubic_psnr)))
    return [str(p) for p in paths]
