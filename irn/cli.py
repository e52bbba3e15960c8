"""What the IRN entry scripts share on the command line.

``evaluate.py`` (benchmark evaluation), ``rescale.py`` (downscale / upscale one's own images) and
``evaluate_color.py`` (IRN-Color) use the same flag help texts and checks, the same device and
model setup, the same choice of tile (``irn/tiling.py``) and, for latent transfer
(``--z-from``), the same encoded latent ``z = f(image)[:, 3:]`` (the high-frequency part of the
forward map, IRN, Xiao et al., ECCV 2020, sec. 3).

Errors reach the user as one line through ``parser.error`` (usage, then ``error: ...``, exit
status 2), naming the flag or the file.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from common.config import ConfigError
from common.images import ImageReadError, load_image
from common.metrics import modcrop
from common.runtime import AMP_DTYPES, amp_setting, resolve_device, set_num_threads
from irn.checkpoints import is_color_checkpoint, load_irn
from irn.limits import DEFAULT_MAX_MEGAPIXELS
from irn.tiling import (
    BYTES_PER_PIXEL,
    DEFAULT_OVERLAP,
    DEFAULT_Z_WINDOW,
    choose_tile,
    latent_tiled,
    pad_to_multiple,
    parse_tile,
)

__all__ = [
    "TransferredLatent",
    "amp_field",
    "amp_dtype_field",
    "amp_of",
    "check_latent_fields",
    "check_threads",
    "check_tile_fields",
    "check_tile_scale",
    "color_checkpoint_hint",
    "data_field",
    "sample_set_field",
    "device_field",
    "encode_z_from",
    "fail",
    "json_field",
    "load_rescaling_model",
    "memory_budget_field",
    "max_megapixels_field",
    "memory_hint",
    "parse_size",
    "print_tile_progress",
    "resolve_auto_z",
    "resolve_tile",
    "seed_field",
    "setup_device",
    "temperature_field",
    "threads_field",
    "tile_field",
    "tile_overlap_field",
    "tile_note",
    "tile_progress",
    "untiled_gb",
    "z_field",
    "z_from_field",
    "z_from_mismatch",
    "z_advice",
    "z_source",
    "z_window_field",
]

# ---------------------------------------------------------------------------------------------
# Config fields and checks (each script's config dataclass generates its flags from them)
# ---------------------------------------------------------------------------------------------

_TILE_HELP = (
    "HR tile size in pixels (a multiple of the scale; upscaling uses LR tiles of N/scale), "
    "'auto' (the largest tile fitting --memory-budget) or 'none' (whole image at once). Tiles "
    "are processed one at a time and stitched. Not given: the whole image at once, or 'auto' "
    "when that is estimated to exceed --memory-budget."
)
_Z_HELP_AUTO = (
    "'auto' ('estimate' for a checkpoint trained with --gaussian-scale 0, whose inverse never "
    "saw a sampled z; 'sample' for any other, or when --temperature is given), "
)
_Z_HELP = (
    "'sample' (z ~ N(0, temperature^2)) or 'zero' (z = 0, the 'mean' upscaling; the same as "
    "--temperature 0; one draw, as every draw would be identical)"
)
_Z_HELP_ESTIMATE = (
    " or 'estimate' (z estimated from the LR: the local mean over --z-window LR pixels of the z "
    "the model gives the LR's bicubic upscale, irn/tiling.py estimate_z; one draw; for models "
    "trained with --gaussian-scale 0, docs/real_photos.md)"
)
_Z_FROM_HELP = (
    "Latent transfer: encode this HR image with the model and upscale with its z = "
    "f(IMAGE)[:, 3:] instead of a sampled one (one draw). Its LR must have the size of the LR "
    "being upscaled."
)


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


def tile_field() -> Any:
    """The ``--tile`` field (checked by :func:`check_tile_fields`); annotate it ``str`` so that
    an explicit ``none`` stays the string (untiled on purpose) and ``None`` means not given."""
    return _help(None, _TILE_HELP)


def tile_overlap_field() -> Any:
    """The ``--tile-overlap`` field."""
    return _help(
        DEFAULT_OVERLAP,
        "LR pixels of context added on each side of a tile and discarded after processing "
        "(HR context = overlap * scale).",
    )


def memory_budget_field() -> Any:
    """The ``--memory-budget`` field."""
    return _help(2.0, "Memory budget in GB for --tile auto (whole-image buffers + one tile).")


def device_field() -> Any:
    """The ``--device`` field (resolved by :func:`setup_device`)."""
    return _help("auto", "'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'.")


def amp_field() -> Any:
    """The ``--amp`` field."""
    return _help(False, "Run the network under autocast (bf16 on CPU, fp16 on CUDA).")


def amp_dtype_field() -> Any:
    """The ``--amp-dtype`` field (resolved by :func:`amp_of`)."""
    return _help(
        "auto",
        "Autocast dtype under --amp: auto (fp16 on CUDA, bf16 on CPU), bf16 or fp16 (on the "
        "CPU: the CUDA code path). Choices: " + ", ".join(AMP_DTYPES) + ".",
    )


def amp_of(cfg: Any, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``cfg.amp`` / ``cfg.amp_dtype`` on ``device`` (``None``: no
    autocast); a config without ``amp_dtype`` means ``auto``."""
    try:
        return amp_setting(device, cfg.amp, getattr(cfg, "amp_dtype", "auto"))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def threads_field() -> Any:
    """The ``--threads`` field (checked by :func:`check_threads`)."""
    return _help(None, "torch CPU threads (none = torch's default).")


