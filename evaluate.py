"""Evaluate an IRN (or the bicubic baseline) on HR images; rescale your own photos.

Evaluation (SPEC sec. 4: modcrop, LR' = Quant(f(HR)), HR' = f^-1(LR', z), PSNR/SSIM on Y and RGB
with ``scale`` pixels cropped, LR' against the bicubic LR; mean over ``--draws`` samples of z)::

    python evaluate.py --checkpoint runs/irn_x4/best.pt --data Set5 Set14 DIV2K_valid_HR --scale 4
    python evaluate.py --checkpoint IRN_x4.pth --data Set5/HR --json set5.json --save-images out/
    python evaluate.py --method bicubic --scale 4                 # no --data: skimage photos
    python evaluate.py --checkpoint IRN_x4.pth --data DIV2K_valid_HR --jpeg-quality 90
    python evaluate.py --checkpoint IRN_x4.pth --data big/ --tile auto --memory-budget 2
    python evaluate.py --checkpoint IRN_x4.pth --data Set5 --z zero          # mean upscaling
    python evaluate.py --checkpoint IRN_x4.pth --data one/ --z-from other.png  # latent transfer
    python evaluate.py --checkpoint IRN_x4.pth --data Set5 --lr-source bicubic  # SR of bicubic LR

Latent options: ``--z sample`` (default, ``z ~ N(0, temperature^2)``, ``--draws`` samples),
``--z zero`` (``z = 0``, the "mean" upscaling; the same as ``--temperature 0``; one draw),
``--z-from IMAGE`` (the ``z`` of the HR image IMAGE, ``f(IMAGE)[:, 3:]``, upscales the LR of each
evaluated image, whose LR must have the same size; one draw). ``--lr-source bicubic`` upscales
the 8-bit MATLAB-bicubic LR of the HR instead of ``LR'`` (super-resolution with the IRN as
trained; no ``LR'`` metrics).

The checkpoint is this project's (``train_irn.py``) or the authors' released ``.pth``, detected
automatically. Each ``--data`` folder is one dataset, searched recursively; a folder holding an
``HR`` or ``*_HR`` subfolder (``Set5/{HR,LR_bicubic}``, ``DIV2K/DIV2K_valid_HR``) is evaluated on
those subfolders only.

Rescaling one's own photos (any size; the LR is an 8-bit PNG, as a user would store it)::

    python evaluate.py downscale photo.jpg photo_lr.png --checkpoint IRN_x4.pth
    python evaluate.py upscale photo_lr.png photo_hr.png --checkpoint IRN_x4.pth --seed 1
    python evaluate.py upscale photo_lr.png photo_hr.png --checkpoint IRN_x4.pth --z zero
    python evaluate.py upscale photo_lr.png photo_hr.png --checkpoint IRN_x4.pth --z-from photo.jpg

A size that is not a multiple of the scale is reflect-padded at the bottom/right to the next
multiple before downscaling (numpy ``"reflect"``: mirrored about the last row/column); the
original size is stored in the LR PNG (text chunk ``irn:original-size``, ``WxH``) and
``upscale`` crops its result back to it (``--output-size WxH`` overrides). ``--tile N`` bounds the
memory of both commands and of the evaluation (HR tiles of ``N`` pixels, ``--tile-overlap`` LR
pixels of context each side, one latent ``z`` for the whole image; see ``irn/tiling.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch

from common.config import ConfigError, config_to_dict, configclass, parse_config_with_args
from common.images import ImageReadError, load_image, save_image
from common.metrics import modcrop, quantize_to_uint8, rgb_to_y
from common.runtime import ProgressLogger, resolve_device, set_num_threads
from irn.checkpoints import is_color_checkpoint, load_color_checkpoint, load_irn
from irn.color import METRIC_KEYS as COLOR_METRIC_KEYS
from irn.color import evaluate_color
from irn.data import SAMPLE_VAL, NamedImage, load_folder, sample_photos
from irn.evaluation import (
    HR_KEYS,
    LR_KEYS,
    bicubic_baseline,
    bicubic_resize,
    evaluate_rescaling,
    mean_metrics,
)
from irn.tiling import (
    BYTES_PER_PIXEL,
    DEFAULT_OVERLAP,
    choose_tile,
    downscale_tiled,
    latent_tiled,
    pad_to_multiple,
    parse_tile,
    sample_z,
    upscale_tiled,
)

SIZE_KEY = "irn:original-size"
SCALE_KEY = "irn:scale"

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

_TILE_HELP = (
    "HR tile size in pixels (a multiple of the scale; upscaling uses LR tiles of N/scale), "
    "'auto' (the largest tile fitting --memory-budget) or 'none' (whole image at once). Tiles "
    "are processed one at a time and stitched."
)
_OVERLAP_HELP = (
    "LR pixels of context added on each side of a tile and discarded after processing "
    "(HR context = overlap * scale)."
)
_BUDGET_HELP = "Memory budget in GB for --tile auto (whole-image buffers + one tile)."
_DEVICE_HELP = "'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'."
_AMP_HELP = "Run the network under autocast (bf16 on CPU, fp16 on CUDA)."
_THREADS_HELP = "torch CPU threads (none = torch's default)."
_Z_HELP = (
    "Latent z of the upscaling: 'sample' (z ~ N(0, temperature^2)) or 'zero' (z = 0, the 'mean' "
    "upscaling; the same as --temperature 0; one draw, as every draw would be identical)."
)
_TEMPERATURE_HELP = "Standard deviation of a sampled z (gaussian_scale); 0 is --z zero."
_Z_FROM_HELP = (
    "Latent transfer: encode this HR image with the model and upscale with its z = "
    "f(IMAGE)[:, 3:] instead of a sampled one (one draw). Its LR must have the size of the LR "
    "being upscaled."
)


def _check_latent_fields(cfg: Any) -> None:
    """Check ``--z``, ``--z-from`` and ``--temperature`` together. ``--z zero`` and
    ``--temperature 0`` are one setting: either sets both (``z='zero'``, ``temperature=0``)."""
    if not (math.isfinite(cfg.temperature) and cfg.temperature >= 0):
        raise ConfigError(f"must be >= 0, got {cfg.temperature}", field="temperature")
    if cfg.z_from is not None:
        if cfg.z == "zero":
            raise ConfigError(
                "conflicts with --z zero (z is either 0 or transferred)", field="z_from"
            )
        if cfg.temperature != 1.0:
            raise ConfigError(
                f"{cfg.temperature} applies to a sampled z only, not to the --z-from latent",
                field="temperature",
            )
        if not Path(cfg.z_from).is_file():
            raise ConfigError(f"image file {cfg.z_from} does not exist", field="z_from")
    if cfg.z == "zero":
        if cfg.temperature not in (0.0, 1.0):
            raise ConfigError(
                f"{cfg.temperature} contradicts --z zero (z = 0 is temperature 0)",
                field="temperature",
            )
        cfg.temperature = 0.0
    elif cfg.temperature == 0:
        cfg.z = "zero"


def _z_source(cfg: Any) -> str:
    """``"sample"``, ``"zero"`` or ``"transfer"`` (``--z-from``)."""
    return "transfer" if cfg.z_from is not None else cfg.z


def _check_tile_fields(cfg: Any) -> None:
    try:
        parse_tile(cfg.tile)
    except ValueError as err:
        raise ConfigError(str(err), field="tile") from None
    if cfg.tile_overlap < 0:
        raise ConfigError(f"must be >= 0, got {cfg.tile_overlap}", field="tile_overlap")
    if not cfg.memory_budget > 0:
        raise ConfigError(f"must be > 0 GB, got {cfg.memory_budget}", field="memory_budget")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"must be >= 1, got {cfg.threads}", field="threads")


@configclass
class EvalConfig:
    """Evaluate an IRN checkpoint or the bicubic baseline (SPEC sec. 4)."""

    checkpoint: Path | None = field(
        default=None,
        metadata={
            "help": "This project's training checkpoint or the authors' released .pth "
            "(detected automatically). Required for --method irn."
        },
    )
    method: Literal["irn", "bicubic"] = field(
        default="irn",
        metadata={"help": "'irn' (the checkpoint) or 'bicubic' (Bicubic & Bicubic, no model)."},
    )
    data: tuple[Path, ...] = field(
        default=(),
        metadata={
            "help": "Dataset folders of HR images, each reported separately (searched "
            "recursively; HR or *_HR subfolders are used when present). None: the "
            "scikit-image validation photos."
        },
    )
    scale: int | None = field(
        default=None,
        metadata={
            "help": "Rescaling factor; must match the checkpoint's (default: the checkpoint's). "
            "Required for --method bicubic."
        },
    )
    draws: int = field(
        default=5,
        metadata={
            "help": "Samples of z averaged per image (the paper: 5); 1 with --z zero or --z-from "
            "(z is fixed)."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": _TEMPERATURE_HELP})
    seed: int = field(default=0, metadata={"help": "Seed of the z generator (per image)."})
    z: Literal["sample", "zero"] = field(default="sample", metadata={"help": _Z_HELP})
    z_from: Path | None = field(
        default=None,
        metadata={
            "help": _Z_FROM_HELP + " Modcropped like the evaluated images; every evaluated "
            "image must have an LR of that size."
        },
    )
    lr_source: Literal["irn", "bicubic"] = field(
        default="irn",
        metadata={
            "help": "LR that is upscaled: 'irn' = LR' = Quant(f(HR)) (the protocol); 'bicubic' = "
            "the 8-bit MATLAB-bicubic LR of the HR (super-resolution with the IRN as trained; "
            "no LR' metrics)."
        },
    )
    jpeg_quality: int | None = field(
        default=None,
        metadata={"help": "JPEG-compress LR' at this quality (0-100) before upscaling."},
    )
    tile: str | None = field(default=None, metadata={"help": _TILE_HELP})
    tile_overlap: int = field(default=DEFAULT_OVERLAP, metadata={"help": _OVERLAP_HELP})
    memory_budget: float = field(default=2.0, metadata={"help": _BUDGET_HELP})
    json: Path | None = field(
        default=None,
        metadata={"help": "Write per-image and mean metrics with the exact settings here."},
    )
    save_images: Path | None = field(
        default=None,
        metadata={
            "help": "Write LR', HR' (first draw) and a comparison figure (HR crop, bicubic, "
            "IRN, error map) per image under this folder."
        },
    )
    figure_crop: int = field(
        default=192, metadata={"help": "HR crop size of the comparison figure (pixels)."}
    )
    device: str = field(default="auto", metadata={"help": _DEVICE_HELP})
    amp: bool = field(default=False, metadata={"help": _AMP_HELP})
    threads: int | None = field(default=None, metadata={"help": _THREADS_HELP})

    def __post_init__(self) -> None:
        if self.method == "irn" and self.checkpoint is None:
            raise ConfigError(
                "required for --method irn (or use --method bicubic)", field="checkpoint"
            )
        if self.method == "bicubic":
            if self.checkpoint is not None:
                raise ConfigError("not used by --method bicubic; drop it", field="checkpoint")
            if self.scale is None:
                raise ConfigError("required with --method bicubic", field="scale")
            irrelevant = {
                "draws": 5,
                "temperature": 1.0,
                "seed": 0,
                "z": "sample",
                "z_from": None,
                "lr_source": "irn",
                "tile": None,
                "amp": False,
            }
            for name, default in irrelevant.items():
                if getattr(self, name) != default:
                    raise ConfigError("does not apply to --method bicubic", field=name)
        if self.scale is not None and self.scale not in (2, 3, 4, 8):
            raise ConfigError(f"must be 2, 3, 4 or 8, got {self.scale}", field="scale")
        if self.draws < 1:
            raise ConfigError(f"must be >= 1, got {self.draws}", field="draws")
        _check_latent_fields(self)
        if self.jpeg_quality is not None and not 0 <= self.jpeg_quality <= 100:
            raise ConfigError(f"must be in 0..100, got {self.jpeg_quality}", field="jpeg_quality")
        if self.figure_crop < 16:
            raise ConfigError(f"must be >= 16, got {self.figure_crop}", field="figure_crop")
        _check_tile_fields(self)


@configclass
class DownscaleConfig:
    """Downscale one image to an 8-bit PNG with an IRN."""

    checkpoint: Path = field(
        metadata={"help": "This project's checkpoint or the authors' .pth (auto-detected)."}
    )
    scale: int | None = field(
        default=None, metadata={"help": "Must match the checkpoint's scale if given."}
    )
    tile: str | None = field(default=None, metadata={"help": _TILE_HELP})
    tile_overlap: int = field(default=DEFAULT_OVERLAP, metadata={"help": _OVERLAP_HELP})
    memory_budget: float = field(default=2.0, metadata={"help": _BUDGET_HELP})
    device: str = field(default="auto", metadata={"help": _DEVICE_HELP})
    amp: bool = field(default=False, metadata={"help": _AMP_HELP})
    threads: int | None = field(default=None, metadata={"help": _THREADS_HELP})

    def __post_init__(self) -> None:
        _check_tile_fields(self)


@configclass
class UpscaleConfig(DownscaleConfig):
    """Upscale an LR image (e.g. from ``downscale``) with an IRN: z sampled, 0 or transferred."""

    temperature: float = field(default=1.0, metadata={"help": _TEMPERATURE_HELP})
    seed: int = field(default=0, metadata={"help": "Seed of the z generator."})
    z: Literal["sample", "zero"] = field(default="sample", metadata={"help": _Z_HELP})
    z_from: Path | None = field(
        default=None,
        metadata={
            "help": _Z_FROM_HELP + " Here an HR image of size LR * scale (or the original photo "
            "the LR was downscaled from: reflect-padded as downscale pads it)."
        },
    )
    output_size: str | None = field(
        default=None,
        metadata={
            "help": "Crop the result to WxH (default: the size stored by downscale in the PNG, "
            "else the full LR size times the scale)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_latent_fields(self)
        if self.output_size is not None:
            try:
                _parse_size(self.output_size)
            except ValueError as err:
                raise ConfigError(str(err), field="output_size") from None


def _parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> ``(H, W)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected WxH such as 53x37, got {text!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"expected a positive WxH, got {text!r}")
    return h, w


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    parser.error(message)  # prints usage and the message, exits with status 2


def _setup(parser: argparse.ArgumentParser, cfg: Any) -> torch.device:
    set_num_threads(cfg.threads)
    try:
        return resolve_device(cfg.device)
    except (ValueError, RuntimeError) as err:
        _fail(parser, f"--device: {err}")
        raise  # unreachable


def _load_model(parser: argparse.ArgumentParser, cfg: Any, device: torch.device):
    try:
        model, info = load_irn(cfg.checkpoint, map_location=device)
    except ValueError as err:
        message = str(err)
        if is_color_checkpoint(cfg.checkpoint):
            message = (
                f"{cfg.checkpoint} is an IRN-Color checkpoint (train_irn.py --task color), not a "
                f"rescaling IRN; evaluate it with: evaluate.py --checkpoint {cfg.checkpoint}"
            )
        _fail(parser, f"--checkpoint: {message}")
        raise  # unreachable
    if cfg.scale is not None and cfg.scale != model.scale:
        _fail(
            parser,
            f"--scale {cfg.scale} does not match the checkpoint's scale {model.scale} "
            f"({cfg.checkpoint}, {info['kind']} format); use --scale {model.scale} or another "
            "checkpoint",
        )
    return model, info


def _resolve_tile(
    parser: argparse.ArgumentParser, cfg: Any, scale: int, hw: tuple[int, int], gc: int
) -> int | None:
    """The HR tile for an image of size ``hw`` (None: untiled)."""
    tile = parse_tile(cfg.tile)
    if tile == "auto":
        tile = choose_tile(cfg.memory_budget, scale, cfg.tile_overlap, hw, gc=gc)
    elif tile is not None and tile % scale:
        _fail(parser, f"--tile {tile} must be a multiple of the scale {scale}")
    if tile is not None and tile >= max(hw):
        return None  # one tile covers the image
    return tile


def _memory_hint(tile: int | None, hw: tuple[int, int], budget: float, gc: int) -> str | None:
    """A suggestion to tile when the untiled network would exceed the memory budget."""
    need = hw[0] * hw[1] * BYTES_PER_PIXEL * gc / 32 / 1e9
    if tile is None and need > budget:
        return (
            f"note: {hw[1]}x{hw[0]} untiled needs about {need:.1f} GB for the network "
            f"(> --memory-budget {budget:g}); use --tile auto to bound it"
        )
    return None


def _tile_note(tile: int | None, hw: tuple[int, int], scale: int, overlap: int) -> str:
    if tile is None:
        return "untiled"
    n = math.ceil(hw[0] / tile) * math.ceil(hw[1] / tile)
    return f"{n} tiles of <= {tile}px, {overlap * scale}px HR context"


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """One ``--data`` folder (or the sample photos) and its images."""

    name: str
    path: str | None
    folders: list[str]
    images: list[NamedImage]


def _is_hr_dir(path: Path) -> bool:
    name = path.name.lower()
    return path.is_dir() and (name == "hr" or name.endswith("_hr"))


def find_dataset(root: Path) -> Dataset:
    """The images of one ``--data`` folder: its ``HR``/``*_HR`` subfolders if it has any, else
    everything under it (recursive). Raises ``ValueError``/``ImageReadError`` naming the flag or
    the file."""
    if not root.exists():
        raise ValueError(f"--data: folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"--data: {root} is not a folder")
    hr_dirs = sorted(p for p in root.iterdir() if _is_hr_dir(p))
    folders = hr_dirs or [root]
    images: list[NamedImage] = []
    for folder in folders:
        for item in load_folder(folder, what="--data"):
            item.name = str(Path(item.name).relative_to(root))
            images.append(item)
    name = root.resolve().parent.name if root.name.lower() == "hr" else root.name
    return Dataset(name or str(root), str(root), [str(f) for f in folders], images)


# ---------------------------------------------------------------------------------------------
# Comparison figure
# ---------------------------------------------------------------------------------------------


def _crop_box(hr_u8: np.ndarray, size: int, scale: int) -> tuple[int, int, int]:
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


def _bicubic_crop(hr: np.ndarray, top: int, left: int, size: int, scale: int) -> np.ndarray:
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


def _safe(name: str) -> str:
    """A relative path safe on every file system (``skimage:chelsea`` -> ``skimage_chelsea``)."""
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in Path(name).parts if p not in ("..", "/")]
    return "/".join(p for p in parts if p) or "image"


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
    stem = out_dir / _safe(dataset) / Path(_safe(name)).with_suffix("")
    lr_path = stem.with_name(stem.name + "_LR.png")
    hr_path = stem.with_name(stem.name + "_HR.png")
    fig_path = stem.with_name(stem.name + "_compare.png")
    save_image(lr_path, row["lr"])
    save_image(hr_path, row["hr_rec"])
    hr = modcrop(hr, scale)
    hr_u8 = quantize_to_uint8(hr)
    top, left, size = _crop_box(hr_u8, crop, scale)
    sl = (slice(top, top + size), slice(left, left + size))
    bic = _bicubic_crop(hr, top, left, size, scale)
    rec = row["hr_rec"][sl]
    ref = hr_u8[sl]
    if method == "bicubic":
        panels = [
            (ref, "HR crop"),
            (bic, f"Bicubic {row['psnr_y']:.2f} dB"),
            (error_map(bic, ref), "|Bicubic-HR| x4"),
        ]
    else:
        bic_label = "Bicubic" if bicubic_psnr is None else f"Bicubic {bicubic_psnr:.2f} dB"
        panels = [
            (ref, "HR crop"),
            (bic, bic_label),
            (rec, f"IRN {row['psnr_y']:.2f} dB"),
            (error_map(rec, ref), "|IRN-HR| x4"),
        ]
    save_image(fig_path, comparison_figure(panels))
    return [str(lr_path), str(hr_path), str(fig_path)]


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

_COLUMNS = [
    ("psnr_y", "PSNR-Y", "{:7.2f}"),
    ("ssim_y", "SSIM-Y", "{:7.4f}"),
    ("psnr_rgb", "PSNR-RGB", "{:8.2f}"),
    ("ssim_rgb", "SSIM-RGB", "{:8.4f}"),
    ("lr_psnr_y", "LR:PSNR-Y", "{:9.2f}"),
    ("lr_ssim_y", "LR:SSIM-Y", "{:9.4f}"),
    ("lr_psnr_rgb", "LR:PSNR-RGB", "{:11.2f}"),
    ("lr_ssim_rgb", "LR:SSIM-RGB", "{:11.4f}"),
]


def _cells(row: dict) -> str:
    out = []
    for key, title, fmt in _COLUMNS:
        value = row.get(key)
        out.append(f"{'-':>{len(title)}}" if value is None else fmt.format(value))
    return "  ".join(out)


def format_table(
    title: str, rows: Sequence[tuple[str, str, dict]], first: str = "image", second: str = "size"
) -> str:
    """A plain-text table: ``(name, size, metrics)`` rows under a header."""
    width = min(40, max([len(first), *(len(name) for name, _, _ in rows)]))
    head = f"{first:<{width}} {second:>11}  " + "  ".join(t for _, t, _ in _COLUMNS)
    lines = [title, head, "-" * len(head)]
    for name, size, row in rows:
        shown = name if len(name) <= width else "..." + name[-(width - 3) :]
        lines.append(f"{shown:<{width}} {size:>11}  {_cells(row)}")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    return value


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


def _dataset_mean(rows: Sequence[dict]) -> dict[str, float]:
    """Mean of each metric over the images (metrics that are None, e.g. LR of bicubic, left
    out) and the total time."""
    keys = [k for k in (*HR_KEYS, *LR_KEYS) if rows and all(r.get(k) is not None for r in rows)]
    out = mean_metrics([{k: r[k] for k in keys} for r in rows])
    out["seconds"] = float(sum(r.get("seconds", 0.0) for r in rows))
    return out


def _min_side(scale: int) -> int:
    """Smallest modcropped side the metrics accept: 11 SSIM pixels after the border crop."""
    side = 11 + 2 * scale
    return side + (-side) % scale


@dataclass
class TransferredLatent:
    """The latent of ``--z-from``: ``z = f(image)[:, 3:]`` of one HR image, for latent transfer."""

    path: Path
    size: tuple[int, int]  # (H, W) of the image as read
    encoded: tuple[int, int]  # (H, W) encoded: modcropped (evaluation) or reflect-padded (upscale)
    z: torch.Tensor  # [1, z_channels, H/s, W/s] float32, CPU
    how: str = "modcropped"  # how ``size`` became ``encoded``

    @property
    def lr_hw(self) -> tuple[int, int]:
        return int(self.z.shape[-2]), int(self.z.shape[-1])

    def describe(self, scale: int) -> str:
        (h, w), (he, we) = self.lr_hw, self.encoded
        how = "" if self.encoded == self.size else f", {self.how} to {we}x{he}"
        return f"{self.path} ({self.size[1]}x{self.size[0]} HR{how}; x{scale} LR {w}x{h})"


def encode_z_from(
    parser: argparse.ArgumentParser, cfg: Any, model: torch.nn.Module, pad: bool
) -> TransferredLatent:
    """Read ``cfg.z_from``, bring it to a multiple of the scale (``pad``: reflect-pad as
    ``downscale`` does, else modcrop as the evaluation does) and encode it (tiled as ``--tile``
    says, :func:`irn.tiling.latent_tiled`); errors name the flag and the file."""
    path = Path(cfg.z_from)
    try:
        image = load_image(path)
    except ImageReadError as err:
        _fail(parser, f"--z-from: {err}")
        raise  # unreachable
    s = int(model.scale)
    size = (int(image.shape[0]), int(image.shape[1]))
    image = pad_to_multiple(image, s)[0] if pad else modcrop(image, s)
    hw = (int(image.shape[0]), int(image.shape[1]))
    if min(hw) < s:
        _fail(parser, f"--z-from {path}: {size[1]}x{size[0]} is smaller than the scale {s}")
    tile = _resolve_tile(parser, cfg, s, hw, model.config.gc)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    was_training = model.training
    model.eval()
    try:
        z = latent_tiled(model, x, tile, cfg.tile_overlap, cfg.amp, _progress_printer("z-from"))
    finally:
        model.train(was_training)
    return TransferredLatent(path, size, hw, z.cpu(), "reflect-padded" if pad else "modcropped")


def _z_from_mismatch(latent: TransferredLatent, scale: int, what: str) -> str:
    """The error for an LR whose size differs from the ``--z-from`` latent's; ``what`` names
    that LR and gives its size."""
    return (
        f"--z-from {latent.describe(scale)}: its latent does not fit {what}; latent transfer "
        "needs LR images of the same size"
    )


def _check_z_from_sizes(
    parser: argparse.ArgumentParser,
    latent: TransferredLatent,
    datasets: Sequence[Dataset],
    scale: int,
) -> None:
    """Fail before any work if an image to evaluate has an LR of another size than the
    ``--z-from`` latent (sizes from the file headers; images too small to evaluate are left out,
    as the evaluation skips them)."""
    bad = []
    for ds in datasets:
        for item in ds.images:
            h, w = item.size
            if min(h - h % scale, w - w % scale) < _min_side(scale):
                continue
            if (h // scale, w // scale) != latent.lr_hw:
                bad.append((item, h, w))
    if bad:
        item, h, w = bad[0]
        where = (
            f"{item.path or item.name} (--data; {w}x{h} HR), whose x{scale} LR is "
            f"{w // scale}x{h // scale}"
        )
        more = f" ({len(bad) - 1} more image(s) differ too)" if len(bad) > 1 else ""
        _fail(parser, _z_from_mismatch(latent, scale, where) + more)


def _latent_note(cfg: Any, latent: TransferredLatent | None, scale: int) -> str:
    """How z is chosen, for the header line."""
    source = _z_source(cfg)
    if source == "zero":
        return "z = 0 (mean upscaling, = --temperature 0): 1 draw, as every draw is identical"
    if source == "transfer":
        assert latent is not None
        return f"z transferred from --z-from {latent.describe(scale)}: 1 draw (z is fixed)"
    return f"{cfg.draws} draw(s) of z ~ N(0, {cfg.temperature:g}^2), seed {cfg.seed}"


def _datasets(parser: argparse.ArgumentParser, cfg: Any, out: Any) -> list[Dataset]:
    """The ``--data`` folders as datasets (or the scikit-image validation photos, announced on
    ``out``); two folders with the same name get ``#i`` suffixes so they stay apart."""
    if not cfg.data:
        print(
            "No --data given: evaluating on the scikit-image validation photos "
            f"({', '.join(SAMPLE_VAL)}).",
            file=out,
        )
    try:
        if cfg.data:
            datasets = [find_dataset(Path(d)) for d in cfg.data]
        else:
            datasets = [Dataset("skimage-val", None, [], sample_photos("val"))]
    except (ValueError, OSError) as err:  # ImageReadError is a ValueError
        _fail(parser, str(err))
        raise  # unreachable
    names = [d.name for d in datasets]
    for i, d in enumerate(datasets):
        if names.count(d.name) > 1:
            d.name = f"{d.name}#{i + 1}"
    return datasets


