"""Train an Invertible Rescaling Network (IRN) with the authors' recipe.

The recipe (Xiao et al., "Invertible Image Rescaling", ECCV 2020, sec. 3.3 and 4.1;
docs/method.md, "Training objective"): Adam 2e-4 halved every 100k of 500k iterations, batch 16
of 144-pixel patches, lambda_guide = scale^2, Charbonnier reconstruction, sum z^2.

Quick run on the photos bundled with scikit-image (no download; a few minutes on a laptop CPU)::

    python train_irn.py --iters 200 --batch-size 4 --patch-size 64 --val-every 100

The paper's x4 training on DIV2K (500k iterations at batch 16; a GPU and AMP strongly advised)::

    python train_irn.py --scale 4 --data DIV2K/DIV2K_train_HR --val-data DIV2K/DIV2K_valid_HR \\
        --amp --out runs/irn_x4
    tensorboard --logdir runs

Several GPUs, or several CPU processes (DDP; ``--batch-size`` is the global batch, split
evenly; only rank 0 logs and writes checkpoints)::

    torchrun --standalone --nproc_per_node=4 train_irn.py --data DIV2K/DIV2K_train_HR --amp
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 train_irn.py ...            # on every node, its node_rank

Lower memory: ``--memory-saving`` recomputes activations from the outputs in the backward pass
(memory independent of depth, a somewhat slower step: docs/performance.md).

Fine-tune released or earlier weights on your own images (fresh optimiser and schedule; the
model flags must match the checkpoint)::

    python train_irn.py --data my_photos --init-weights IRN_x4.pth --iters 20000 --lr 1e-4

Interrupt with Ctrl-C (or SIGTERM): the last state is saved; continue with ``--resume auto``.
Every flag is listed by ``python train_irn.py --help``; defaults are the paper's. The loop
itself is ``irn/training.py``; this script holds IRN's objective and validation. IRN-Color
(invertible decolourisation) trains with ``train_irn_color.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import field
from typing import Any

import numpy as np
import torch

from common.checkpoint import CheckpointError
from common.config import ConfigError, add_dataclass_arguments, configclass, dataclass_from_args
from common.images import jpeg_roundtrip
from common.imresize import imresize
from common.quantize import quantize_ste
from common.runtime import autocast_context
from irn.data import validation_pairs
from irn.evaluation import bicubic_baseline, evaluate_rescaling, mean_metrics
from irn.losses import distribution_loss, mixed_loss, range_loss
from irn.model import IRN, IRNConfig
from irn.multiscale import latent_logscale_penalty
from irn.tiling import DEFAULT_Z_WINDOW
from irn.training import StepNoise, Task, TrainConfig, draw_noise, train_distributed, unwrap


@configclass
class IRNTrainConfig(TrainConfig):
    """IRN's training settings: the shared ones (:class:`irn.training.TrainConfig`) and the
    dissertation's rescaling-only variants."""

    y_channel_usage: float = field(
        default=0.0,
        metadata={"help": "IRN-Y: loss = (1-u)*loss_RGB + u*loss_Y for guidance and recon."},
    )
    sr_mode: bool = field(
        default=False,
        metadata={"help": "IRN-SR: upscale the bicubic LR instead of the model's LR."},
    )
    jpeg_quality_range: tuple[int, int] | None = field(
        default=None,
        metadata={
            "help": "IRN-C: JPEG-compress the quantised LR at a random quality in [LO, HI] "
            "(per image, straight-through gradient) before upscaling."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.y_channel_usage <= 1.0:
            raise ConfigError(
                f"must be in [0, 1], got {self.y_channel_usage}", field="y_channel_usage"
            )
        if self.jpeg_quality_range is not None:
            lo, hi = self.jpeg_quality_range
            if not 1 <= lo <= hi <= 100:
                raise ConfigError(
                    f"needs 1 <= LO <= HI <= 100, got {lo} {hi}", field="jpeg_quality_range"
                )
        if self.sr_mode and self.jpeg_quality_range is not None:
            raise ConfigError("cannot be combined with --sr-mode", field="jpeg_quality_range")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_irn.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataclass_arguments(parser, IRNConfig)
    add_dataclass_arguments(parser, IRNTrainConfig)
    return parser


def parse_args(argv: list[str] | None) -> tuple[IRNConfig, IRNTrainConfig]:
    """``(IRNConfig, IRNTrainConfig)`` from the command line; flag errors name the flag."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "--task" in args_list or any(a.startswith("--task=") for a in args_list):
        raise SystemExit(
            "train_irn.py: error: --task: IRN-Color training moved to its own script; run "
            "python train_irn_color.py with the same flags (without --task)"
        )
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        model_cfg = dataclass_from_args(IRNConfig, args)
        train_cfg = dataclass_from_args(IRNTrainConfig, args)
    except ConfigError as err:
        parser.error(str(err))
    if model_cfg.in_channels != 3:
        parser.error(
            f"--in-channels {model_cfg.in_channels}: train_irn.py trains on RGB images; only 3 "
            "is supported"
        )
    if train_cfg.patch_size < 2 * model_cfg.scale:
        parser.error(
            f"--patch-size {train_cfg.patch_size} is too small for --scale {model_cfg.scale}: "
            f"the LR patch needs at least 2 pixels a side (--patch-size >= {2 * model_cfg.scale})"
        )
    if train_cfg.patch_size % model_cfg.scale:
        parser.error(
            f"--patch-size {train_cfg.patch_size} must be a multiple of --scale {model_cfg.scale}"
        )
    return model_cfg, train_cfg


# ---------------------------------------------------------------------------------------------
# IRN's objective
# ---------------------------------------------------------------------------------------------


def jpeg_ste(lr: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """JPEG-compress image ``i`` at ``qualities[i]``; straight-through gradient (IRN-C, the
    IJCV extension's compression-aware rescaling)."""
    out = torch.empty_like(lr)
    for i in range(lr.shape[0]):
        out[i] = jpeg_roundtrip(lr[i].detach().float(), qualities[i])
    return lr + (out - lr).detach()


def compute_losses(
    model: torch.nn.Module,
    hr: torch.Tensor,
    lr_ref: torch.Tensor,
    cfg: IRNTrainConfig,
    noise: StepNoise,
    lambda_guide: float,
    lambda_recon: float | None = None,
    amp: bool = False,
) -> dict[str, torch.Tensor]:
    """The IRN objective of one batch (IRN, ECCV 2020, sec. 3.3, eq. 5-9; docs/method.md).

    ``(y, z) = f(x)``; ``L_guide`` on ``y`` (unquantised unless --quantize-guide-loss);
    ``y_q = Quant(y)`` (straight-through); ``x' = f^-1(y_q, z')`` with ``z'`` = ``noise.z``
    (``None``: 0); ``L_recon`` on ``x'``; ``L_distr = mean_b sum z^2`` (plus ``2 sum log sigma``
    of a multi-scale IRN's learned prior, irn/multiscale.py); with ``--lambda-range``, the
    hinge on ``y`` outside [0, 1] (:func:`irn.losses.range_loss`). ``noise.qualities``
    JPEG-compress ``y_q`` first (IRN-C). ``lambda_recon`` defaults to ``cfg.lambda_recon``.
    """
    c = lr_ref.shape[1]
    device = hr.device
    with autocast_context(device, amp):
        y, _ = model(hr)
        # the learned split prior's 2 sum log sigma (multi-scale IRN; 0 otherwise)
        l_prior = latent_logscale_penalty(unwrap(model), y)
    lr, z = y[:, :c], y[:, c:]
    lr_q = quantize_ste(lr)
    guide_in = lr_q if cfg.quantize_guide_loss else lr
    l_guide = mixed_loss(guide_in, lr_ref, cfg.guide_loss, cfg.y_channel_usage)
    l_distr = distribution_loss(z) + l_prior
    if noise.qualities is not None:
        lr_q = jpeg_ste(lr_q, noise.qualities)
    lr_in = lr_ref if cfg.sr_mode else lr_q
    z_up = torch.zeros_like(z) if noise.z is None else noise.z
    with autocast_context(device, amp):
        x_rec, _ = unwrap(model).inverse(torch.cat([lr_in, z_up], dim=1))
    if cfg.quantize_recon_loss:
        x_rec = quantize_ste(x_rec)
    l_recon = mixed_loss(x_rec, hr, cfg.recon_loss, cfg.y_channel_usage)
    w_recon = cfg.lambda_recon if lambda_recon is None else lambda_recon
    total = lambda_guide * l_guide + w_recon * l_recon + cfg.lambda_distr * l_distr
    losses = {"total": total, "guide": l_guide, "recon": l_recon, "distr": l_distr}
    if cfg.lambda_range > 0:  # off by default: the paper's objective, and its logged terms
        losses["range"] = range_loss(lr)
        losses["total"] = total + cfg.lambda_range * losses["range"]
    return losses


def sample_noise(
    model: torch.nn.Module,
    hr: torch.Tensor,
    cfg: IRNTrainConfig,
    z_gen: torch.Generator,
    jpeg_gen: np.random.Generator | None = None,
) -> StepNoise:
    """The random draws of one step for the batch ``hr`` alone, in its dtype (tests and
    benchmarks; training draws for the global batch in ``irn.training.train_step``)."""
    jpeg_gen = jpeg_gen if jpeg_gen is not None else np.random.default_rng(0)
    shape = z_shape(model, tuple(hr.shape))
    return draw_noise(shape, cfg, z_gen, jpeg_gen, hr.device, hr.dtype)


def z_shape(model: torch.nn.Module, hr_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The latent's shape for an HR batch shape ``[B, 3, H, W]``."""
    b, c, h, w = hr_shape
    s = unwrap(model).scale
    return unwrap(model).z_shape((b, c, h // s, w // s))


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validation_latent(cfg: IRNTrainConfig) -> dict[str, Any]:
    """How validation upscales: z sampled at ``--gaussian-scale`` (``--val-draws`` draws), or,
    for a run trained with ``--gaussian-scale 0``, z estimated from LR' (``evaluate.py``'s
    default ``--z auto`` for such a checkpoint: :func:`irn.tiling.estimate_z`)."""
    if cfg.gaussian_scale == 0:
        return {"z_estimate": DEFAULT_Z_WINDOW}
    return {"temperature": cfg.gaussian_scale, "draws": cfg.val_draws, "seed": cfg.seed}


def validation_method(config: Mapping[str, Any], legacy: bool = False) -> str:
    """What :func:`validation_latent` does for a stored training config, in words, kept with
    the best score. Checkpoints that did not record it (``legacy``) validated with z sampled at
    ``--gaussian-scale`` in every run: z = 0 for a ``--gaussian-scale 0`` run."""
    scale = float(config.get("gaussian_scale", IRNTrainConfig.gaussian_scale))
    if legacy:
        return "z = 0" if scale == 0 else f"z sampled at temperature {scale:g}"
    latent = validation_latent(dataclasses.replace(IRNTrainConfig(), gaussian_scale=scale))
    if "z_estimate" in latent:
        return f"z estimated from LR' (window {latent['z_estimate']})"
    return f"z sampled at temperature {latent['temperature']:g}"


def validate(model, pairs, cfg: IRNTrainConfig, device, amp) -> dict[str, float]:
    """Mean HR' and LR' metrics over the validation images (the evaluation protocol of
    ``evaluate.py``; z as :func:`validation_latent` says)."""
    latent = validation_latent(cfg)
    rows = [
        evaluate_rescaling(unwrap(model), p["hr"], device=device, amp=amp, **latent) for p in pairs
    ]
    return mean_metrics(rows)


@torch.no_grad()
def preview_images(model, pair, cfg: IRNTrainConfig, device, amp) -> dict[str, np.ndarray]:
    """HR, bicubic LR, LR', HR' (one draw, z as in validation) and |HR' - HR| (x4 for
    visibility) of a fixed validation crop."""
    scale = unwrap(model).scale
    hr = pair["hr"]
    size = min(hr.shape[0], hr.shape[1], 192)
    size -= size % scale
    top, left = (hr.shape[0] - size) // 2, (hr.shape[1] - size) // 2
    top -= top % scale
    left -= left % scale
    crop = np.ascontiguousarray(hr[top : top + size, left : left + size])
    latent = {**validation_latent(cfg), "draws": 1}
    out = evaluate_rescaling(
        unwrap(model), crop, device=device, amp=amp, return_images=True, **latent
    )  # fmt: skip
    bic = imresize(crop.astype(np.float64), scale=1.0 / scale).clip(0, 1)
    rec = out["hr_rec"].astype(np.float32) / 255.0
    err = np.clip(np.abs(rec - crop) * 4.0, 0.0, 1.0)
    return {
        "1_hr": crop,
        "2_bicubic_lr": bic.astype(np.float32),
        "3_lr_irn": out["lr"].astype(np.float32) / 255.0,
        "4_hr_irn": rec,
        "5_abs_error_x4": err.astype(np.float32),
    }


def val_line(metrics: dict[str, float], bicubic: dict[str, float]) -> str:
    gain = metrics["psnr_y"] - bicubic.get("psnr_y", float("nan"))
    return (
        f"PSNR-Y {metrics['psnr_y']:.2f} dB SSIM-Y {metrics['ssim_y']:.4f} | "
        f"RGB {metrics['psnr_rgb']:.2f} dB | LR' PSNR-Y {metrics['lr_psnr_y']:.2f} dB | "
        f"vs bicubic {gain:+.2f} dB"
    )


def summary(run: Any) -> list[str]:
    """The closing lines: the last validation against bicubic (the README's first command
    ends with them)."""
    last, bicubic = run.val_history[-1], run.baseline
    lines = []
    if run.cfg.data is None and last["psnr_y"] < bicubic["psnr_y"]:
        lines.append(
            "IRN is still below bicubic after this short run. On the built-in photos the "
            "paper's settings were still below it after 1000 iterations at --batch-size 8 "
            "--patch-size 64; the CPU recipe in docs/real_photos.md passed it within 1000."
        )
    lines.append(
        f"Validation PSNR-Y after {run.step} iterations: IRN {last['psnr_y']:.2f} dB "
        f"(SSIM-Y {last['ssim_y']:.4f}) vs bicubic {bicubic['psnr_y']:.2f} dB "
        f"(SSIM-Y {bicubic['ssim_y']:.4f}); best {run.best:.2f} dB; checkpoints in {run.out_dir}"
    )
    return lines


def bicubic_metrics(pairs: list[dict], scale: int) -> dict[str, float]:
    """The bicubic baseline's mean metrics on the validation pairs."""
    return mean_metrics([bicubic_baseline(p["hr"], scale) for p in pairs])


def irn_task(model_cfg: IRNConfig) -> Task:
    """IRN rescaling at ``model_cfg.scale`` as a :class:`~irn.training.Task`."""
    scale = model_cfg.scale
    return Task(
        name="rescale",
        title=f"IRN x{scale}" + (" multiscale" if model_cfg.multiscale else ""),
        best_key="psnr_y",
        default_out=f"runs/irn_x{scale}",
        lambda_guide=float(scale**2),
        scale=scale,
        model_class=IRN,
        losses=compute_losses,
        z_shape=z_shape,
        validation_pairs=validation_pairs,
        validate=validate,
        preview=preview_images,
        val_line=val_line,
        summary=summary,
        baseline=bicubic_metrics,
        val_method=validation_method,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_cfg, cfg = parse_args(argv)
    return train_distributed(irn_task(model_cfg), model_cfg, cfg)


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ValueError) as err:
        print(f"train_irn.py: error: {err}", file=sys.stderr)
        sys.exit(2)