def temperature_field() -> Any:
    """The ``--temperature`` field (checked by :func:`check_latent_fields`)."""
    return _help(1.0, "Standard deviation of a sampled z (gaussian_scale); 0 is --z zero.")


def seed_field(per: str) -> Any:
    """The ``--seed`` field; ``per`` says what one seed is for."""
    return _help(0, f"Seed of the z generator ({per}).")


def z_field(default: str = "auto") -> Any:
    """The ``--z`` field: ``auto``, ``sample``, ``zero`` or ``estimate``; a script without the
    estimate passes ``default="sample"`` and offers ``sample`` or ``zero``."""
    if default == "auto":
        text = f"{_Z_HELP_AUTO}{_Z_HELP.replace(' or ', ', ', 1)}{_Z_HELP_ESTIMATE}"
    else:
        text = _Z_HELP
    return _help(default, f"Latent z of the upscaling: {text}.")


def z_window_field() -> Any:
    """The ``--z-window`` field (used by ``--z estimate``)."""
    return _help(
        DEFAULT_Z_WINDOW,
        "With --z estimate: side, in LR pixels, of the square box the estimated z is averaged "
        "over (0 = the whole image).",
    )


def z_from_field(where: str) -> Any:
    """The ``--z-from`` field; ``where`` says which image size fits the script."""
    return _help(None, f"{_Z_FROM_HELP} {where}")


def sample_set_field() -> Any:
    """The ``--sample-set`` field: which built-in validation photos stand in for ``--data``."""
    return field(
        default="broad",
        metadata={
            "help": "Without --data: the built-in validation photos to evaluate on, 'broad' "
            "(chelsea, stereo_motorcycle's right view, scikit-learn's china: what train_irn.py "
            "validates on by default) or 'classic' (the first two, the earlier default)."
        },
    )


def data_field(what: str) -> Any:
    """The ``--data`` field: dataset folders of ``what`` (see :mod:`irn.eval_io`)."""
    return field(
        default=(),
        metadata={
            "help": f"Dataset folders of {what}, each reported separately (searched "
            "recursively; HR or *_HR subfolders are used when present). None: the "
            "scikit-image validation photos."
        },
    )


def max_megapixels_field() -> Any:
    """The ``--max-megapixels`` field (images larger than this are refused from the header)."""
    return _help(
        DEFAULT_MAX_MEGAPIXELS,
        "Refuse input images that decode to more than this many million pixels (read from the "
        "file header, before decoding).",
    )


def json_field() -> Any:
    """The ``--json`` field of the evaluation report."""
    return _help(None, "Write per-image and mean metrics with the exact settings here.")