def _run_datasets(
    parser: argparse.ArgumentParser,
    datasets: Sequence[Dataset],
    too_small: Callable[[np.ndarray], str | None],
    evaluate_image: Callable[[Dataset, Any, np.ndarray, Any], dict],
    dataset_mean: Callable[[Sequence[dict]], dict],
    postfix: str,
) -> list[dict]:
    """Every image of every dataset: loaded (an unreadable file stops the run, naming it),
    skipped with the reason ``too_small(image)`` gives (``None``: keep it), otherwise
    ``evaluate_image(dataset, item, image, progress_bar) -> row``. Returns one entry per dataset
    with its rows, ``dataset_mean(rows)`` and the skipped images."""
    total = sum(len(d.images) for d in datasets)
    results: list[dict] = []
    with ProgressLogger(total, desc="images", log_every=1) as bar:
        for ds in datasets:
            rows: list[dict] = []
            skipped: list[dict] = []
            for item in ds.images:
                try:
                    image = item.load()
                except ImageReadError as err:
                    bar.close()
                    _fail(parser, f"--data: {err}")
                reason = too_small(image)
                if reason is not None:
                    bar.write(f"skipping {item.name}: {reason}")
                    skipped.append({"name": item.name, "reason": reason})
                else:
                    row = evaluate_image(ds, item, image, bar)
                    rows.append(row)
                    bar.set_postfix(**{postfix: row[postfix]})
                bar.update()
                del image
            results.append(
                {
                    "name": ds.name,
                    "path": ds.path,
                    "hr_folders": ds.folders,
                    "num_images": len(rows),
                    "mean": dataset_mean(rows),
                    "images": rows,
                    "skipped": skipped,
                }
            )
    return results


