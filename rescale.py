"""Downscale one's own images to 8-bit PNGs with an IRN, and upscale them back.

    python rescale.py down photo.jpg photo_lr.png --checkpoint IRN_x4.pth
    python rescale.py up photo_lr.png photo_hr.png --checkpoint IRN_x4.pth --seed 1
    python rescale.py up photo_lr.png photo_hr.png --checkpoint IRN_x4.pth --z zero
    python rescale.py up photo_lr.png photo_hr.png --checkpoint runs/real/last.pt  # z estimated
    python rescale.py up photo_lr.png photo_hr.png --checkpoint IRN_x4.pth --z-from photo.jpg
    python rescale.py down photos/ photos_lr/ --checkpoint IRN_x4.pth --tile auto   # folders
    python rescale.py up photos_lr/ photos_hr/ --checkpoint IRN_x4.pth

``down`` writes LR = Quant(f(HR)[:, :3]), the low-frequency half of the forward map rounded to
8 bits; ``up`` writes HR' = f^-1(LR, z) with z ~ N(0, temperature^2) (``--seed``), z = 0
(``--z zero``, the "mean" upscaling), z estimated from the LR (``--z estimate``, chosen by the
default ``--z auto`` for a model trained with ``--gaussian-scale 0``: ``irn/tiling.py``
``estimate_z``) or z = f(IMAGE)[:, 3:] of
another image (``--z-from``, latent transfer); IRN, Xiao et al., ECCV 2020, sec. 3
(docs/method.md: the network, quantisation).
The checkpoint is this project's (``train_irn.py``) or the authors' released ``.pth``.

Any size: a size that is not a multiple of the scale is reflect-padded at the bottom/right to
the next multiple before downscaling (numpy ``"reflect"``: mirrored about the last row/column);
the original size and the scale are stored in the LR PNG (text chunks ``irn:original-size``,
``WxH``, and ``irn:scale``) and ``up`` crops its result back to that size (``--output-size
WxH`` overrides). ``--tile N`` bounds the memory (HR tiles of ``N`` pixels, ``--tile-overlap``
LR pixels of context each side, one latent z for the whole image; see ``irn/tiling.py``).

Folders: when IN is a folder, OUT is a folder too. Every image under IN (recursively: png, jpg,
jpeg, bmp, tif, tiff, webp) is written to OUT at the same relative path as ``<stem>.png``
(``a/b.jpg`` -> ``OUT/a/b.png``); images inside OUT are skipped when OUT lies within IN. The
model is loaded (and ``--z-from`` encoded) once for all; every image uses the same ``--seed``.
An image that fails (unreadable, a size ``--z-from`` or ``--output-size`` does not fit, a write
error) is reported with its name and the others still run; the exit status is then 1.

``python evaluate.py downscale|upscale ...`` (the former commands) forward here.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from common.atomic import atomic_write_bytes, remove_stale_temps
from common.config import ConfigError, configclass, parse_config_with_args
from common.images import IMAGE_EXTENSIONS, list_images, load_image, save_image
from common.metrics import quantize_to_uint8
from common.outputs import OutputError, check_dir, check_file, check_not_input, clean_stale_temps
from common.runtime import describe_amp
from irn import cli, limits
from irn.ood import check_image
from irn.tiling import downscale_tiled, estimate_z, pad_to_multiple, sample_z, upscale_tiled

SIZE_KEY = "irn:original-size"
SCALE_KEY = "irn:scale"
COMMANDS = {"down": "down", "downscale": "down", "up": "up", "upscale": "up"}

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@configclass
class DownscaleConfig:
    """Downscale an image (or a folder of images) to 8-bit PNGs with an IRN."""

    checkpoint: Path = field(
        metadata={"help": "This project's checkpoint or the authors' .pth (auto-detected)."}
    )
    scale: int | None = field(
        default=None, metadata={"help": "Must match the checkpoint's scale if given."}
    )
    tile: str = cli.tile_field()  # None (not given) is not "none" (untiled on purpose)
    tile_overlap: int = cli.tile_overlap_field()
    memory_budget: float = cli.memory_budget_field()
    max_megapixels: float = cli.max_megapixels_field()
    device: str = cli.device_field()
    amp: bool = cli.amp_field()
    amp_dtype: Literal["auto", "bf16", "fp16"] = cli.amp_dtype_field()
    threads: int | None = cli.threads_field()

    def __post_init__(self) -> None:
        cli.check_tile_fields(self)


@configclass
class UpscaleConfig(DownscaleConfig):
    """Upscale an LR image or folder (e.g. from ``down``) with an IRN: z sampled, 0 or
    transferred."""

    temperature: float = cli.temperature_field()
    seed: int = cli.seed_field("each image")
    z: Literal["auto", "sample", "zero", "estimate"] = cli.z_field()
    z_window: int = cli.z_window_field()
    z_from: Path | None = cli.z_from_field(
        "Here an HR image of size LR * scale (or the original photo the LR was downscaled "
        "from: reflect-padded as down pads it)."
    )
    output_size: str | None = field(
        default=None,
        metadata={
            "help": "Crop the result to WxH (default: the size stored by down in the PNG, "
            "else the full LR size times the scale)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        cli.check_latent_fields(self)
        if self.output_size is not None:
            try:
                cli.parse_size(self.output_size)
            except ValueError as err:
                raise ConfigError(str(err), field="output_size") from None


# ---------------------------------------------------------------------------------------------
# The LR PNG and its text chunks
# ---------------------------------------------------------------------------------------------


def write_lr_png(path: Path, lr_u8: np.ndarray, original_hw: tuple[int, int], scale: int) -> None:
    """8-bit RGB PNG with the original HR size (``irn:original-size``, ``WxH``) and the scale
    (``irn:scale``) in text chunks, written atomically."""
    from PIL import Image, PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text(SIZE_KEY, f"{original_hw[1]}x{original_hw[0]}")
    meta.add_text(SCALE_KEY, str(scale))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(lr_u8), mode="RGB").save(buffer, "PNG", pnginfo=meta)
    atomic_write_bytes(path, buffer.getvalue())


def read_png_size(path: Path) -> tuple[tuple[int, int] | None, int | None]:
    """``((H, W), scale)`` stored by ``down`` in a PNG, or ``(None, None)``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
    except Exception:  # not readable by PIL: no metadata (load_image reports real errors)
        return None, None
    size = scale = None
    if SIZE_KEY in text:
        try:
            size = cli.parse_size(text[SIZE_KEY])
        except ValueError:
            size = None
    if text.get(SCALE_KEY, "").isdigit():
        scale = int(text[SCALE_KEY])
    return size, scale


