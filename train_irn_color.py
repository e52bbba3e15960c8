"""Train IRN-Color: invertible decolourisation, RGB -> 8-bit gray + z, colour restored from gray.

The IJCV extension of IRN (Xiao et al., "Invertible Rescaling Network and Its Extensions",
IJCV 2023, the decolorization-colorization task; docs/method.md, "IRN-Color"): one invertible
map at full resolution (``irn/color.py``), trained with IRN's three losses, the luminance in
place of the bicubic LR. Same loop and flags as ``train_irn.py`` (``irn/training.py``) but for
the rescaling-only ones; the architecture flags are ``--color-*``.

Quick run on the sample photos, then evaluate the colour restoration::

    python train_irn_color.py --iters 200 --batch-size 8 --patch-size 64 --out runs/color
    python evaluate_color.py --checkpoint runs/color/last.pt

Fine-tune an earlier IRN-Color checkpoint: ``--init-weights runs/color/last.pt``. Interrupt
with Ctrl-C and continue with ``--resume auto``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch

from common.checkpoint import CheckpointError
from common.config import ConfigError, add_dataclass_arguments, configclass, dataclass_from_args
from irn.color import (
    COLOR_LAMBDA_GUIDE,
    IRNColor,
    IRNColorConfig,
    color_losses,
    evaluate_color,
    preview_color,
)
from irn.evaluation import mean_metrics
from irn.training import StepNoise, Task, TrainConfig, train_distributed, unwrap


@configclass
class ColorTrainConfig(TrainConfig):
    """IRN-Color's training settings: the flags it shares with IRN."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_irn_color.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataclass_arguments(parser, IRNColorConfig, prefix="color")
    add_dataclass_arguments(parser, ColorTrainConfig)
    return parser


def parse_args(argv: list[str] | None) -> tuple[IRNColorConfig, ColorTrainConfig]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model_cfg = dataclass_from_args(IRNColorConfig, args, prefix="color")
        train_cfg = dataclass_from_args(ColorTrainConfig, args)
    except ConfigError as err:
        parser.error(str(err))
    return model_cfg, train_cfg


def compute_color_losses(
    model: torch.nn.Module,
    rgb: torch.Tensor,
    lr_ref: torch.Tensor,
    cfg: ColorTrainConfig,
    noise: StepNoise,
    lambda_guide: float,
    lambda_recon: float | None = None,
    amp: bool = False,
) -> dict[str, torch.Tensor]:
    """The IRN-Color objective of one batch (:func:`irn.color.color_losses`) with the step's
    ``z'`` (``noise.z``; ``None``: 0). ``lr_ref`` (the patch loader's LR at scale 1) is not
    used: the guidance target is the luminance of ``rgb``."""
    b, _, h, w = rgb.shape
    z_up = rgb.new_zeros((b, IRNColor.z_channels, h, w)) if noise.z is None else noise.z
    return color_losses(
        model,
        rgb,
        lambda_guide=lambda_guide,
        lambda_recon=cfg.lambda_recon if lambda_recon is None else lambda_recon,
        lambda_distr=cfg.lambda_distr,
        guide_loss=cfg.guide_loss,
        recon_loss=cfg.recon_loss,
        z=z_up,
        quantize_guide_loss=cfg.quantize_guide_loss,
        quantize_recon_loss=cfg.quantize_recon_loss,
        amp=amp,
    )


def z_shape(model: torch.nn.Module, rgb_shape: tuple[int, ...]) -> tuple[int, ...]:
    b, _, h, w = rgb_shape
    return (b, IRNColor.z_channels, h, w)


def color_pairs(items: list, scale: int) -> list[dict]:
    """The validation images as they are (decolourisation keeps the resolution)."""
    return [{"name": item.name, "hr": item.load()} for item in items]


def validate_color(model, pairs, cfg: ColorTrainConfig, device, amp) -> dict[str, float]:
    """Mean of :func:`irn.color.evaluate_color` over the validation images."""
    rows = evaluate_color(
        unwrap(model),
        [p["hr"] for p in pairs],
        draws=cfg.val_draws,
        temperature=cfg.gaussian_scale,
        seed=cfg.seed,
        device=device,
        amp=amp,
    )
    return mean_metrics(rows)


def preview(model, pair, cfg, device, amp) -> dict[str, np.ndarray]:
    return preview_color(model, pair["hr"], device, amp)


def val_line(metrics: dict[str, float], baseline: dict[str, float]) -> str:
    return (
        f"gray' vs luma PSNR {metrics['gray_psnr']:.2f} dB SSIM {metrics['gray_ssim']:.4f} | "
        f"colour PSNR-RGB {metrics['psnr_rgb']:.2f} dB SSIM {metrics['ssim_rgb']:.4f} (z=0: "
        f"{metrics['psnr_rgb_z0']:.2f} dB) | no colour {metrics['nocolor_psnr_rgb']:.2f} dB"
    )


def summary(run: Any) -> list[str]:
    last = run.val_history[-1]
    return [
        f"Validation after {run.step} iterations: gray' vs luma PSNR {last['gray_psnr']:.2f} dB; "
        f"colour PSNR-RGB {last['psnr_rgb']:.2f} dB (z=0: {last['psnr_rgb_z0']:.2f} dB) vs "
        f"no colour {last['nocolor_psnr_rgb']:.2f} dB; best {run.best:.2f} dB; checkpoints in "
        f"{run.out_dir}"
    ]


COLOR_TASK = Task(
    name="color",
    title="IRN-Color",
    best_key="psnr_rgb",
    default_out="runs/irn_color",
    lambda_guide=COLOR_LAMBDA_GUIDE,
    scale=1,
    model_class=IRNColor,
    losses=compute_color_losses,
    z_shape=z_shape,
    validation_pairs=color_pairs,
    validate=validate_color,
    preview=preview,
    val_line=val_line,
    summary=summary,
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_cfg, cfg = parse_args(argv)
    return train_distributed(COLOR_TASK, model_cfg, cfg)


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ValueError) as err:
        print(f"train_irn_color.py: error: {err}", file=sys.stderr)
        sys.exit(2)