def _write_json(path: Path, settings: dict, results: list[dict], elapsed: float, out) -> None:
    document = {"settings": settings, "datasets": results, "seconds": elapsed}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(document), indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}", file=out)


def evaluate_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog="Also: 'evaluate.py downscale IN OUT --checkpoint C' and "
        "'evaluate.py upscale IN OUT --checkpoint C' (see -h of each).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cfg, _ = parse_config_with_args(EvalConfig, argv, parser)
    if cfg.method == "irn" and is_color_checkpoint(cfg.checkpoint):
        return color_evaluate_main(parser, cfg, argv)  # IRN-Color: its own metrics and table
    started = time.perf_counter()
    out = sys.stdout
    datasets = _datasets(parser, cfg, out)
    device = _setup(parser, cfg)
    model, info, gc = None, None, 32
    if cfg.method == "irn":
        model, info = _load_model(parser, cfg, device)
        gc = model.config.gc
    scale = int(cfg.scale if model is None else model.scale)
    explicit = parse_tile(cfg.tile)
    if isinstance(explicit, int) and explicit % scale:
        _fail(parser, f"--tile {explicit} must be a multiple of the scale {scale}")
    latent = None
    if cfg.z_from is not None and model is not None:
        latent = encode_z_from(parser, cfg, model, pad=False)
        _check_z_from_sizes(parser, latent, datasets, scale)

    if model is None:
        what = f"Bicubic & Bicubic x{scale} (MATLAB-style imresize, float LR)"
    else:
        step = f", step {info['step']}" if info.get("step") is not None else ""
        what = f"IRN x{scale} from {cfg.checkpoint} ({info['kind']} checkpoint{step}); "
        what += _latent_note(cfg, latent, scale)
        if cfg.lr_source == "bicubic":
            what += (
                "; --lr-source bicubic: upscaling the 8-bit MATLAB-bicubic LR of each HR instead "
                "of LR' (super-resolution)"
            )
    if cfg.jpeg_quality is not None:
        lr_name = "the bicubic LR" if cfg.lr_source == "bicubic" else "LR'"
        what += f"; {lr_name} JPEG-compressed at quality {cfg.jpeg_quality}"
    print(f"{what}; device {device}{', amp' if cfg.amp else ''}", file=out)
    lr_metrics = (
        "no LR' metrics (the upscaled LR is the bicubic LR itself)"
        if cfg.lr_source == "bicubic"
        else "LR' vs bicubic LR (no crop)"
    )
    print(
        f"Metrics: HR' vs HR (modcropped to a multiple of {scale}, {scale}px border cropped), "
        f"{lr_metrics}; Y = BT.601 luma.",
        file=out,
    )

    def too_small(hr: np.ndarray) -> str | None:
        h0, w0 = hr.shape[:2]
        if min(h0 - h0 % scale, w0 - w0 % scale) < _min_side(scale):
            return f"{w0}x{h0} is too small for x{scale} (needs {_min_side(scale)}px)"
        return None

    def evaluate_image(ds: Dataset, item: Any, hr: np.ndarray, bar: Any) -> dict:
        h0, w0 = hr.shape[:2]
        hc, wc = h0 - h0 % scale, w0 - w0 % scale
        if latent is not None and (hc // scale, wc // scale) != latent.lr_hw:
            bar.close()
            where = (
                f"{item.path or item.name} (--data; {w0}x{h0} HR), whose x{scale} LR is "
                f"{wc // scale}x{hc // scale}"
            )
            _fail(parser, _z_from_mismatch(latent, scale, where))
        row = _evaluate_one(parser, cfg, model, hr, scale, gc, device, bar, item.name, latent)
        row = {
            "name": item.name,
            "path": str(item.path) if item.path else None,
            "size": [h0, w0],
            "evaluated_size": [hc, wc],
            **row,
        }
        if cfg.save_images is not None:
            bic = None if model is None else bicubic_baseline(hr, scale)["psnr_y"]
            row["files"] = save_outputs(
                cfg.save_images, ds.name, item.name, hr, row, bic, cfg.method, scale,
                cfg.figure_crop,
            )  # fmt: skip
        row.pop("lr", None)
        row.pop("hr_rec", None)
        return row

    total = sum(len(d.images) for d in datasets)
    results = _run_datasets(
        parser, datasets, too_small, evaluate_image, _dataset_mean, postfix="psnr_y"
    )

    for res in results:
        table_rows = [
            (r["name"], f"{r['evaluated_size'][1]}x{r['evaluated_size'][0]}", r)
            for r in res["images"]
        ]
        table_rows.append((f"mean ({res['num_images']} images)", "", res["mean"]))
        title = f"\n{res['name']}" + (f" ({res['path']})" if res["path"] else "")
        print(format_table(title, table_rows), file=out)
    if len(results) > 1:
        summary = [(r["name"], str(r["num_images"]), r["mean"]) for r in results]
        table = format_table("\nSummary (means per dataset)", summary, "dataset", "images")
        print(table, file=out)
    elapsed = time.perf_counter() - started
    print(f"\n{total} image(s) in {elapsed:.1f} s", file=out)

    if cfg.json is not None:
        settings = config_to_dict(cfg)
        settings.update(
            scale=scale,
            checkpoint=None if cfg.checkpoint is None else str(cfg.checkpoint),
            checkpoint_kind=None if info is None else info["kind"],
            checkpoint_step=None if info is None else info.get("step"),
            model_config=None if info is None else info["config"],
            device=str(device),
            torch_version=torch.__version__,
            command=["evaluate.py", *argv],
            protocol="SPEC sec. 4: modcrop; Y = BT.601; HR crop_border = scale; LR vs "
            "bicubic LR without crop; metrics averaged over draws",
        )
        if model is not None:
            fixed = _z_source(cfg) != "sample"
            settings.update(
                z_source=_z_source(cfg),
                draws_per_image=1 if fixed else cfg.draws,
                z_from_size=None if latent is None else list(latent.size),
                z_from_lr_size=None if latent is None else list(latent.lr_hw),
                lr_metrics=cfg.lr_source == "irn",
            )
            if cfg.lr_source == "bicubic":
                settings["protocol"] += (
                    "; --lr-source bicubic: HR' = f^-1(Quant(bicubic LR), z), no LR' metrics"
                )
        _write_json(cfg.json, settings, results, elapsed, out)
    return 0


def _evaluate_one(
    parser: argparse.ArgumentParser,
    cfg: EvalConfig,
    model: torch.nn.Module | None,
    hr: np.ndarray,
    scale: int,
    gc: int,
    device: torch.device,
    bar: ProgressLogger,
    name: str,
    latent: TransferredLatent | None = None,
) -> dict:
    want_images = cfg.save_images is not None
    if model is None:
        start = time.perf_counter()
        row = bicubic_baseline(hr, scale, jpeg_quality=cfg.jpeg_quality, return_images=want_images)
        row["seconds"] = time.perf_counter() - start
        for key in LR_KEYS:
            row[key] = None  # LR' is the bicubic LR itself
        return row
    hw = (hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale)
    tile = _resolve_tile(parser, cfg, scale, hw, gc)
    if tile is not None:
        bar.write(f"{name}: {_tile_note(tile, hw, scale, cfg.tile_overlap)}")
    hint = _memory_hint(tile, hw, cfg.memory_budget, gc)
    if hint:
        bar.write(f"{name}: {hint}")

    last = [time.perf_counter()]

    def progress(stage: str, done: int, total: int) -> None:
        # Long tiled images report their tiles, at most every 30 s, so a run never looks stuck.
        now = time.perf_counter()
        if total > 1 and now - last[0] > 30:
            last[0] = now
            bar.write(f"{name}: {stage}, tile {done}/{total}")

    row = evaluate_rescaling(
        model,
        hr,
        draws=cfg.draws,
        temperature=cfg.temperature,
        seed=cfg.seed,
        device=device,
        amp=cfg.amp,
        jpeg_quality=cfg.jpeg_quality,
        return_images=want_images,
        tile=tile,
        tile_overlap=cfg.tile_overlap,
        progress=progress,
        z=None if latent is None else latent.z,
        lr_source=cfg.lr_source,
    )
    row["tile"] = tile
    return row


# ---------------------------------------------------------------------------------------------
# downscale / upscale
# ---------------------------------------------------------------------------------------------


def _write_lr_png(path: Path, lr_u8: np.ndarray, original_hw: tuple[int, int], scale: int) -> None:
    """8-bit RGB PNG with the original HR size and the scale in text chunks (PIL)."""
    from PIL import Image, PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text(SIZE_KEY, f"{original_hw[1]}x{original_hw[0]}")
    meta.add_text(SCALE_KEY, str(scale))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(lr_u8), mode="RGB").save(path, pnginfo=meta)