def _check_z_from(cfg: Any) -> None:
    if cfg.z in ("zero", "estimate"):
        raise ConfigError(
            f"conflicts with --z {cfg.z} (z is either {cfg.z} or transferred)", field="z_from"
        )
    if cfg.temperature != 1.0:
        raise ConfigError(
            f"{cfg.temperature} applies to a sampled z only, not to the --z-from latent",
            field="temperature",
        )
    if not Path(cfg.z_from).is_file():
        raise ConfigError(f"image file {cfg.z_from} does not exist", field="z_from")


def check_latent_fields(cfg: Any) -> None:
    """Check ``--z``, ``--z-from`` (if the config has it) and ``--temperature`` together.

    ``--z zero`` and ``--temperature 0`` are one setting: either sets both (``z='zero'``,
    ``temperature=0``). Raises :class:`ConfigError` naming the field.
    """
    if not (math.isfinite(cfg.temperature) and cfg.temperature >= 0):
        raise ConfigError(f"must be >= 0, got {cfg.temperature}", field="temperature")
    if cfg.z == "auto" and (getattr(cfg, "z_from", None) is not None or cfg.temperature != 1.0):
        cfg.z = "sample"  # a transferred z, or a temperature asked for: no estimate
    if getattr(cfg, "z_from", None) is not None:
        _check_z_from(cfg)
    if cfg.z == "estimate" and cfg.temperature != 1.0:
        raise ConfigError(
            f"{cfg.temperature} applies to a sampled z only, not to --z estimate",
            field="temperature",
        )
    if cfg.z == "zero":
        if cfg.temperature not in (0.0, 1.0):
            raise ConfigError(
                f"{cfg.temperature} contradicts --z zero (z = 0 is temperature 0)",
                field="temperature",
            )
        cfg.temperature = 0.0
    elif cfg.temperature == 0:
        cfg.z = "zero"
    _check_z_window(cfg)


def _check_z_window(cfg: Any) -> None:
    window = getattr(cfg, "z_window", DEFAULT_Z_WINDOW)
    if window != DEFAULT_Z_WINDOW and cfg.z not in ("auto", "estimate"):
        raise ConfigError(
            f"{window} applies to --z estimate only, not to a {z_source(cfg)} z", field="z_window"
        )
    if window < 0:
        raise ConfigError(f"must be >= 0, got {window}", field="z_window")


def resolve_auto_z(cfg: Any, info: dict | None) -> str | None:
    """Settle ``--z auto`` once the checkpoint's ``info`` is known: ``estimate`` when it was
    trained with ``--gaussian-scale 0`` (``z' = 0``: its inverse never saw a sampled ``z``,
    docs/real_photos.md), else ``sample``. Returns a note when the estimate was chosen, or when
    a ``--z-window`` goes unused."""
    if getattr(cfg, "z", None) != "auto":
        return None
    trained_on_zero = info is not None and info.get("gaussian_scale") == 0
    cfg.z = "estimate" if trained_on_zero else "sample"
    if not trained_on_zero:
        if getattr(cfg, "z_window", DEFAULT_Z_WINDOW) != DEFAULT_Z_WINDOW:
            return f"note: --z auto samples z for {cfg.checkpoint}; --z-window is not used"
        return None
    return (
        f"--z auto: z estimated from the LR (window {cfg.z_window}), as {cfg.checkpoint} was "
        "trained with --gaussian-scale 0; --z sample or --z zero to choose otherwise"
    )


def z_advice(cfg: Any, info: dict | None) -> str | None:
    """A note when a sampled ``z`` meets a checkpoint trained with ``z' = 0`` (its inverse never
    saw a sampled ``z``), else None."""
    if info is None or info.get("gaussian_scale") != 0 or z_source(cfg) != "sample":
        return None
    return (
        f"note: {cfg.checkpoint} was trained with --gaussian-scale 0 (its inverse only saw "
        f"z = 0); a sampled z at temperature {cfg.temperature:g} is far from that: upscale "
        "with --z estimate (docs/real_photos.md) or --z zero"
    )