# ---------------------------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------------------------


class FileError(Exception):
    """A failure of one input image (its message names the file): a folder run reports it and
    goes on with the next image."""


@dataclass
class Rescaler:
    """What every image of one run shares: the flags, the model (loaded once), its device and
    the ``--z-from`` latent (encoded once)."""

    parser: argparse.ArgumentParser
    cfg: Any  # DownscaleConfig or UpscaleConfig
    model: torch.nn.Module
    info: dict
    device: torch.device
    latent: cli.TransferredLatent | None = None

    @property
    def scale(self) -> int:
        return int(self.model.scale)


def _read_input(path: Path, max_megapixels: float) -> np.ndarray:
    try:
        limits.check_pixels(path, "input", max_megapixels)
    except ValueError as err:
        raise FileError(str(err)) from None
    try:
        return load_image(path)
    except ValueError as err:  # ImageReadError is a ValueError
        raise FileError(f"input: {err}") from None


def _tile_for(run: Rescaler, hw: tuple[int, int]) -> int | None:
    """The HR tile of an image of size ``hw``; prints a hint when untiled needs much memory."""
    gc = run.model.config.gc
    tile = cli.resolve_tile(run.parser, run.cfg, run.scale, hw, gc)
    hint = cli.memory_hint(tile, hw, run.cfg.memory_budget, gc, run.cfg.tile)
    if hint:
        print(hint)
    return tile