def _read_png_size(path: Path) -> tuple[tuple[int, int] | None, int | None]:
    """``((H, W), scale)`` stored by ``downscale`` in a PNG, or ``(None, None)``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
    except Exception:  # not readable by PIL: no metadata (load_image reports real errors)
        return None, None
    size = scale = None
    if SIZE_KEY in text:
        try:
            size = _parse_size(text[SIZE_KEY])
        except ValueError:
            size = None
    if text.get(SCALE_KEY, "").isdigit():
        scale = int(text[SCALE_KEY])
    return size, scale


def _progress_printer(label: str):
    def report(done: int, total: int) -> None:
        if total > 1:
            print(f"  {label}: tile {done}/{total}", file=sys.stderr, flush=True)

    return report


def rescale_main(command: str, argv: Sequence[str]) -> int:
    cls = DownscaleConfig if command == "downscale" else UpscaleConfig
    parser = argparse.ArgumentParser(
        prog=f"evaluate.py {command}",
        description=cls.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    if command == "downscale":
        parser.add_argument("input", type=Path, help="HR image (any size, any readable format).")
        parser.add_argument("output", type=Path, help="LR image to write (.png, 8-bit).")
    else:
        parser.add_argument("input", type=Path, help="LR image, e.g. written by downscale.")
        parser.add_argument("output", type=Path, help="HR image to write (.png recommended).")
    cfg, args = parse_config_with_args(cls, argv, parser)
    if command == "downscale" and args.output.suffix.lower() != ".png":
        _fail(parser, f"output {args.output}: the LR must be a lossless 8-bit .png")
    try:
        image = load_image(args.input)
    except ImageReadError as err:
        _fail(parser, f"input: {err}")
        raise  # unreachable
    device = _setup(parser, cfg)
    model, info = _load_model(parser, cfg, device)
    s = int(model.scale)
    start = time.perf_counter()
    if command == "downscale":
        padded, (h, w) = pad_to_multiple(image, s)
        if padded is not image:
            print(
                f"note: {args.input} is {w}x{h}, not a multiple of {s}: reflect-padded at the "
                f"bottom/right to {padded.shape[1]}x{padded.shape[0]}; upscale crops back to "
                f"{w}x{h} (stored in {args.output})"
            )
        hw = padded.shape[:2]
        tile = _resolve_tile(parser, cfg, s, hw, model.config.gc)
        hint = _memory_hint(tile, hw, cfg.memory_budget, model.config.gc)
        if hint:
            print(hint)
        x = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)[None]
        lr = downscale_tiled(model, x, tile, cfg.tile_overlap, cfg.amp, _progress_printer("LR"))
        lr_u8 = quantize_to_uint8(lr[0]).permute(1, 2, 0).cpu().numpy()
        _write_lr_png(args.output, lr_u8, (h, w), s)
        print(
            f"wrote {args.output}: {lr_u8.shape[1]}x{lr_u8.shape[0]} LR of {w}x{h} (x{s}, "
            f"{info['kind']} checkpoint, {_tile_note(tile, hw, s, cfg.tile_overlap)}) in "
            f"{time.perf_counter() - start:.1f} s"
        )
        return 0

    stored, stored_scale = _read_png_size(args.input)
    h_lr, w_lr = image.shape[:2]
    if stored_scale is not None and stored_scale != s:
        warnings.warn(
            f"{args.input} was written by an x{stored_scale} downscale, the checkpoint is x{s}",
            stacklevel=1,
        )
    full = (h_lr * s, w_lr * s)
    if cfg.output_size:
        target: tuple[int, int] | None = _parse_size(cfg.output_size)
        if target[0] > full[0] or target[1] > full[1]:
            _fail(
                parser,
                f"--output-size {cfg.output_size}: larger than the x{s} upscale of this "
                f"{w_lr}x{h_lr} LR ({full[1]}x{full[0]}); the result can only be cropped",
            )
    else:
        target = stored
        if target is not None and (-(-target[0] // s), -(-target[1] // s)) != (h_lr, w_lr):
            print(
                f"note: ignoring the stored size {target[1]}x{target[0]}: it does not "
                f"downscale to this {w_lr}x{h_lr} LR at x{s}"
            )
            target = None
    latent = None
    if cfg.z_from is not None:
        latent = encode_z_from(parser, cfg, model, pad=True)
        if latent.lr_hw != (h_lr, w_lr):
            _fail(
                parser,
                _z_from_mismatch(latent, s, f"the {w_lr}x{h_lr} input LR {args.input}")
                + f" (give an HR image of {w_lr * s}x{h_lr * s}, or one reflect-padded to it)",
            )
        if target is None and not cfg.output_size and latent.size != latent.encoded:
            target = latent.size  # the --z-from photo is the original the LR was made from
    lr = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    lr = lr.to(device)
    hw = full
    tile = _resolve_tile(parser, cfg, s, hw, model.config.gc)
    hint = _memory_hint(tile, hw, cfg.memory_budget, model.config.gc)
    if hint:
        print(hint)
    if latent is not None:
        z = latent.z
        z_note = f"z from {latent.describe(s)}"
    else:
        gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
        z = sample_z(model, lr.shape, cfg.temperature, gen, lr.dtype, lr.device)
        z_note = "z = 0" if cfg.z == "zero" else f"temperature {cfg.temperature}, seed {cfg.seed}"
    hr = upscale_tiled(
        model, lr, z, tile, cfg.tile_overlap, cfg.amp, True, _progress_printer("HR")
    )
    hr_u8 = hr[0].permute(1, 2, 0).cpu().numpy()
    if target is not None and target != hw:
        print(f"note: cropping the {hw[1]}x{hw[0]} result to the original {target[1]}x{target[0]}")
        hr_u8 = hr_u8[: target[0], : target[1]]
    save_image(args.output, np.ascontiguousarray(hr_u8))
    print(
        f"wrote {args.output}: {hr_u8.shape[1]}x{hr_u8.shape[0]} (x{s}, {z_note}, "
        f"{_tile_note(tile, hw, s, cfg.tile_overlap)}) in {time.perf_counter() - start:.1f} s"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# IRN-Color checkpoints (train_irn.py --task color): decolourisation and colour restoration
# ---------------------------------------------------------------------------------------------

# The EvalConfig fields that mean something for IRN-Color; any other flag must keep its default.
_COLOR_FIELDS = frozenset(
    {
        "checkpoint",
        "method",
        "data",
        "draws",
        "temperature",
        "seed",
        "z",
        "json",
        "save_images",
        "device",
        "amp",
        "threads",
    }
)

_COLOR_COLUMNS = [
    ("gray_psnr", "Gray:PSNR", "{:9.2f}"),
    ("gray_ssim", "Gray:SSIM", "{:9.4f}"),
    ("psnr_rgb", "PSNR-RGB", "{:8.2f}"),
    ("ssim_rgb", "SSIM-RGB", "{:8.4f}"),
    ("psnr_y", "PSNR-Y", "{:7.2f}"),
    ("ssim_y", "SSIM-Y", "{:7.4f}"),
    ("psnr_rgb_z0", "z=0:PSNR-RGB", "{:12.2f}"),
    ("ssim_rgb_z0", "z=0:SSIM-RGB", "{:12.4f}"),
    ("nocolor_psnr_rgb", "NoColour:PSNR-RGB", "{:17.2f}"),
]


def format_color_table(
    title: str, rows: Sequence[tuple[str, str, dict]], first: str = "image", second: str = "size"
) -> str:
    """The IRN-Color metrics as a plain-text table of ``(name, size, metrics)`` rows."""
    width = min(40, max([len(first), *(len(name) for name, _, _ in rows)]))
    head = f"{first:<{width}} {second:>11}  " + "  ".join(t for _, t, _ in _COLOR_COLUMNS)
    lines = [title, head, "-" * len(head)]
    for name, size, row in rows:
        shown = name if len(name) <= width else "..." + name[-(width - 3) :]
        cells = "  ".join(fmt.format(row[key]) for key, _, fmt in _COLOR_COLUMNS)
        lines.append(f"{shown:<{width}} {size:>11}  {cells}")
    return "\n".join(lines)


def _refuse_for_color(parser: argparse.ArgumentParser, cfg: EvalConfig) -> None:
    """Flags of the rescaling evaluation would be silently ignored for IRN-Color: refuse them."""
    import dataclasses

    for f in dataclasses.fields(cfg):
        if f.name in _COLOR_FIELDS:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if getattr(cfg, f.name) != default:
            _fail(
                parser,
                f"--{f.name.replace('_', '-')}: does not apply to {cfg.checkpoint}, an IRN-Color "
                "checkpoint (train_irn.py --task color: full-resolution decolourisation, no "
                "scale, tiles, JPEG or LR)",
            )


def color_evaluate_main(
    parser: argparse.ArgumentParser, cfg: EvalConfig, argv: Sequence[str]
) -> int:
    """``evaluate.py --checkpoint C`` for an IRN-Color checkpoint (:func:`irn.color.
    evaluate_color`): gray' = Quant(f(x)[:, :1]) against the BT.601 luminance, and the colour
    restored from gray' with ``--draws`` samples of z (and with z = 0), per image and mean."""
    _refuse_for_color(parser, cfg)
    started = time.perf_counter()
    out = sys.stdout
    device = _setup(parser, cfg)
    try:
        model, info = load_color_checkpoint(cfg.checkpoint, map_location=device)
    except ValueError as err:
        _fail(parser, f"--checkpoint: {err}")
        raise  # unreachable
    datasets = _datasets(parser, cfg, out)
    step = f", step {info['step']}" if info.get("step") is not None else ""
    draws = cfg.draws if cfg.temperature else 1
    print(
        f"IRN-Color from {cfg.checkpoint} (color checkpoint{step}); {draws} draw(s) of z, "
        f"temperature {cfg.temperature}, seed {cfg.seed}; device {device}"
        f"{', amp' if cfg.amp else ''}",
        file=out,
    )
    print(
        "Metrics (8-bit, no border crop): Gray = gray' vs the BT.601 luminance "
        "0.299R+0.587G+0.114B; PSNR/SSIM-RGB and -Y = colour restored from gray' and z (mean "
        "over draws); z=0 = restored with z = 0; NoColour = the luminance copied to R, G, B.",
        file=out,
    )

    def too_small(img: np.ndarray) -> str | None:
        h, w = img.shape[:2]
        return f"{w}x{h} is smaller than the 11x11 SSIM window" if min(h, w) < 11 else None

    def evaluate_image(ds: Dataset, item: Any, img: np.ndarray, bar: Any) -> dict:
        row = evaluate_color(
            model,
            [img],
            draws=cfg.draws,
            temperature=cfg.temperature,
            seed=cfg.seed,
            device=device,
            amp=cfg.amp,
            return_images=cfg.save_images is not None,
        )[0]
        row = {"name": item.name, "path": str(item.path) if item.path else None,
               "size": list(img.shape[:2]), **row}  # fmt: skip
        if cfg.save_images is not None:
            stem = cfg.save_images / _safe(ds.name) / Path(_safe(item.name)).with_suffix("")
            gray_path = stem.with_name(stem.name + "_gray.png")
            color_path = stem.with_name(stem.name + "_color.png")
            save_image(gray_path, row["gray"])
            save_image(color_path, row["rgb_rec"])
            row["files"] = [str(gray_path), str(color_path)]
        for key in ("gray", "rgb_rec", "rgb_rec_z0"):
            row.pop(key, None)
        return row

    def color_mean(rows: Sequence[dict]) -> dict:
        mean = mean_metrics([{k: r[k] for k in COLOR_METRIC_KEYS} for r in rows])
        mean["seconds"] = float(sum(r["seconds"] for r in rows))
        return mean

    total = sum(len(d.images) for d in datasets)
    results = _run_datasets(
        parser, datasets, too_small, evaluate_image, color_mean, postfix="psnr_rgb"
    )
    for res in results:
        table_rows = [(r["name"], f"{r['size'][1]}x{r['size'][0]}", r) for r in res["images"]]
        if res["images"]:
            table_rows.append((f"mean ({res['num_images']} images)", "", res["mean"]))
        title = f"\n{res['name']}" + (f" ({res['path']})" if res["path"] else "")
        print(format_color_table(title, table_rows), file=out)
    elapsed = time.perf_counter() - started
    print(f"\n{total} image(s) in {elapsed:.1f} s", file=out)
    if cfg.json is not None:
        settings = config_to_dict(cfg)
        settings.update(
            task="color",
            checkpoint=str(cfg.checkpoint),
            checkpoint_kind=info["kind"],
            checkpoint_step=info.get("step"),
            model_config=info["config"],
            device=str(device),
            torch_version=torch.__version__,
            command=["evaluate.py", *argv],
            protocol="IRN-Color: gray' = Quant(f(x)[:, :1]) vs uint8 BT.601 luminance "
            "(0.299R+0.587G+0.114B); colour = f^-1(gray', z) vs x, uint8, no border crop, "
            "Y = MATLAB BT.601; sampled metrics averaged over draws; z=0 metrics separately",
        )
        _write_json(cfg.json, settings, results, elapsed, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``evaluate.py [eval] ...``, ``evaluate.py downscale ...``, ``... upscale``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("downscale", "upscale"):
        return rescale_main(args[0], args[1:])
    if args and args[0] == "eval":
        args = args[1:]
    return evaluate_main(args)


if __name__ == "__main__":
    sys.exit(main())