def z_source(cfg: Any) -> str:
    """``"sample"``, ``"zero"``, ``"estimate"`` or ``"transfer"`` (``--z-from``)."""
    return "transfer" if getattr(cfg, "z_from", None) is not None else cfg.z


def check_tile_fields(cfg: Any) -> None:
    """Check ``--tile``, ``--tile-overlap``, ``--memory-budget`` and ``--threads``."""
    try:
        parse_tile(cfg.tile)
    except ValueError as err:
        raise ConfigError(str(err), field="tile") from None
    if cfg.tile_overlap < 0:
        raise ConfigError(f"must be >= 0, got {cfg.tile_overlap}", field="tile_overlap")
    if not (cfg.memory_budget > 0 and math.isfinite(cfg.memory_budget)):
        raise ConfigError(f"must be > 0 GB, got {cfg.memory_budget}", field="memory_budget")
    limit = getattr(cfg, "max_megapixels", 1.0)
    if not (limit > 0 and math.isfinite(limit)):
        raise ConfigError(f"must be > 0, got {limit}", field="max_megapixels")
    check_threads(cfg)


def check_threads(cfg: Any) -> None:
    """Check ``--threads`` (none or >= 1)."""
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"must be >= 1, got {cfg.threads}", field="threads")


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> ``(H, W)``; ``ValueError`` for anything else."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected WxH such as 53x37, got {text!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"expected a positive WxH, got {text!r}")
    return h, w


# ---------------------------------------------------------------------------------------------
# Device and model
# ---------------------------------------------------------------------------------------------


def fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Print the usage and ``error: message`` and exit with status 2."""
    parser.error(message)
    raise SystemExit(2)  # unreachable unless parser.error was overridden not to exit


def setup_device(parser: argparse.ArgumentParser, cfg: Any) -> torch.device:
    """Apply ``--threads`` and resolve ``--device`` (an unusable device fails naming the flag)."""
    set_num_threads(cfg.threads)
    try:
        return resolve_device(cfg.device)
    except (ValueError, RuntimeError) as err:
        fail(parser, f"--device: {err}")


def color_checkpoint_hint(checkpoint: Path) -> str:
    """The message for an IRN-Color checkpoint given where a rescaling IRN is expected."""
    return (
        f"{checkpoint} is an IRN-Color checkpoint (train_irn_color.py), not a rescaling "
        f"IRN; evaluate it with: python evaluate_color.py --checkpoint {checkpoint}"
    )


def load_rescaling_model(
    parser: argparse.ArgumentParser, cfg: Any, device: torch.device
) -> tuple[torch.nn.Module, dict]:
    """``irn.checkpoints.load_irn(cfg.checkpoint)`` (ours or the authors' format), checked
    against ``cfg.scale`` when given; errors name ``--checkpoint`` / ``--scale`` and the file."""
    try:
        model, info = load_irn(cfg.checkpoint, map_location=device)
    except ValueError as err:
        message = str(err)
        if is_color_checkpoint(cfg.checkpoint):
            message = color_checkpoint_hint(cfg.checkpoint)
        fail(parser, f"--checkpoint: {message}")
    if cfg.scale is not None and cfg.scale != model.scale:
        fail(
            parser,
            f"--scale {cfg.scale} does not match the checkpoint's scale {model.scale} "
            f"({cfg.checkpoint}, {info['kind']} format); use --scale {model.scale} or another "
            "checkpoint",
        )
    return model, info


# ---------------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------------


def check_tile_scale(parser: argparse.ArgumentParser, cfg: Any, scale: int) -> None:
    """Fail before any work when an explicit ``--tile`` is not a multiple of the scale."""
    explicit = parse_tile(cfg.tile)
    if isinstance(explicit, int) and explicit % scale:
        fail(parser, f"--tile {explicit} must be a multiple of the scale {scale}")


def resolve_tile(
    parser: argparse.ArgumentParser, cfg: Any, scale: int, hw: tuple[int, int], gc: int
) -> int | None:
    """The HR tile for an image of size ``hw`` (None: untiled); ``--tile auto`` picks the
    largest tile that fits ``--memory-budget`` (:func:`irn.tiling.choose_tile`)."""
    tile = parse_tile(cfg.tile)
    if tile == "auto" or (cfg.tile is None and untiled_gb(hw, gc) > cfg.memory_budget):
        tile = choose_tile(cfg.memory_budget, scale, cfg.tile_overlap, hw, gc=gc)
    elif tile is not None and tile % scale:
        fail(parser, f"--tile {tile} must be a multiple of the scale {scale}")
    if tile is not None and tile >= max(hw):
        return None  # one tile covers the image
    return tile


def untiled_gb(hw: tuple[int, int], gc: int) -> float:
    """Estimated GB the network needs for an ``hw`` HR image in one piece."""
    return hw[0] * hw[1] * BYTES_PER_PIXEL * gc / 32 / 1e9


def memory_hint(
    tile: int | None, hw: tuple[int, int], budget: float, gc: int, requested: str | None = "none"
) -> str | None:
    """What to say when the untiled network would exceed ``--memory-budget``: tiling switched
    on by itself (``--tile`` not given, ``requested`` None) or a warning (``--tile none``)."""
    need = untiled_gb(hw, gc)
    if need <= budget:
        return None
    what = f"{hw[1]}x{hw[0]} untiled needs about {need:.1f} GB (> --memory-budget {budget:g})"
    if requested is None and tile is not None:
        return f"note: {what}: tiling automatically ({tile}px tiles; --tile none forces untiled)"
    if tile is None:
        return f"note: {what}; --tile none: it may run out of memory (--tile auto bounds it)"
    return None


def tile_note(tile: int | None, hw: tuple[int, int], scale: int, overlap: int) -> str:
    """``"untiled"`` or ``"6 tiles of <= 32px, 64px HR context"``."""
    if tile is None:
        return "untiled"
    n = math.ceil(hw[0] / tile) * math.ceil(hw[1] / tile)
    return f"{n} tiles of <= {tile}px, {overlap * scale}px HR context"


def print_tile_progress(label: str, done: int, total: int) -> None:
    """Progress of a tiled pass on stderr (``functools.partial(print_tile_progress, "LR")``)."""
    if total > 1:
        print(f"  {label}: tile {done}/{total}", file=sys.stderr, flush=True)


def tile_progress(label: str) -> Callable[[int, int], None]:
    """The progress callback of :mod:`irn.tiling` for one labelled pass."""
    return functools.partial(print_tile_progress, label)


# ---------------------------------------------------------------------------------------------
# --z-from: latent transfer
# ---------------------------------------------------------------------------------------------


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
    ``rescale.py down`` does, else modcrop as the evaluation does) and encode it (tiled as
    ``--tile`` says, :func:`irn.tiling.latent_tiled`); errors name the flag and the file."""
    path = Path(cfg.z_from)
    try:
        image = load_image(path)
    except ImageReadError as err:
        fail(parser, f"--z-from: {err}")
    s = int(model.scale)
    size = (int(image.shape[0]), int(image.shape[1]))
    image = pad_to_multiple(image, s)[0] if pad else modcrop(image, s)
    hw = (int(image.shape[0]), int(image.shape[1]))
    if min(hw) < s:
        fail(parser, f"--z-from {path}: {size[1]}x{size[0]} is smaller than the scale {s}")
    tile = resolve_tile(parser, cfg, s, hw, model.config.gc)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    was_training = model.training
    model.eval()
    try:
        amp = amp_of(cfg, next(model.parameters()).device)
        z = latent_tiled(model, x, tile, cfg.tile_overlap, amp, tile_progress("z-from"))
    finally:
        model.train(was_training)
    return TransferredLatent(path, size, hw, z.cpu(), "reflect-padded" if pad else "modcropped")


def z_from_mismatch(latent: TransferredLatent, scale: int, what: str) -> str:
    """The error for an LR whose size differs from the ``--z-from`` latent's; ``what`` names
    that LR and gives its size."""
    return (
        f"--z-from {latent.describe(scale)}: its latent does not fit {what}; latent transfer "
        "needs LR images of the same size"
    )