def downscale_file(run: Rescaler, src: Path, dst: Path) -> str:
    """``src`` -> reflect-padded to a multiple of the scale -> LR = Quant(f(HR)[:, :3]) ->
    ``dst`` (8-bit PNG with the original size); returns the line that reports it."""
    image = _read_input(src, run.cfg.max_megapixels)
    s, cfg, start = run.scale, run.cfg, time.perf_counter()
    padded, (h, w) = pad_to_multiple(image, s)
    if padded is not image:
        print(
            f"note: {src} is {w}x{h}, not a multiple of {s}: reflect-padded at the bottom/right "
            f"to {padded.shape[1]}x{padded.shape[0]}; up crops back to {w}x{h} (stored in {dst})"
        )
    hw = (int(padded.shape[0]), int(padded.shape[1]))
    tile = _tile_for(run, hw)
    x = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)[None]
    amp = cli.amp_of(cfg, run.device)
    lr = downscale_tiled(run.model, x, tile, cfg.tile_overlap, amp, cli.tile_progress("LR"))
    lr_u8 = quantize_to_uint8(lr[0]).permute(1, 2, 0).cpu().numpy()
    write_lr_png(dst, lr_u8, (h, w), s)
    warning = check_image(run.model, padded, str(src), run.info)[1]  # irn/ood.py
    if warning:
        print(warning, flush=True)
    return (
        f"wrote {dst}: {lr_u8.shape[1]}x{lr_u8.shape[0]} LR of {w}x{h} (x{s}, "
        f"{run.info['kind']} checkpoint, {cli.tile_note(tile, hw, s, cfg.tile_overlap)}) in "
        f"{time.perf_counter() - start:.1f} s"
    )


