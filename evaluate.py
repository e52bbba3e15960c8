"""Evaluate an IRN (or the bicubic baseline) on benchmark HR images.

    python evaluate.py --checkpoint runs/irn_x4/best.pt --data Set5 Set14 DIV2K_valid_HR --scale 4
    python evaluate.py --checkpoint IRN_x4.pth --data Set5/HR --json set5.json --save-images out/
    python evaluate.py --method bicubic --scale 4                 # no --data: skimage photos
    python evaluate.py --checkpoint IRN_x4.pth --data DIV2K_valid_HR --jpeg-quality 90
    python evaluate.py --checkpoint IRN_x4.pth --data big/ --tile auto --memory-budget 2
    python evaluate.py --checkpoint IRN_x4.pth --data Set5 --z zero          # mean upscaling
    python evaluate.py --checkpoint IRN_x4.pth --data one/ --z-from other.png  # latent transfer
    python evaluate.py --checkpoint IRN_x4.pth --data Set5 --lr-source bicubic  # SR of bicubic LR

The protocol (IRN, Xiao et al., ECCV 2020, sec. 4; docs/method.md, section Evaluation): each HR
is modcropped to a multiple of the scale, LR' = Quant(f(HR)) (8 bits), HR' = f^-1(LR', z);
PSNR/SSIM of HR' against HR on Y (BT.601 luma) and RGB with ``scale`` pixels cropped at the
border, of LR' against the bicubic LR without crop; the mean over ``--draws`` samples of z.

Latent options: ``--z sample`` (default, ``z ~ N(0, temperature^2)``, ``--draws`` samples),
``--z zero`` (``z = 0``, the "mean" upscaling; the same as ``--temperature 0``; one draw),
``--z-from IMAGE`` (the ``z`` of the HR image IMAGE, ``f(IMAGE)[:, 3:]``, upscales the LR of each
evaluated image, whose LR must have the same size; one draw). ``--lr-source bicubic`` upscales
the 8-bit MATLAB-bicubic LR of the HR instead of ``LR'`` (super-resolution with the IRN as
trained; no ``LR'`` metrics). ``--tile N`` bounds the memory (see ``irn/tiling.py``).

The checkpoint is this project's (``train_irn.py``) or the authors' released ``.pth``, detected
automatically; an IRN-Color checkpoint is evaluated by ``evaluate_color.py``. Each ``--data``
folder is one dataset, searched recursively; a folder holding an ``HR`` or ``*_HR`` subfolder
(``Set5/{HR,LR_bicubic}``, ``DIV2K/DIV2K_valid_HR``) is evaluated on those subfolders only.

Rescaling one's own photos is ``rescale.py`` (``python rescale.py down IN OUT --checkpoint C``,
``python rescale.py up IN OUT --checkpoint C``); ``evaluate.py downscale|upscale ...`` forwards
there.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch

import rescale
from common.config import ConfigError, config_to_dict, configclass, parse_config_with_args
from common.runtime import ProgressLogger
from irn import cli, eval_io, limits
from irn.data import NamedImage
from irn.evaluation import HR_KEYS, LR_KEYS, bicubic_baseline, evaluate_rescaling, mean_metrics
from irn.figures import save_outputs
from irn.ood import check_image
from irn.tiling import DEFAULT_Z_WINDOW

PROTOCOL = (
    "IRN (Xiao et al., ECCV 2020) sec. 4: modcrop; Y = BT.601; HR crop_border = scale; LR vs "
    "bicubic LR without crop; metrics averaged over draws"
)

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

# The fields --method bicubic does not use, with their defaults: any other value is refused.
_NOT_FOR_BICUBIC = {
    "draws": 5,
    "temperature": 1.0,
    "seed": 0,
    "z": "auto",
    "z_window": DEFAULT_Z_WINDOW,
    "z_from": None,
    "lr_source": "irn",
    "tile": None,
    "amp": False,
    "amp_dtype": "auto",
}


@configclass
class EvalConfig:
    """Evaluate an IRN checkpoint or the bicubic baseline (IRN, Xiao et al., ECCV 2020, sec. 4)."""

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
    data: tuple[Path, ...] = cli.data_field("HR images")
    sample_set: Literal["broad", "classic"] = cli.sample_set_field()
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
            "help": "Samples of z averaged per image (the paper: 5); 1 with --z zero, --z "
            "estimate or --z-from (z is fixed)."
        },
    )
    temperature: float = cli.temperature_field()
    seed: int = cli.seed_field("per image")
    z: Literal["auto", "sample", "zero", "estimate"] = cli.z_field()
    z_window: int = cli.z_window_field()
    z_from: Path | None = cli.z_from_field(
        "Modcropped like the evaluated images; every evaluated image must have an LR of that size."
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
    tile: str = cli.tile_field()  # None (not given) is not "none" (untiled on purpose)
    tile_overlap: int = cli.tile_overlap_field()
    memory_budget: float = cli.memory_budget_field()
    max_megapixels: float = cli.max_megapixels_field()
    json: Path | None = cli.json_field()
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
    device: str = cli.device_field()
    amp: bool = cli.amp_field()
    amp_dtype: Literal["auto", "bf16", "fp16"] = cli.amp_dtype_field()
    threads: int | None = cli.threads_field()

    def __post_init__(self) -> None:
        if self.method == "irn" and self.checkpoint is None:
            raise ConfigError(
                "required for --method irn (or use --method bicubic)", field="checkpoint"
            )
        if self.method == "bicubic":
            self._check_bicubic()
        if self.scale is not None and self.scale not in (2, 3, 4, 8):
            raise ConfigError(f"must be 2, 3, 4 or 8, got {self.scale}", field="scale")
        if self.draws < 1:
            raise ConfigError(f"must be >= 1, got {self.draws}", field="draws")
        cli.check_latent_fields(self)
        if self.jpeg_quality is not None and not 0 <= self.jpeg_quality <= 100:
            raise ConfigError(f"must be in 0..100, got {self.jpeg_quality}", field="jpeg_quality")
        if self.figure_crop < 16:
            raise ConfigError(f"must be >= 16, got {self.figure_crop}", field="figure_crop")
        cli.check_tile_fields(self)

    def _check_bicubic(self) -> None:
        if self.checkpoint is not None:
            raise ConfigError("not used by --method bicubic; drop it", field="checkpoint")
        if self.scale is None:
            raise ConfigError("required with --method bicubic", field="scale")
        for name, default in _NOT_FOR_BICUBIC.items():
            if getattr(self, name) != default:
                raise ConfigError("does not apply to --method bicubic", field=name)


@dataclass
class EvalRun:
    """What every image of one evaluation shares: the flags, the model (None for bicubic) and
    its checkpoint info, the device, the scale and the ``--z-from`` latent."""

    cfg: EvalConfig
    device: torch.device
    model: torch.nn.Module | None
    info: dict | None
    scale: int
    latent: cli.TransferredLatent | None = None

    @property
    def gc(self) -> int:
        return 32 if self.model is None else int(self.model.config.gc)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

COLUMNS: list[eval_io.Column] = [
    ("psnr_y", "PSNR-Y", "{:7.2f}"),
    ("ssim_y", "SSIM-Y", "{:7.4f}"),
    ("psnr_rgb", "PSNR-RGB", "{:8.2f}"),
    ("ssim_rgb", "SSIM-RGB", "{:8.4f}"),
    ("lr_psnr_y", "LR:PSNR-Y", "{:9.2f}"),
    ("lr_ssim_y", "LR:SSIM-Y", "{:9.4f}"),
    ("lr_psnr_rgb", "LR:PSNR-RGB", "{:11.2f}"),
    ("lr_ssim_rgb", "LR:SSIM-RGB", "{:11.4f}"),
]


def format_table(
    title: str, rows: Sequence[tuple[str, str, dict]], first: str = "image", second: str = "size"
) -> str:
    """A plain-text table: ``(name, size, metrics)`` rows under a header (``-``: no value)."""
    return eval_io.format_rows(title, rows, COLUMNS, first, second)


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


def min_side(scale: int, lr_metrics: bool = True) -> int:
    """Smallest modcropped side every metric computed accepts (:func:`irn.limits.min_side`)."""
    return limits.min_side(scale, lr_metrics)


def too_small(scale: int, hr: np.ndarray, lr_metrics: bool = True) -> str | None:
    """Why an HR image cannot be evaluated at ``scale``, or None."""
    return limits.too_small(scale, hr.shape[:2], lr_metrics)


def lr_metrics(cfg: EvalConfig) -> bool:
    """Whether LR' metrics are computed (IRN with its own LR')."""
    return cfg.method == "irn" and cfg.lr_source == "irn"


def check_outputs(parser: argparse.ArgumentParser, cfg: EvalConfig, datasets) -> None:
    """``--json`` and ``--save-images`` checked before any work (:func:`eval_io.check_outputs`)
    and images above ``--max-megapixels`` refused from their headers."""
    others = [cfg.checkpoint, cfg.z_from]
    images = eval_io.check_outputs(parser, cfg.json, cfg.save_images, datasets, others)
    try:
        for path in images + ([] if cfg.z_from is None else [cfg.z_from]):
            limits.check_pixels(path, "--data", cfg.max_megapixels)
    except ValueError as err:
        cli.fail(parser, str(err))


def _lr_size_mismatch(
    latent: cli.TransferredLatent, where: str, hw: tuple[int, int], scale: int
) -> str | None:
    """The ``--z-from`` error for the HR image ``where`` of size ``hw`` whose LR differs from
    the latent's (None: it fits)."""
    h, w = hw
    if (h // scale, w // scale) == latent.lr_hw:
        return None
    what = f"{where} (--data; {w}x{h} HR), whose x{scale} LR is {w // scale}x{h // scale}"
    return cli.z_from_mismatch(latent, scale, what)


def check_z_from_sizes(
    parser: argparse.ArgumentParser,
    latent: cli.TransferredLatent,
    datasets: Sequence[eval_io.Dataset],
    scale: int,
) -> None:
    """Fail before any work if an image to evaluate has an LR of another size than the
    ``--z-from`` latent (sizes from the file headers; images too small to evaluate are left out,
    as the evaluation skips them)."""
    bad = []
    for ds in datasets:
        for item in ds.images:
            h, w = item.size
            if min(h - h % scale, w - w % scale) < min_side(scale):
                continue
            message = _lr_size_mismatch(latent, str(item.path or item.name), item.size, scale)
            if message is not None:
                bad.append(message)
    if bad:
        more = f" ({len(bad) - 1} more image(s) differ too)" if len(bad) > 1 else ""
        cli.fail(parser, bad[0] + more)


def prepare(
    parser: argparse.ArgumentParser, cfg: EvalConfig, datasets: Sequence[eval_io.Dataset]
) -> EvalRun:
    """Device, model (an IRN-Color checkpoint is refused, naming ``evaluate_color.py``),
    scale and ``--z-from`` latent of the run; every flag error stops here, before any image."""
    device = cli.setup_device(parser, cfg)
    model, info = None, None
    if cfg.method == "irn":
        model, info = cli.load_rescaling_model(parser, cfg, device)
    auto_note = cli.resolve_auto_z(cfg, info)
    if auto_note:
        print(auto_note, flush=True)
    scale = int(cfg.scale if model is None else model.scale)
    cli.check_tile_scale(parser, cfg, scale)
    run = EvalRun(cfg, device, model, info, scale)
    if cfg.z_from is not None and model is not None:
        run.latent = cli.encode_z_from(parser, cfg, model, pad=False)
        check_z_from_sizes(parser, run.latent, datasets, scale)
    return run


def latent_note(cfg: EvalConfig, latent: cli.TransferredLatent | None, scale: int) -> str:
    """How z is chosen, for the header line."""
    source = cli.z_source(cfg)
    if source == "zero":
        return "z = 0 (mean upscaling, = --temperature 0): 1 draw, as every draw is identical"
    if source == "estimate":
        window = "the whole image" if cfg.z_window == 0 else f"{cfg.z_window} LR pixels"
        return f"z estimated from LR' (local mean over {window}): 1 draw (z is fixed)"
    if source == "transfer":
        assert latent is not None
        return f"z transferred from --z-from {latent.describe(scale)}: 1 draw (z is fixed)"
    return f"{cfg.draws} draw(s) of z ~ N(0, {cfg.temperature:g}^2), seed {cfg.seed}"


def print_header(run: EvalRun, out: IO[str]) -> None:
    """What is evaluated (method, checkpoint, z, LR source, JPEG, device) and the metrics."""
    cfg, scale, info = run.cfg, run.scale, run.info
    if run.model is None or info is None:
        what = f"Bicubic & Bicubic x{scale} (MATLAB-style imresize, float LR)"
    else:
        step = f", step {info['step']}" if info.get("step") is not None else ""
        what = f"IRN x{scale} from {cfg.checkpoint} ({info['kind']} checkpoint{step}); "
        what += latent_note(cfg, run.latent, scale)
        if cfg.lr_source == "bicubic":
            what += (
                "; --lr-source bicubic: upscaling the 8-bit MATLAB-bicubic LR of each HR instead "
                "of LR' (super-resolution)"
            )
    if cfg.jpeg_quality is not None:
        lr_name = "the bicubic LR" if cfg.lr_source == "bicubic" else "LR'"
        what += f"; {lr_name} JPEG-compressed at quality {cfg.jpeg_quality}"
    amp = cli.amp_of(cfg, run.device)
    amp_note = (
        f", amp {str(amp).replace('torch.float16', 'fp16').replace('torch.bfloat16', 'bf16')}"
    )
    print(f"{what}; device {run.device}{amp_note if amp else ''}", file=out)
    advice = cli.z_advice(cfg, info) if run.model is not None else None
    if advice:
        print(advice, file=out)
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


# ---------------------------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------------------------


class TileProgress:
    """Progress of a long tiled image: its tiles, at most every 30 s, so a run never looks
    stuck (the ``progress`` callback of :func:`irn.evaluation.evaluate_rescaling`)."""

    def __init__(self, bar: ProgressLogger, name: str, every: float = 30.0) -> None:
        self.bar, self.name, self.every = bar, name, every
        self.last = time.perf_counter()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if total > 1 and now - self.last > self.every:
            self.last = now
            self.bar.write(f"{self.name}: {stage}, tile {done}/{total}")


def _bicubic_row(run: EvalRun, hr: np.ndarray) -> dict:
    """Bicubic & Bicubic on one image: HR metrics only (LR' is the bicubic LR itself)."""
    start = time.perf_counter()
    want_images = run.cfg.save_images is not None
    row = bicubic_baseline(
        hr, run.scale, jpeg_quality=run.cfg.jpeg_quality, return_images=want_images
    )
    row["seconds"] = time.perf_counter() - start
    for key in LR_KEYS:
        row[key] = None
    return row


def evaluate_one(
    parser: argparse.ArgumentParser, run: EvalRun, hr: np.ndarray, bar: ProgressLogger, name: str
) -> dict:
    """The metrics of one HR image (:func:`irn.evaluation.evaluate_rescaling`, tiled as
    ``--tile`` says) or of the bicubic baseline."""
    if run.model is None:
        return _bicubic_row(run, hr)
    cfg, scale = run.cfg, run.scale
    hw = (hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale)
    tile = cli.resolve_tile(parser, cfg, scale, hw, run.gc)
    if tile is not None:
        bar.write(f"{name}: {cli.tile_note(tile, hw, scale, cfg.tile_overlap)}")
    hint = cli.memory_hint(tile, hw, cfg.memory_budget, run.gc, cfg.tile)
    if hint:
        bar.write(f"{name}: {hint}")
    try:
        row = _evaluate_irn(run, hr, bar, name, tile)
    except (RuntimeError, MemoryError) as err:
        if not limits.is_allocation_failure(err):
            raise
        bar.close()
        cli.fail(parser, limits.allocation_message(err, name))
    row["tile"] = tile
    return row


def _evaluate_irn(run: EvalRun, hr: np.ndarray, bar: ProgressLogger, name: str, tile) -> dict:
    """:func:`irn.evaluation.evaluate_rescaling` with the run's settings."""
    cfg = run.cfg
    return evaluate_rescaling(
        run.model,
        hr,
        draws=cfg.draws,
        temperature=cfg.temperature,
        seed=cfg.seed,
        device=run.device,
        amp=cli.amp_of(cfg, run.device),
        jpeg_quality=cfg.jpeg_quality,
        return_images=cfg.save_images is not None,
        tile=tile,
        tile_overlap=cfg.tile_overlap,
        progress=TileProgress(bar, name),
        z=None if run.latent is None else run.latent.z,
        lr_source=cfg.lr_source,
        z_estimate=cfg.z_window if cfg.z == "estimate" else None,
    )


def evaluate_image(
    parser: argparse.ArgumentParser,
    run: EvalRun,
    ds: eval_io.Dataset,
    item: NamedImage,
    hr: np.ndarray,
    bar: ProgressLogger,
) -> dict:
    """The JSON row of one image (with ``--save-images`` also its LR', HR' and figure)."""
    cfg, scale = run.cfg, run.scale
    h0, w0 = hr.shape[:2]
    if run.latent is not None:
        message = _lr_size_mismatch(run.latent, str(item.path or item.name), (h0, w0), scale)
        if message is not None:
            bar.close()
            cli.fail(parser, message)
    row = evaluate_one(parser, run, hr, bar, item.name)
    if run.model is not None:  # is the image like the training images? (irn/ood.py)
        row["forward_stats"], warning = check_image(run.model, hr, item.name, run.info)
        if warning:
            bar.write(warning)
    row = {
        "name": item.name,
        "path": str(item.path) if item.path else None,
        "size": [h0, w0],
        "evaluated_size": [h0 - h0 % scale, w0 - w0 % scale],
        **row,
    }
    if cfg.save_images is not None:
        bic = None if run.model is None else bicubic_baseline(hr, scale)["psnr_y"]
        row["files"] = save_outputs(
            cfg.save_images, ds.name, item.name, hr, row, bic, cfg.method, scale, cfg.figure_crop
        )
    row.pop("lr", None)
    row.pop("hr_rec", None)
    return row


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def dataset_mean(rows: Sequence[dict]) -> dict[str, float]:
    """Mean of each metric over the images (metrics that are None, e.g. LR of bicubic, left
    out) and the total time."""
    keys = [k for k in (*HR_KEYS, *LR_KEYS) if rows and all(r.get(k) is not None for r in rows)]
    out = mean_metrics([{k: r[k] for k in keys} for r in rows])
    out["seconds"] = float(sum(r.get("seconds", 0.0) for r in rows))
    return out


def print_results(results: Sequence[dict], out: IO[str]) -> None:
    """A table per dataset, and a summary of the means when there are several."""
    for table in eval_io.dataset_tables(results, format_table, size_key="evaluated_size"):
        print(table, file=out)
    if len(results) > 1:
        summary = [(r["name"], str(r["num_images"]), r["mean"]) for r in results]
        table = format_table("\nSummary (means per dataset)", summary, "dataset", "images")
        print(table, file=out)


def json_settings(run: EvalRun, argv: Sequence[str]) -> dict:
    """The exact settings of the run, for the JSON report."""
    cfg = run.cfg
    settings = config_to_dict(cfg)
    settings.update(scale=run.scale, protocol=PROTOCOL)
    checkpoint = eval_io.checkpoint_settings(
        "evaluate.py", argv, cfg.checkpoint, run.info, run.device
    )
    settings.update(checkpoint)
    if run.model is not None:
        latent = run.latent
        settings.update(
            z_source=cli.z_source(cfg),
            draws_per_image=1 if cli.z_source(cfg) != "sample" else cfg.draws,
            z_from_size=None if latent is None else list(latent.size),
            z_from_lr_size=None if latent is None else list(latent.lr_hw),
            lr_metrics=cfg.lr_source == "irn",
        )
        if cfg.lr_source == "bicubic":
            settings["protocol"] += (
                "; --lr-source bicubic: HR' = f^-1(Quant(bicubic LR), z), no LR' metrics"
            )
    return settings


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``evaluate.py`` (its flags come from :class:`EvalConfig`)."""
    return argparse.ArgumentParser(
        prog="evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog="An IRN-Color checkpoint: evaluate_color.py. Rescaling one's own images: "
        "rescale.py ('python rescale.py down IN OUT --checkpoint C', 'python rescale.py up IN "
        "OUT --checkpoint C'); 'evaluate.py downscale|upscale ...' forwards to it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def evaluate_main(argv: Sequence[str]) -> int:
    """``evaluate.py [flags]``: evaluate every dataset, print the tables, write the JSON."""
    parser = build_parser()
    cfg, _ = parse_config_with_args(EvalConfig, argv, parser)
    started, out = time.perf_counter(), sys.stdout
    datasets = eval_io.load_datasets(parser, cfg.data, out, cfg.sample_set)
    check_outputs(parser, cfg, datasets)
    run = prepare(parser, cfg, datasets)
    print_header(run, out)
    results = eval_io.run_datasets(
        parser,
        datasets,
        functools.partial(too_small, run.scale, lr_metrics=lr_metrics(cfg)),
        functools.partial(evaluate_image, parser, run),
        dataset_mean,
        postfix="psnr_y",
    )
    print_results(results, out)
    elapsed = time.perf_counter() - started
    print(f"\n{sum(len(d.images) for d in datasets)} image(s) in {elapsed:.1f} s", file=out)
    if cfg.json is not None:
        eval_io.write_json(cfg.json, json_settings(run, argv), results, elapsed, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``evaluate.py [eval] ...``; ``evaluate.py downscale|upscale ...`` forwards
    to ``rescale.py down|up ...`` (the command for rescaling)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("downscale", "upscale"):
        new = "down" if args[0] == "downscale" else "up"
        print(f"note: 'evaluate.py {args[0]}' is 'rescale.py {new}'; forwarding", file=sys.stderr)
        return rescale.main([new, *args[1:]])
    if args and args[0] == "eval":
        args = args[1:]
    return evaluate_main(args)


if __name__ == "__main__":
    sys.exit(main())
