"""Evaluate an IRN-Color checkpoint: decolourisation and colour restoration.

    python evaluate_color.py --checkpoint runs/irn_color/last.pt               # sample photos
    python evaluate_color.py --checkpoint runs/irn_color/last.pt --data photos/ --draws 5
    python evaluate_color.py --checkpoint runs/irn_color/last.pt --data photos/ \\
        --json color.json --save-images out/

The checkpoint is written by ``train_irn_color.py`` (:class:`irn.color.IRNColor`). Per
image (IRN, Xiao et al., IJCV 2022, "Invertible Rescaling Network and Its Extensions", the
decolorization-colorization task; docs/method.md, section IRN-Color):

* gray' = Quant(f(x)[:, :1]) against the 8-bit BT.601 luminance 0.299 R + 0.587 G + 0.114 B
  (PSNR/SSIM, no border crop);
* the colour restored from gray', x' = f^-1(gray', z), against x in RGB and on Y, with z ~
  N(0, temperature^2) averaged over ``--draws`` samples, and with z = 0;
* the "no colour" reference: the luminance copied to R, G and B.

Each ``--data`` folder is one dataset (searched recursively; ``HR`` / ``*_HR`` subfolders are
used when present); no ``--data``: the built-in validation photos (``--sample-set``). A
rescaling IRN is evaluated with ``evaluate.py``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from common.checkpoint import CheckpointError
from common.config import ConfigError, config_to_dict, configclass, parse_config_with_args
from common.images import save_image
from common.runtime import ProgressLogger
from irn import cli, eval_io
from irn.checkpoints import load_color_checkpoint
from irn.color import METRIC_KEYS, IRNColor, evaluate_color
from irn.data import NamedImage
from irn.evaluation import mean_metrics

PROTOCOL = (
    "IRN-Color: gray' = Quant(f(x)[:, :1]) vs uint8 BT.601 luminance (0.299R+0.587G+0.114B); "
    "colour = f^-1(gray', z) vs x, uint8, no border crop, Y = MATLAB BT.601; sampled metrics "
    "averaged over draws; z=0 metrics separately"
)


@configclass
class ColorEvalConfig:
    """Evaluate an IRN-Color checkpoint (train_irn_color.py)."""

    checkpoint: Path = field(
        metadata={"help": "An IRN-Color training checkpoint (train_irn_color.py)."}
    )
    data: tuple[Path, ...] = cli.data_field("RGB images")
    sample_set: Literal["broad", "classic"] = cli.sample_set_field()
    draws: int = field(
        default=5,
        metadata={"help": "Samples of z averaged per image; 1 with --z zero (z is fixed)."},
    )
    temperature: float = cli.temperature_field()
    seed: int = cli.seed_field("per image")
    z: Literal["sample", "zero"] = cli.z_field(default="sample")
    json: Path | None = cli.json_field()
    save_images: Path | None = field(
        default=None,
        metadata={"help": "Write gray' and the restored colour (first draw) under this folder."},
    )
    device: str = cli.device_field()
    amp: bool = cli.amp_field()
    threads: int | None = cli.threads_field()

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ConfigError(f"must be >= 1, got {self.draws}", field="draws")
        cli.check_latent_fields(self)
        cli.check_threads(self)


@dataclass
class ColorRun:
    """What every image of one evaluation shares: the flags, the model and its device."""

    cfg: ColorEvalConfig
    model: IRNColor
    info: dict
    device: torch.device


COLUMNS: list[eval_io.Column] = [
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
    return eval_io.format_rows(title, rows, COLUMNS, first, second)


def load_color_model(
    parser: argparse.ArgumentParser, cfg: ColorEvalConfig, device: torch.device
) -> tuple[IRNColor, dict]:
    """The IRN-Color of ``--checkpoint``; a rescaling IRN's checkpoint is refused, pointing to
    ``evaluate.py``."""
    try:
        return load_color_checkpoint(cfg.checkpoint, map_location=device)
    except (CheckpointError, ValueError) as err:
        message = str(err)
        if "not an IRN-Color checkpoint" in message:
            message += (
                "; evaluate a rescaling IRN with: python evaluate.py --checkpoint "
                f"{cfg.checkpoint}"
            )
        cli.fail(parser, f"--checkpoint: {message}")


def _print_header(run: ColorRun, out) -> None:
    cfg, info = run.cfg, run.info
    step = f", step {info['step']}" if info.get("step") is not None else ""
    draws = cfg.draws if cfg.temperature else 1
    print(
        f"IRN-Color from {cfg.checkpoint} (color checkpoint{step}); {draws} draw(s) of z, "
        f"temperature {cfg.temperature}, seed {cfg.seed}; device {run.device}"
        f"{', amp' if cfg.amp else ''}",
        file=out,
    )
    print(
        "Metrics (8-bit, no border crop): Gray = gray' vs the BT.601 luminance "
        "0.299R+0.587G+0.114B; PSNR/SSIM-RGB and -Y = colour restored from gray' and z (mean "
        "over draws); z=0 = restored with z = 0; NoColour = the luminance copied to R, G, B.",
        file=out,
    )


def too_small_for_ssim(img: np.ndarray) -> str | None:
    """Why an image cannot be evaluated (smaller than the 11x11 SSIM window), or None."""
    h, w = img.shape[:2]
    return f"{w}x{h} is smaller than the 11x11 SSIM window" if min(h, w) < 11 else None


def evaluate_image(
    run: ColorRun, ds: eval_io.Dataset, item: NamedImage, img: np.ndarray, bar: ProgressLogger
) -> dict:
    """The JSON row of one image (:func:`irn.color.evaluate_color`); with ``--save-images``
    also ``<stem>_gray.png`` and ``<stem>_color.png``."""
    cfg = run.cfg
    row = evaluate_color(
        run.model,
        [img],
        draws=cfg.draws,
        temperature=cfg.temperature,
        seed=cfg.seed,
        device=run.device,
        amp=cfg.amp,
        return_images=cfg.save_images is not None,
    )[0]
    row = {"name": item.name, "path": str(item.path) if item.path else None,
           "size": list(img.shape[:2]), **row}  # fmt: skip
    if cfg.save_images is not None:
        stem = (
            cfg.save_images
            / eval_io.safe_name(ds.name)
            / Path(eval_io.safe_name(item.name)).with_suffix("")
        )
        gray_path = stem.with_name(stem.name + "_gray.png")
        color_path = stem.with_name(stem.name + "_color.png")
        save_image(gray_path, row["gray"])
        save_image(color_path, row["rgb_rec"])
        row["files"] = [str(gray_path), str(color_path)]
    for key in ("gray", "rgb_rec", "rgb_rec_z0"):
        row.pop(key, None)
    return row


def color_mean(rows: Sequence[dict]) -> dict:
    """The mean of each colour metric over the images, and their total time."""
    mean = mean_metrics([{k: r[k] for k in METRIC_KEYS} for r in rows])
    mean["seconds"] = float(sum(r["seconds"] for r in rows))
    return mean


def main(argv: Sequence[str] | None = None) -> int:
    """``evaluate_color.py --checkpoint C [--data D ...]``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="evaluate_color.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cfg, _ = parse_config_with_args(ColorEvalConfig, argv, parser)
    started, out = time.perf_counter(), sys.stdout
    datasets = eval_io.load_datasets(parser, cfg.data, out, cfg.sample_set)
    eval_io.check_outputs(parser, cfg.json, cfg.save_images, datasets, [cfg.checkpoint])
    device = cli.setup_device(parser, cfg)
    model, info = load_color_model(parser, cfg, device)
    run = ColorRun(cfg, model, info, device)
    _print_header(run, out)
    results = eval_io.run_datasets(
        parser,
        datasets,
        too_small_for_ssim,
        functools.partial(evaluate_image, run),
        color_mean,
        postfix="psnr_rgb",
    )
    for table in eval_io.dataset_tables(results, format_color_table):
        print(table, file=out)
    elapsed = time.perf_counter() - started
    print(f"\n{sum(len(d.images) for d in datasets)} image(s) in {elapsed:.1f} s", file=out)
    if cfg.json is not None:
        settings = config_to_dict(cfg)
        settings.update(task="color", protocol=PROTOCOL)
        settings.update(
            eval_io.checkpoint_settings("evaluate_color.py", argv, cfg.checkpoint, info, device)
        )
        eval_io.write_json(cfg.json, settings, results, elapsed, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