def _upscale_target(
    run: Rescaler, src: Path, lr_hw: tuple[int, int], stored: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The ``(H, W)`` the upscaled image is cropped to (None: the full LR size times the scale):
    ``--output-size``, else the size ``down`` stored in the PNG if it fits this LR, else the
    size of the ``--z-from`` photo when it had to be padded."""
    s, cfg = run.scale, run.cfg
    full = (lr_hw[0] * s, lr_hw[1] * s)
    if cfg.output_size:
        target = cli.parse_size(cfg.output_size)
        if target[0] > full[0] or target[1] > full[1]:
            raise FileError(
                f"--output-size {cfg.output_size}: larger than the x{s} upscale of the "
                f"{lr_hw[1]}x{lr_hw[0]} LR {src} ({full[1]}x{full[0]}); the result can only be "
                "cropped"
            )
        return target
    if stored is not None and (-(-stored[0] // s), -(-stored[1] // s)) != lr_hw:
        print(
            f"note: ignoring the size {stored[1]}x{stored[0]} stored in {src}: it does not "
            f"downscale to this {lr_hw[1]}x{lr_hw[0]} LR at x{s}"
        )
        stored = None
    latent = run.latent
    if stored is None and latent is not None and latent.size != latent.encoded:
        return latent.size  # the --z-from photo is the original the LR was made from
    return stored


def _upscale_latent(
    run: Rescaler, src: Path, lr: torch.Tensor, tile: int | None
) -> tuple[torch.Tensor, str]:
    """The z of ``f^-1(LR, z)`` and how it was chosen: the ``--z-from`` latent (its LR must
    have this LR's size), the ``--z estimate`` from the LR, or ``z ~ N(0, temperature^2)`` from
    ``--seed`` (0 with ``--z zero``)."""
    s, cfg, latent = run.scale, run.cfg, run.latent
    h_lr, w_lr = int(lr.shape[-2]), int(lr.shape[-1])
    if latent is not None:
        if latent.lr_hw != (h_lr, w_lr):
            raise FileError(
                cli.z_from_mismatch(latent, s, f"the {w_lr}x{h_lr} input LR {src}")
                + f" (give an HR image of {w_lr * s}x{h_lr * s}, or one reflect-padded to it)"
            )
        return latent.z, f"z from {latent.describe(s)}"
    if cfg.z == "estimate":
        amp = cli.amp_of(cfg, run.device)
        z = estimate_z(run.model, lr, cfg.z_window, tile, cfg.tile_overlap, amp)
        return z, f"z estimated from the LR, window {cfg.z_window}"
    gen = torch.Generator(device=run.device).manual_seed(int(cfg.seed))
    z = sample_z(run.model, lr.shape, cfg.temperature, gen, lr.dtype, lr.device)
    note = "z = 0" if cfg.z == "zero" else f"temperature {cfg.temperature}, seed {cfg.seed}"
    return z, note


def upscale_file(run: Rescaler, src: Path, dst: Path) -> str:
    """``src`` (an 8-bit LR) -> HR' = f^-1(LR, z), cropped to the original size -> ``dst``;
    returns the line that reports it."""
    image = _read_input(src, run.cfg.max_megapixels)
    s, cfg, start = run.scale, run.cfg, time.perf_counter()
    lr_hw = (int(image.shape[0]), int(image.shape[1]))
    stored, stored_scale = read_png_size(src)
    if stored_scale is not None and stored_scale != s:
        warnings.warn(
            f"{src} was written by an x{stored_scale} downscale, the checkpoint is x{s}",
            stacklevel=1,
        )
    target = _upscale_target(run, src, lr_hw, stored)
    lr = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(run.device)
    hw = (lr_hw[0] * s, lr_hw[1] * s)
    tile = _tile_for(run, hw)
    z, z_note = _upscale_latent(run, src, lr, tile)
    hr = upscale_tiled(
        run.model,
        lr,
        z,
        tile,
        cfg.tile_overlap,
        cli.amp_of(cfg, run.device),
        True,
        cli.tile_progress("HR"),
    )
    hr_u8 = hr[0].permute(1, 2, 0).cpu().numpy()
    if target is not None and target != hw:
        print(f"note: cropping the {hw[1]}x{hw[0]} result to the original {target[1]}x{target[0]}")
        hr_u8 = hr_u8[: target[0], : target[1]]
    save_image(dst, np.ascontiguousarray(hr_u8))
    return (
        f"wrote {dst}: {hr_u8.shape[1]}x{hr_u8.shape[0]} (x{s}, {z_note}, "
        f"{cli.tile_note(tile, hw, s, cfg.tile_overlap)}) in {time.perf_counter() - start:.1f} s"
    )


def rescale_file(run: Rescaler, command: str, src: Path, dst: Path) -> str:
    """``down`` or ``up`` one image; a failure of this image is a :class:`FileError` naming it
    (also a write error or running out of memory)."""
    rescale = downscale_file if command == "down" else upscale_file
    try:
        return rescale(run, src, dst)
    except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
        if not limits.is_allocation_failure(err):
            raise
        raise FileError(limits.allocation_message(err, str(src))) from None
    except OSError as err:
        text = str(err).strip().splitlines()
        raise FileError(f"{src}: {text[0] if text else type(err).__name__}") from None


# ---------------------------------------------------------------------------------------------
# Files and folders
# ---------------------------------------------------------------------------------------------


def _folder_jobs(parser: argparse.ArgumentParser, src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """``(image, output)`` pairs of a folder run: every image under ``src`` (except those
    inside ``dst``) to ``dst/<relative path>.png``; two inputs with one output fail at once."""
    if dst.exists() and not dst.is_dir():
        cli.fail(parser, f"output {dst}: must be a folder, as the input {src} is a folder")
    inside_out = dst.resolve()
    paths = [p for p in list_images(src) if inside_out not in p.resolve().parents]
    if not paths:
        kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        cli.fail(parser, f"input: no images found under {src} (looked for {kinds})")
    jobs, seen = [], {}
    for path in paths:
        out = dst / path.relative_to(src).with_suffix(".png")
        if out in seen:
            cli.fail(parser, f"input: {seen[out]} and {path} would both be written to {out}")
        seen[out] = path
        jobs.append((path, out))
    return jobs


def list_jobs(
    parser: argparse.ArgumentParser, command: str, src: Path, dst: Path
) -> tuple[list[tuple[Path, Path]], bool]:
    """The ``(image, output)`` pairs to process and whether ``src`` is a folder. A single
    image into an existing folder is written there as ``<stem>.png``."""
    if src.is_dir():
        return _folder_jobs(parser, src, dst), True
    if dst.is_dir():
        dst = dst / f"{src.stem}.png"
    if command == "down" and dst.suffix.lower() != ".png":
        cli.fail(parser, f"output {dst}: the LR must be a lossless 8-bit .png")
    if dst.suffix.lower() not in IMAGE_EXTENSIONS:
        kinds = ", ".join(IMAGE_EXTENSIONS)
        cli.fail(parser, f"output {dst}: not an image file name; use one of {kinds}")
    return [(src, dst)], False


def check_outputs(
    parser: argparse.ArgumentParser, jobs: Sequence[tuple[Path, Path]], folder: Path | None, cfg
) -> None:
    """Every output checked before the model is loaded (:mod:`common.outputs`): writable, not
    below a file, not a folder, and never one of the inputs (also through another path); then
    the temporary files a killed run left there are removed."""
    inputs = [p for p in (cfg.checkpoint, getattr(cfg, "z_from", None)) if p is not None]
    try:
        if folder is not None:
            check_dir(folder, "output")
        for src, dst in jobs:
            check_not_input(dst, "output", [src, *inputs])
        if folder is None:
            check_file(jobs[0][1], "output", IMAGE_EXTENSIONS, [jobs[0][0], *inputs])
    except OutputError as err:
        cli.fail(parser, str(err))
    if folder is not None and folder.is_dir():
        remove_stale_temps(folder, recursive=True)
    elif folder is None:
        clean_stale_temps([jobs[0][1].parent])


def run_jobs(run: Rescaler, command: str, jobs: Sequence[tuple[Path, Path]], folder: bool) -> int:
    """Rescale every image; a single image's error stops with exit status 2 (``parser.error``),
    a folder run reports each failed image and returns 1 at the end (0 if none failed)."""
    failed: list[Path] = []
    for k, (src, dst) in enumerate(jobs, start=1):
        try:
            line = rescale_file(run, command, src, dst)
        except FileError as err:
            if not folder:
                cli.fail(run.parser, str(err))
            print(f"error: {err}", file=sys.stderr, flush=True)
            failed.append(src)
            continue
        print(f"[{k}/{len(jobs)}] {line}" if folder else line, flush=True)
    if failed:
        names = ", ".join(str(p) for p in failed)
        print(f"{len(failed)} of {len(jobs)} image(s) failed: {names}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rescale.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", choices=["down", "up"], help="'rescale.py down -h' lists its flags"
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="IN OUT --checkpoint C [flags]")
    return parser


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``rescale.py down`` or ``up``: IN, OUT and the config's flags."""
    cls = DownscaleConfig if command == "down" else UpscaleConfig
    parser = argparse.ArgumentParser(
        prog=f"rescale.py {command}",
        description=cls.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    if command == "down":
        what_in, what_out = "HR image (any size, any readable format)", "LR image (.png, 8-bit)"
    else:
        what_in, what_out = "LR image, e.g. written by down", "HR image (.png recommended)"
    parser.add_argument("input", type=Path, help=f"{what_in}, or a folder of them.")
    parser.add_argument("output", type=Path, help=f"{what_out}, or a folder for a folder IN.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``rescale.py down IN OUT ...`` / ``rescale.py up IN OUT ...``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(args[0]) if args else None
    if command is None:
        top = _command_parser()
        top.parse_args(args)  # help, or an error naming the valid commands
        cli.fail(top, f"unknown command {args[0]!r}")
    parser = build_parser(command)
    cls = DownscaleConfig if command == "down" else UpscaleConfig
    cfg, ns = parse_config_with_args(cls, args[1:], parser)
    jobs, folder = list_jobs(parser, command, ns.input, ns.output)
    check_outputs(parser, jobs, ns.output if folder else None, cfg)
    device = cli.setup_device(parser, cfg)
    model, info = cli.load_rescaling_model(parser, cfg, device)
    cli.check_tile_scale(parser, cfg, int(model.scale))
    latent = None
    auto_note = cli.resolve_auto_z(cfg, info)
    if command == "up" and auto_note:
        print(auto_note, flush=True)
    if command == "up" and cli.z_advice(cfg, info):
        print(cli.z_advice(cfg, info), flush=True)
    if command == "up" and cfg.z_from is not None:
        latent = cli.encode_z_from(parser, cfg, model, pad=True)
    if cfg.amp:
        print(describe_amp(device, cli.amp_of(cfg, device)), flush=True)
    return run_jobs(Rescaler(parser, cfg, model, info, device, latent), command, jobs, folder)


if __name__ == "__main__":
    sys.exit(main())
