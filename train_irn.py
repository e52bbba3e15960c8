"""Train an Invertible Rescaling Network (IRN) with the authors' recipe (SPEC sec. 3).

Quick run on the photos bundled with scikit-image (no download; a few minutes on a laptop CPU)::

    python train_irn.py --iters 200 --batch-size 4 --patch-size 64 --val-every 100

The paper's x4 training on DIV2K (500k iterations at batch 16; a GPU and AMP strongly advised)::

    python train_irn.py --scale 4 --data DIV2K/DIV2K_train_HR --val-data DIV2K/DIV2K_valid_HR \\
        --amp --out runs/irn_x4
    tensorboard --logdir runs

IRN-Color, the invertible decolourisation of the IJCV extension (RGB -> 8-bit gray + z; the
colour is restored from the gray; ``irn/color.py``; evaluate with ``evaluate.py --checkpoint``)::

    python train_irn.py --task color --iters 200 --batch-size 8 --patch-size 64 --out runs/color

Several GPUs, or several CPU processes (DDP; ``--batch-size`` is the global batch, split
evenly; only rank 0 logs and writes checkpoints)::

    torchrun --standalone --nproc_per_node=4 train_irn.py --data DIV2K/DIV2K_train_HR --amp
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST:29500 train_irn.py ...            # on every node, its node_rank

Lower memory: ``--memory-saving`` recomputes activations from the outputs in the backward pass
(1.2-1.3x the step time measured on CPU; memory independent of depth).

Fine-tune released or earlier weights on your own images (fresh optimiser and schedule; the
model flags must match the checkpoint)::

    python train_irn.py --data my_photos --init-weights IRN_x4.pth --iters 20000 --lr 1e-4

Interrupt with Ctrl-C (or SIGTERM): the last state is saved; continue with ``--resume auto``.
Every flag is listed by ``python train_irn.py --help``; defaults are the paper's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from common.actnorm import ActNorm
from common.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    make_checkpoint,
    prune_checkpoints,
    resolve_resume,
    restore_checkpoint,
    save_checkpoint,
)
from common.config import (
    ConfigError,
    add_dataclass_arguments,
    config_from_dict,
    config_to_dict,
    config_to_text,
    configclass,
    dataclass_from_args,
)
from common.images import jpeg_roundtrip
from common.imresize import imresize
from common.quantize import quantize_ste
from common.runtime import (
    GracefulInterrupt,
    NonFiniteGuard,
    ProgressLogger,
    TensorBoardLogger,
    TrainingDiverged,
    autocast_context,
    is_main_process,
    make_grad_scaler,
    resolve_device,
    seed_everything,
)
from common.subnets import set_dense_block_options
from irn.checkpoints import load_irn
from irn.color import (
    COLOR_LAMBDA_GUIDE,
    IRNColor,
    IRNColorConfig,
    color_losses,
    evaluate_color,
    is_color_checkpoint,
    load_color_checkpoint,
    preview_color,
)
from irn.data import (
    PatchDataset,
    StepSampler,
    describe,
    load_folder,
    make_loader,
    memory_bytes,
    sample_photos,
    validation_pairs,
)
from irn.evaluation import bicubic_baseline, evaluate_rescaling, mean_metrics
from irn.losses import LOSS_KINDS, distribution_loss, mixed_loss
from irn.model import IRN, IRNConfig

LossKind = Literal["l1", "l2", "charbonnier"]
assert set(LossKind.__args__) == set(LOSS_KINDS)  # type: ignore[attr-defined]


@configclass
class TrainConfig:
    """Training settings (the model's architecture is :class:`irn.IRNConfig`)."""

    task: Literal["rescale", "color"] = field(
        default="rescale",
        metadata={
            "help": "'rescale' (IRN, the model flags above) or 'color' (IRN-Color, IJCV 2023: "
            "invertible decolourisation RGB -> 8-bit gray + z, the --color-* flags; --scale and "
            "the other IRN model flags do not apply and are refused unless left at their "
            "defaults)."
        },
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "Folder of HR training images (searched recursively: png, jpg, bmp, tif, "
            "webp; DIV2K_train_HR works as is). none = the scikit-image sample photos."
        },
    )
    val_data: str | None = field(
        default=None,
        metadata={
            "help": "Folder of HR validation images. none = the held-out sample photos "
            "(chelsea and the right view of stereo_motorcycle) when --data is none, else no "
            "validation."
        },
    )
    iters: int = field(default=500_000, metadata={"help": "Training iterations (paper: 500k)."})
    batch_size: int = field(
        default=16, metadata={"help": "Global batch size (split over processes under torchrun)."}
    )
    patch_size: int = field(
        default=144, metadata={"help": "HR training patch side, a multiple of --scale."}
    )
    micro_batch: int | None = field(
        default=None,
        metadata={
            "help": "Gradient accumulation: run each process's batch in chunks of this many "
            "samples, adding their gradients, then take one optimiser step. The update is the "
            "whole batch's (same z' and JPEG draws; equal up to float round-off) with the "
            "activation memory of one chunk, e.g. the paper's batch 16 on a small GPU. Must "
            "divide the per-process batch; none = the whole batch at once."
        },
    )
    lr: float = field(default=2e-4, metadata={"help": "Adam learning rate."})
    beta1: float = field(default=0.9, metadata={"help": "Adam beta1."})
    beta2: float = field(default=0.999, metadata={"help": "Adam beta2."})
    weight_decay: float = field(
        default=1e-5, metadata={"help": "Adam weight decay (L2 on the gradient, as the authors)."}
    )
    grad_clip: float = field(
        default=10.0, metadata={"help": "Gradient-norm clipping threshold (0 = off)."}
    )
    clip_value: float | None = field(
        default=None,
        metadata={"help": "Also clip each gradient value to [-v, v] (dissertation option)."},
    )
    lr_milestones: tuple[int, ...] = field(
        default=(100_000, 200_000, 300_000, 400_000),
        metadata={"help": "Iterations at which the learning rate is multiplied by --lr-gamma."},
    )
    lr_gamma: float = field(default=0.5, metadata={"help": "MultiStepLR factor."})
    lambda_guide: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the LR guidance loss; none = scale^2 (the authors'); with --task "
            "color the weight of the gray guidance, none = 3 (the authors' IRN-Color)."
        },
    )
    lambda_recon: float = field(default=1.0, metadata={"help": "Weight of the HR reconstruction."})
    lambda_distr: float = field(
        default=1.0, metadata={"help": "Weight of the distribution-matching loss sum(z^2)."}
    )
    guide_loss: LossKind = field(
        default="l2", metadata={"help": "Guidance loss on the LR (authors: l2)."}
    )
    recon_loss: LossKind = field(
        default="charbonnier",
        metadata={"help": "Reconstruction loss on the HR (authors: charbonnier, their 'l1')."},
    )
    gaussian_scale: float = field(
        default=1.0, metadata={"help": "Standard deviation of the z sampled for upscaling."}
    )
    y_channel_usage: float = field(
        default=0.0,
        metadata={"help": "IRN-Y: loss = (1-u)*loss_RGB + u*loss_Y for guidance and recon."},
    )
    zero_sample: bool = field(
        default=False, metadata={"help": "Upscale with z = 0 during training (no sampling)."}
    )
    sr_mode: bool = field(
        default=False,
        metadata={"help": "IRN-SR: upscale the bicubic LR instead of the model's LR."},
    )
    quantize_guide_loss: bool = field(
        default=False, metadata={"help": "Compute the guidance loss on the quantised LR."}
    )
    quantize_recon_loss: bool = field(
        default=False, metadata={"help": "Compute the reconstruction loss on the quantised HR'."}
    )
    jpeg_quality_range: tuple[int, int] | None = field(
        default=None,
        metadata={
            "help": "IRN-C: JPEG-compress the quantised LR at a random quality in [LO, HI] "
            "(per image, straight-through gradient) before upscaling."
        },
    )
    loss_flip_period: int | None = field(
        default=None,
        metadata={
            "help": "Dissertation's loss 'flipping' schedule (its table 3.5): every P iterations "
            "move to the next of three phases (lambda_guide, lambda_recon) x (1, 1), (1, 1/f), "
            "(1/f, 1) with f = --loss-flip-scale; none = off (the authors' constant weights). "
            "The dissertation counts P in epochs of DIV2K; here it is iterations."
        },
    )
    loss_flip_scale: float = field(
        default=1.0,
        metadata={"help": "Factor f of the loss flip schedule (1 = no change)."},
    )
    val_every: int = field(default=5000, metadata={"help": "Validate every N iterations."})
    val_draws: int = field(
        default=1, metadata={"help": "Samples of z averaged per validation image."}
    )
    save_every: int = field(default=5000, metadata={"help": "Checkpoint every N iterations."})
    keep_checkpoints: int = field(
        default=3, metadata={"help": "Periodic checkpoints kept (last.pt and best.pt always)."}
    )
    log_every: int = field(
        default=50, metadata={"help": "Log training scalars every N iterations."}
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "Output folder; none = runs/irn_x<scale> (--task color: runs/irn_color)."
        },
    )
    logdir: str | None = field(
        default=None, metadata={"help": "TensorBoard folder; none = <out>/tb."}
    )
    tensorboard: bool = field(default=True, metadata={"help": "Write TensorBoard logs."})
    resume: str | None = field(
        default=None,
        metadata={"help": "Checkpoint to resume from, or 'auto' for the latest in --out."},
    )
    init_weights: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune: start from the weights in this file (a checkpoint of this "
            "script, or for --task rescale the IRN authors' released .pth) with a fresh "
            "optimiser, schedule and iteration count, e.g. the authors' x4 model on your own "
            "images. The model flags must describe the checkpoint's architecture (--init "
            "aside: the file's weights replace the fresh ones). Not used "
            "when the run resumes (its checkpoint holds the weights)."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an --out that already holds checkpoints, replacing them. "
            "Without it such a run stops before any work (continue the old run with --resume "
            "auto, or choose another --out)."
        },
    )
    seed: int = field(default=10, metadata={"help": "Random seed (authors: 10)."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})
    amp: bool = field(
        default=False,
        metadata={
            "help": "Mixed precision: fp16 + gradient scaler on CUDA, bf16 on the CPU; the "
            "coupling arithmetic stays float32."
        },
    )
    workers: int | None = field(
        default=None, metadata={"help": "DataLoader worker processes; none = 0 on CPU, 4 on GPU."}
    )
    cache: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata={
            "help": "Keep the decoded training images in memory (8-bit: 3 bytes a pixel, "
            "DIV2K's 800 images 6.6 GB) instead of decoding an image file for every patch: "
            "on, off, or auto (on when they take at most a third of the physical memory, "
            "shared by the processes on this machine)."
        },
    )
    max_nonfinite: int = field(
        default=5,
        metadata={"help": "Stop after this many consecutive steps with a non-finite loss."},
    )
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads; none = torch's default."}
    )
    memory_saving: bool = field(
        default=False,
        metadata={
            "help": "Memory-saving backprop: keep only the flow's outputs and recompute each "
            "coupling's input from its output with the exact inverse during the backward pass "
            "(Gomez et al. 2017). Same gradients up to round-off; activation memory no longer "
            "grows with depth; 1.2-1.3x the step time (measured on CPU)."
        },
    )
    channels_last: bool = field(
        default=True,
        metadata={
            "help": "Run the dense-block convolutions in channels-last (NHWC) layout, faster "
            "with oneDNN on CPU and with tensor cores on GPU; same results. --no-channels-last "
            "keeps NCHW."
        },
    )

    def __post_init__(self) -> None:
        positive = ("iters", "batch_size", "patch_size", "val_every", "save_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("lr", "lr_gamma"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)}", field=name)
        if not 0.0 <= self.y_channel_usage <= 1.0:
            raise ConfigError(
                f"must be in [0, 1], got {self.y_channel_usage}", field="y_channel_usage"
            )
        if self.gaussian_scale < 0:
            raise ConfigError("must be >= 0", field="gaussian_scale")
        if self.jpeg_quality_range is not None:
            lo, hi = self.jpeg_quality_range
            if not 1 <= lo <= hi <= 100:
                raise ConfigError(
                    f"needs 1 <= LO <= HI <= 100, got {lo} {hi}", field="jpeg_quality_range"
                )
        if self.sr_mode and self.jpeg_quality_range is not None:
            raise ConfigError("cannot be combined with --sr-mode", field="jpeg_quality_range")
        if self.task == "color":
            # Rescaling-only options (they act on the RGB LR or the bicubic LR).
            for name, default in (
                ("y_channel_usage", 0.0),
                ("sr_mode", False),
                ("jpeg_quality_range", None),
            ):
                if getattr(self, name) != default:
                    raise ConfigError("applies to --task rescale only", field=name)
        if self.micro_batch is not None:
            if self.micro_batch < 1:
                raise ConfigError(f"must be >= 1, got {self.micro_batch}", field="micro_batch")
            if self.batch_size % self.micro_batch:
                raise ConfigError(
                    f"{self.micro_batch} must divide --batch-size {self.batch_size}",
                    field="micro_batch",
                )
        if self.loss_flip_period is not None and self.loss_flip_period < 1:
            raise ConfigError("must be >= 1 (or omitted: off)", field="loss_flip_period")
        if not self.loss_flip_scale > 0:
            raise ConfigError(f"must be > 0, got {self.loss_flip_scale}", field="loss_flip_scale")
        if self.keep_checkpoints < 1:
            raise ConfigError("must be >= 1", field="keep_checkpoints")
        if self.max_nonfinite < 1:
            raise ConfigError("must be >= 1", field="max_nonfinite")
        if self.val_draws < 1:
            raise ConfigError("must be >= 1", field="val_draws")
        if self.workers is not None and self.workers < 0:
            raise ConfigError("must be >= 0", field="workers")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_irn.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataclass_arguments(parser, IRNConfig)
    add_dataclass_arguments(parser, IRNColorConfig, prefix="color")
    add_dataclass_arguments(parser, TrainConfig)
    for action in parser._actions:  # the help of a flag generated from IRNConfig
        if action.dest == "scale":
            action.help = (action.help or "") + (
                " Meaningless for --task color (decolourisation keeps the resolution): refused "
                "there unless left at its default."
            )
    return parser


def _refuse_changed(
    parser: argparse.ArgumentParser, cfg: Any, prefix: str, reason: str, hint: str
) -> None:
    """``parser.error`` naming the first field of dataclass ``cfg`` that differs from its
    default: a flag of the other task would otherwise be silently ignored."""
    defaults = type(cfg)()
    for name in cfg.__dataclass_fields__:
        value = getattr(cfg, name)
        if value != getattr(defaults, name):
            flag = f"--{prefix}{name.replace('_', '-')}"
            if isinstance(value, bool):
                shown = flag if value else f"--no-{flag[2:]}"
            else:
                shown = f"{flag} {value}"
            parser.error(f"{shown}: {reason}; {hint}")


def parse_args(argv: list[str] | None) -> tuple[IRNConfig | IRNColorConfig, TrainConfig]:
    """``(model config, TrainConfig)``: an :class:`IRNConfig` for ``--task rescale``, an
    :class:`~irn.color.IRNColorConfig` (the ``--color-*`` flags) for ``--task color``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model_cfg = dataclass_from_args(IRNConfig, args)
        color_cfg = dataclass_from_args(IRNColorConfig, args, prefix="color")
        train_cfg = dataclass_from_args(TrainConfig, args)
    except ConfigError as err:
        parser.error(str(err))
    if model_cfg.in_channels != 3:
        parser.error(
            f"--in-channels {model_cfg.in_channels}: train_irn.py trains on RGB images; only 3 "
            "is supported"
        )
    if train_cfg.task == "color":
        _refuse_changed(
            parser,
            model_cfg,
            "",
            "an IRN (rescaling) model flag, meaningless for --task color",
            "leave it out; IRN-Color's architecture flags are --color-* (e.g. --color-gc)",
        )
        return color_cfg, train_cfg
    _refuse_changed(
        parser, color_cfg, "color-", "applies to --task color only", "add --task color or drop it"
    )
    if train_cfg.patch_size % model_cfg.scale:
        parser.error(
            f"--patch-size {train_cfg.patch_size} must be a multiple of --scale {model_cfg.scale}"
        )
    return model_cfg, train_cfg


# ---------------------------------------------------------------------------------------------
# Pieces of the training step
# ---------------------------------------------------------------------------------------------


def jpeg_ste(
    lr: torch.Tensor,
    quality_range: tuple[int, int],
    gen: np.random.Generator,
    global_batch: int | None = None,
    batch_offset: int = 0,
):
    """JPEG-compress each image at a random quality; straight-through gradient (IRN-C).

    Qualities are drawn for the whole global batch (``global_batch`` rows, this process's images
    being rows ``batch_offset ...``), so they do not depend on the number of processes.
    """
    lo, hi = quality_range
    rows = lr.shape[0] if global_batch is None else global_batch
    qualities = [int(gen.integers(lo, hi + 1)) for _ in range(rows)]
    out = torch.empty_like(lr)
    for i in range(lr.shape[0]):
        out[i] = jpeg_roundtrip(lr[i].detach().float(), qualities[batch_offset + i])
    return lr + (out - lr).detach()


def sample_z(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
    global_batch: int | None = None,
    batch_offset: int = 0,
) -> torch.Tensor:
    """``z ~ N(0, I)`` for this process's rows of the global batch.

    The whole global batch is drawn (every process holds the same generator state) and rows
    ``batch_offset .. batch_offset + shape[0]`` are kept, so a run on N processes upscales each
    sample with the same ``z`` as a single-process run with the same global batch.
    """
    rows = shape[0] if global_batch is None else global_batch
    if not 0 <= batch_offset <= rows - shape[0]:
        raise ValueError(
            f"sample_z: rows {batch_offset}..{batch_offset + shape[0]} outside a global batch "
            f"of {rows}"
        )
    z = torch.randn((rows, *shape[1:]), generator=generator, device=device, dtype=dtype)
    return z[batch_offset : batch_offset + shape[0]] if rows != shape[0] else z


def loss_weights(
    step: int, lambda_guide: float, lambda_recon: float, period: int | None, flip_scale: float
) -> tuple[float, float]:
    """``(lambda_guide, lambda_recon)`` at iteration ``step`` under the dissertation's loss
    flipping schedule (its sec. 3.4.3, table 3.5).

    Phase ``floor(step / period) mod 3``: 0 -> both as given; 1 -> ``lambda_recon / f``;
    2 -> ``lambda_guide / f``. ``period=None`` (the default) keeps the weights constant.
    """
    if period is None:
        return lambda_guide, lambda_recon
    phase = (step // period) % 3
    if phase == 1:
        return lambda_guide, lambda_recon / flip_scale
    if phase == 2:
        return lambda_guide / flip_scale, lambda_recon
    return lambda_guide, lambda_recon


def compute_losses(
    model: torch.nn.Module,
    hr: torch.Tensor,
    lr_ref: torch.Tensor,
    cfg: TrainConfig,
    lambda_guide: float,
    z_gen: torch.Generator,
    amp: bool,
    jpeg_gen: np.random.Generator | None = None,
    global_batch: int | None = None,
    batch_offset: int = 0,
    lambda_recon: float | None = None,
) -> dict[str, torch.Tensor]:
    """The IRN objective of one batch (IRN sec. 3.3; SPEC sec. 3) and the dissertation's options.

    ``(y, z) = f(x)``; ``L_guide`` on ``y`` (unquantised unless --quantize-guide-loss);
    ``y_q = Quant(y)`` (STE); ``x' = f^-1(y_q, z')`` with ``z' ~ N(0, gaussian_scale^2)``;
    ``L_recon`` on ``x'``; ``L_distr = mean_b sum z^2``.

    Under DDP, ``hr`` holds rows ``batch_offset ...`` of a ``global_batch``: the random draws
    (``z'``, JPEG qualities) are made for the global batch and sliced (:func:`sample_z`), so the
    result does not depend on the number of processes. ``lambda_recon`` overrides
    ``cfg.lambda_recon`` (the loss flip schedule, :func:`loss_weights`).
    """
    c = lr_ref.shape[1]
    device = hr.device
    with autocast_context(device, amp):
        y, _ = model(hr)
    lr, z = y[:, :c], y[:, c:]
    lr_q = quantize_ste(lr)
    guide_in = lr_q if cfg.quantize_guide_loss else lr
    l_guide = mixed_loss(guide_in, lr_ref, cfg.guide_loss, cfg.y_channel_usage)
    l_distr = distribution_loss(z)
    if cfg.jpeg_quality_range is not None:
        lr_q = jpeg_ste(
            lr_q,
            cfg.jpeg_quality_range,
            jpeg_gen or np.random.default_rng(),
            global_batch,
            batch_offset,
        )
    lr_in = lr_ref if cfg.sr_mode else lr_q
    if cfg.zero_sample:
        z_up = torch.zeros_like(z)
    else:
        z_up = sample_z(z.shape, z_gen, device, z.dtype, global_batch, batch_offset)
        z_up = z_up * cfg.gaussian_scale
    with autocast_context(device, amp):
        x_rec, _ = unwrap(model).inverse(torch.cat([lr_in, z_up], dim=1))
    if cfg.quantize_recon_loss:
        x_rec = quantize_ste(x_rec)
    l_recon = mixed_loss(x_rec, hr, cfg.recon_loss, cfg.y_channel_usage)
    w_recon = cfg.lambda_recon if lambda_recon is None else lambda_recon
    total = lambda_guide * l_guide + w_recon * l_recon + cfg.lambda_distr * l_distr
    return {"total": total, "guide": l_guide, "recon": l_recon, "distr": l_distr}


def compute_color_losses(
    model: torch.nn.Module,
    rgb: torch.Tensor,
    cfg: TrainConfig,
    lambda_guide: float,
    z_gen: torch.Generator,
    amp: bool,
    global_batch: int | None = None,
    batch_offset: int = 0,
    lambda_recon: float | None = None,
) -> dict[str, torch.Tensor]:
    """The IRN-Color objective of one batch (``--task color``; :func:`irn.color.color_losses`).

    ``z'`` for the colour restoration is drawn here like the rescaling's (``sample_z``: the
    global batch's draw, this process's rows; ``--zero-sample``: 0; ``--gaussian-scale``), so
    N processes reproduce the single-process run. ``lambda_recon`` overrides
    ``cfg.lambda_recon`` (the loss flip schedule).
    """
    b, _, h, w = rgb.shape
    shape = (b, IRNColor.z_channels, h, w)
    if cfg.zero_sample:
        z_up = rgb.new_zeros(shape)
    else:
        z_up = sample_z(shape, z_gen, rgb.device, rgb.dtype, global_batch, batch_offset)
        z_up = z_up * cfg.gaussian_scale
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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def backward_and_step(
    total: torch.Tensor,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
) -> torch.Tensor:
    """Backward of ``total``, optional value clipping, norm clipping at ``cfg.grad_clip``, the
    optimiser step (through the AMP ``scaler``); returns the gradient norm before clipping."""
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    params = list(unwrap(model).parameters())
    if cfg.clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    scaler.step(optimizer)
    scaler.update()
    return grad_norm


def batch_losses(
    model: torch.nn.Module,
    hr: torch.Tensor,
    lr_ref: torch.Tensor,
    cfg: TrainConfig,
    lambda_guide: float,
    lambda_recon: float,
    z_gen: torch.Generator,
    jpeg_gen: np.random.Generator | None,
    rows: slice,
    offset: int,
) -> dict[str, torch.Tensor]:
    """The training objective of ``hr[rows]`` (rows ``offset ...`` of the global batch): IRN's
    :func:`compute_losses`, or :func:`compute_color_losses` for ``--task color``."""
    if cfg.task == "color":
        return compute_color_losses(
            model,
            hr[rows],
            cfg,
            lambda_guide,
            z_gen,
            cfg.amp,
            global_batch=cfg.batch_size,
            batch_offset=offset,
            lambda_recon=lambda_recon,
        )
    return compute_losses(
        model,
        hr[rows],
        lr_ref[rows],
        cfg,
        lambda_guide,
        z_gen,
        cfg.amp,
        jpeg_gen,
        global_batch=cfg.batch_size,
        batch_offset=offset,
        lambda_recon=lambda_recon,
    )


def accumulate_chunks(
    chunk_losses: Callable[[slice, int], dict[str, torch.Tensor]],
    rows: int,
    micro: int,
    batch_offset: int,
    backward: Callable[[torch.Tensor], None],
    ddp_model: torch.nn.Module | None,
    z_gen: torch.Generator,
    jpeg_gen: np.random.Generator | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Gradient accumulation over ``rows // micro`` chunks of this process's batch
    (``--micro-batch``).

    ``chunk_losses(rows_slice, global_offset)`` gives the losses (means over the chunk) of one
    chunk. Every chunk but the last is back-propagated here with weight ``micro / rows`` (under
    DDP without the gradient all-reduce, ``no_sync``); the weighted total of the last chunk is
    returned for the caller's ``backward_and_step`` (which all-reduces), with the batch's losses
    (detached weighted sums: the means over the whole batch) for the non-finite check and the
    logs. Before each chunk after the first, the generators are put back where they were, so
    every chunk takes its rows of the step's single global draw of z' and JPEG qualities: the
    result is the unchunked one. With one chunk this is exactly the unchunked computation.
    """
    chunks = rows // micro
    weight = micro / rows
    z_state = z_gen.get_state()
    jpeg_state = None if jpeg_gen is None else jpeg_gen.bit_generator.state
    reported: dict[str, torch.Tensor] = {}
    total = None
    for c in range(chunks):
        if c:
            z_gen.set_state(z_state)
            if jpeg_gen is not None:
                jpeg_gen.bit_generator.state = jpeg_state
        losses = chunk_losses(slice(c * micro, (c + 1) * micro), batch_offset + c * micro)
        if chunks == 1:
            return losses["total"], {k: v.detach() for k, v in losses.items()}
        for k, v in losses.items():
            part = v.detach() * weight
            reported[k] = part if k not in reported else reported[k] + part
        total = losses["total"] * weight
        if c < chunks - 1:
            with ddp_model.no_sync() if ddp_model is not None else contextlib.nullcontext():
                backward(total)
    assert total is not None
    return total, reported


@torch.no_grad()
def initialize_actnorms(
    model: torch.nn.Module, hr: torch.Tensor, device: torch.device, amp: bool
) -> None:
    """Data-dependent ActNorm init (``--actnorm``) on the whole batch, not on the first chunk
    of ``--micro-batch`` (a no-op when every ActNorm is initialised, or there is none)."""
    norms = [m for m in unwrap(model).modules() if isinstance(m, ActNorm)]
    if norms and not all(bool(m.initialized) for m in norms):
        with autocast_context(device, amp):
            unwrap(model)(hr)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The authors' Adam (L2 weight decay added to the gradient), with PyTorch's fused kernel
    when every parameter is a CPU or CUDA floating-point tensor: one kernel per parameter instead
    of about ten elementwise passes (CPU, IRN x4: 9 ms instead of 21 ms per step); the same
    update up to float32 round-off. (The fused CPU kernel assumes a gradient laid out as its
    parameter, which autograd's gradient accumulation guarantees.)"""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(
        params,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )


# ---------------------------------------------------------------------------------------------
# Validation and images for TensorBoard
# ---------------------------------------------------------------------------------------------


def validate(model, pairs, cfg: TrainConfig, device, amp) -> dict[str, float]:
    rows = [
        evaluate_rescaling(
            unwrap(model),
            p["hr"],
            draws=cfg.val_draws,
            temperature=cfg.gaussian_scale,
            seed=cfg.seed,
            device=device,
            amp=amp,
        )
        for p in pairs
    ]
    return mean_metrics(rows)


def validate_color(model, pairs, cfg: TrainConfig, device, amp) -> dict[str, float]:
    """Mean of :func:`irn.color.evaluate_color` over the validation images (``--task color``)."""
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


@torch.no_grad()
def preview_images(model, pair, scale: int, device, amp) -> dict[str, np.ndarray]:
    """HR, bicubic LR, LR', HR' and |HR' - HR| (x4 for visibility) of a fixed validation crop."""
    hr = pair["hr"]
    size = min(hr.shape[0], hr.shape[1], 192)
    size -= size % scale
    top, left = (hr.shape[0] - size) // 2, (hr.shape[1] - size) // 2
    top -= top % scale
    left -= left % scale
    crop = np.ascontiguousarray(hr[top : top + size, left : left + size])
    out = evaluate_rescaling(
        unwrap(model),
        crop,
        draws=1,
        temperature=1.0,
        seed=0,
        device=device,
        amp=amp,
        return_images=True,
    )
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


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _say(msg: str) -> None:
    if is_main_process():
        print(msg, flush=True)


def cache_budget() -> int:
    """Bytes ``--cache auto`` may use: a third of the physical memory, divided by the training
    processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; each holds its own copy)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: the former fixed 2 GiB
        total = 6 * 2**30
    return int(total / 3 / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _load_data(cfg: TrainConfig, scale: int):
    if cfg.data is None:
        train = sample_photos("train")
        note = (
            "No --data given: training on the 6 scikit-image sample photos (astronaut, rocket, "
            "hubble_deep_field, immunohistochemistry, retina, coffee); validating on chelsea and "
            "the right view of stereo_motorcycle."
        )
        val = (
            sample_photos("val")
            if cfg.val_data is None
            else load_folder(cfg.val_data, "--val-data")
        )
    else:
        items = load_folder(cfg.data, "--data")
        need = memory_bytes(items)
        if cfg.cache == "on" or (cfg.cache == "auto" and need <= cache_budget()):
            items = load_folder(cfg.data, "--data", decode=True)
            where = f"decoded in memory ({need / 2**30:.2f} GiB)"
        else:
            where = f"decoded per patch from disk (--cache on keeps them: {need / 2**30:.2f} GiB)"
        train = items
        note = f"Training on {cfg.data}: {describe(items)}; {where}."
        val = [] if cfg.val_data is None else load_folder(cfg.val_data, "--val-data")
    return train, val, note


def _setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed when started by torchrun (RANK/WORLD_SIZE set).

    gloo on CPU, nccl on CUDA (one GPU per process: ``LOCAL_RANK``); the rendezvous comes from
    the environment torchrun sets (``--standalone`` or ``--rdzv_endpoint`` for several nodes).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def _all_true(flag: bool, world: int, device: torch.device) -> bool:
    """``flag`` OR-ed over all processes (so every rank takes the same branch)."""
    if world <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _global_losses(losses: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    """Detached losses averaged over the processes: the global batch's losses (every rank holds
    an equal share, and each loss is a mean over its rows), identical on every rank, so the
    non-finite check and the logs agree everywhere."""
    keys = list(losses)
    vals = torch.stack([losses[k].detach().float() for k in keys])
    if world > 1:
        torch.distributed.all_reduce(vals)
        vals = vals / world
    return dict(zip(keys, vals, strict=True))


def _on_rank0(read: Callable[[], Any], world: int, main_proc: bool) -> Any:
    """``read()`` on rank 0, its result broadcast to every rank (nodes need not share a file
    system); its error (``SystemExit`` or ``CheckpointError``) is raised on every rank alike."""
    result: list[Any] = [None, None]
    if main_proc or world <= 1:
        try:
            result = [read(), None]
        except (SystemExit, CheckpointError) as err:
            result = [None, (type(err).__name__, str(err))]
    if world > 1:
        torch.distributed.broadcast_object_list(result, src=0)
    value, error = result
    if error is not None:
        kind, message = error
        raise (SystemExit(message) if kind == "SystemExit" else CheckpointError(message))
    return value


def _load_resume(
    cfg: TrainConfig, out_dir: Path, world: int, main_proc: bool
) -> tuple[Path | None, dict | None]:
    """Find and read the checkpoint to resume (on rank 0, broadcast: :func:`_on_rank0`)."""

    def read() -> tuple[str | None, dict | None]:
        resume = resolve_resume(cfg.resume, out_dir)
        if cfg.resume and resume is None:
            raise SystemExit(f"--resume auto: no checkpoint found in {out_dir}")
        if resume is None and not cfg.overwrite:
            existing = sorted(p.name for p in out_dir.glob("*.pt")) if out_dir.is_dir() else []
            if existing:
                raise SystemExit(
                    f"--out {out_dir} already holds checkpoints of a run "
                    f"({', '.join(existing[:4])}{', ...' if len(existing) > 4 else ''}); a new "
                    "run would replace them. Continue that run with --resume auto, choose "
                    "another --out, or pass --overwrite to replace them."
                )
        return (None, None) if resume is None else (str(resume), load_checkpoint(resume))

    path, ckpt = _on_rank0(read, world, main_proc)
    return (None if path is None else Path(path)), ckpt


def read_init_weights(
    path: str, model_cfg: IRNConfig | IRNColorConfig
) -> tuple[dict[str, torch.Tensor], str]:
    """``--init-weights``: the state_dict in ``path`` (this script's checkpoint, or the IRN
    authors' release for an IRN) and a description of it, refused unless the architecture it
    describes is ``model_cfg``.

    ``init`` is not compared: it only decides how fresh weights are drawn, and these are
    replaced by the file's (``--init kaiming`` may fine-tune an xavier-initialised model).

    Raises:
        SystemExit: naming the flag, the file and each field where the checkpoint's model and
            the flags differ (or the task when an IRN-Color checkpoint meets an IRN, and back).
        CheckpointError: the file is missing, unreadable or not a checkpoint of either kind.
    """
    try:
        return _read_init_weights(path, model_cfg)
    except CheckpointError as err:
        raise CheckpointError(f"--init-weights: {err}") from None


def _read_init_weights(
    path: str, model_cfg: IRNConfig | IRNColorConfig
) -> tuple[dict[str, torch.Tensor], str]:
    flag = f"--init-weights {path}"
    color = isinstance(model_cfg, IRNColorConfig)
    if color:
        if not is_color_checkpoint(path):
            load_checkpoint(path)  # a missing or unreadable file: its own message
            raise SystemExit(
                f"{flag}: not an IRN-Color checkpoint (written by train_irn.py --task color); "
                "drop --task color to fine-tune an IRN"
            )
        loaded, info = load_color_checkpoint(path)
    else:
        if is_color_checkpoint(path):
            raise SystemExit(
                f"{flag}: an IRN-Color checkpoint (trained with --task color); add --task color "
                "to fine-tune it"
            )
        loaded, info = load_irn(path)
    stored = loaded.config
    # ``init`` only says how fresh weights are drawn; loaded weights make it moot.
    diffs = [
        f"{name}: checkpoint {getattr(stored, name)!r}, flags {getattr(model_cfg, name)!r}"
        for name in model_cfg.__dataclass_fields__
        if name != "init" and getattr(stored, name) != getattr(model_cfg, name)
    ]
    if diffs:
        raise SystemExit(
            f"{flag}: the checkpoint's model differs from the flags' ({'; '.join(diffs)}); "
            "pass the model flags that match it"
        )
    if info["kind"] == "authors":
        what = "the IRN authors' released weights"
    elif info["step"] is not None:
        what = f"weights after {info['step']} iterations"
    else:
        what = "weights"
    return loaded.state_dict(), f"{what} from {path}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_cfg, cfg = parse_args(argv)
    rank, world, device = _setup_distributed(cfg.device)
    try:
        return _train(model_cfg, cfg, rank, world, device)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(
    model_cfg: IRNConfig | IRNColorConfig,
    cfg: TrainConfig,
    rank: int,
    world: int,
    device: torch.device,
) -> dict[str, Any]:
    main_proc = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    color = cfg.task == "color"
    # IRN-Color keeps the resolution: patches at scale 1 (their "lr" entry is not used).
    scale = 1 if color else model_cfg.scale
    title = "IRN-Color" if color else f"IRN x{scale}"
    # Validation score for best.pt: colour restoration PSNR-RGB, or the HR' PSNR-Y.
    best_key = "psnr_rgb" if color else "psnr_y"
    out_dir = Path(cfg.out or ("runs/irn_color" if color else f"runs/irn_x{scale}"))
    if cfg.lambda_guide is not None:
        lambda_guide = cfg.lambda_guide
    else:
        lambda_guide = COLOR_LAMBDA_GUIDE if color else float(scale**2)

    # Data first: a missing folder or unreadable image fails before any work.
    train_items, val_items, note = _load_data(cfg, scale)
    _say(note)
    dataset = PatchDataset(train_items, cfg.patch_size, scale, seed=cfg.seed)
    if color:
        val_pairs = [{"name": item.name, "hr": item.load()} for item in val_items]
    else:
        val_pairs = validation_pairs(val_items, scale) if val_items else []

    seed_everything(cfg.seed)
    model = (IRNColor if color else IRN)(model_cfg, memory_saving=cfg.memory_saving).to(device)
    set_dense_block_options(model, channels_last=cfg.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma
    )
    scaler = make_grad_scaler(device, cfg.amp)
    # The same generators on every rank: each draws for the whole global batch and keeps its
    # rows (sample_z), so N processes reproduce the single-process run.
    z_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    jpeg_gen = np.random.default_rng([cfg.seed, 3, 0])  # as rank 0 of earlier versions
    guard = NonFiniteGuard(cfg.max_nonfinite)
    config_dict = {**config_to_dict(cfg), "model": config_to_dict(model_cfg)}

    step, best = 0, -math.inf
    resume, ckpt = _load_resume(cfg, out_dir, world, main_proc)
    if resume is not None:
        stored_task = ckpt["config"].get("task", "rescale")
        if stored_task != cfg.task:
            raise SystemExit(
                f"--resume {resume}: the checkpoint was trained with --task {stored_task}, the "
                f"flags say --task {cfg.task}; pass the same task"
            )
        stored = config_from_dict(type(model_cfg), ckpt["config"]["model"])
        if stored != model_cfg:
            raise SystemExit(
                f"--resume {resume}: the checkpoint's model {stored} differs from the flags' "
                f"{model_cfg}; pass the same model flags"
            )
        step = restore_checkpoint(
            ckpt, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler
        )
        extra = ckpt.get("extra") or {}
        best = float(extra.get(f"best_{best_key}", -math.inf))
        if "z_gen" in extra:
            z_gen.set_state(extra["z_gen"].cpu() if device.type == "cpu" else extra["z_gen"])
        if "jpeg_gen" in extra:
            jpeg_gen.bit_generator.state = _unpack_np_state(extra["jpeg_gen"])
        guard.load_state_dict(extra.get("guard", {}))
        guard.note_checkpoint(resume)
        _say(f"Resumed from {resume} at iteration {step}.")
        if cfg.init_weights:
            _say(f"--init-weights {cfg.init_weights}: not used, the resumed checkpoint has them.")
    elif cfg.init_weights:
        state, what = _on_rank0(
            lambda: read_init_weights(cfg.init_weights, model_cfg), world, main_proc
        )
        model.load_state_dict(state)
        _say(f"Fine-tuning {what}; optimiser, learning-rate schedule and iterations start anew.")

    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)
    sampler = StepSampler(cfg.batch_size, step, cfg.iters, rank=rank, world_size=world)
    batch_offset = rank * sampler.local_batch
    micro = cfg.micro_batch or sampler.local_batch
    if sampler.local_batch % micro:
        raise SystemExit(
            f"--micro-batch {micro} must divide the per-process batch {sampler.local_batch} "
            f"(--batch-size {cfg.batch_size} over {world} processes)"
        )
    loader = make_loader(dataset, sampler, workers, device.type == "cuda", cfg.seed)

    tb = TensorBoardLogger(cfg.logdir or out_dir / "tb", enabled=cfg.tensorboard and main_proc)
    tb.text("config", config_to_text(cfg) + "\n\n" + config_to_text(model_cfg), step)
    # No bicubic baseline for IRN-Color (its validation reports the no-colour baseline).
    bicubic = {} if color else mean_metrics([bicubic_baseline(p["hr"], scale) for p in val_pairs])
    if bicubic:
        tb.scalars({k: v for k, v in bicubic.items()}, step, prefix="val_bicubic/")
        _say(
            f"Bicubic baseline on {len(val_pairs)} validation images: "
            f"PSNR-Y {bicubic['psnr_y']:.2f} dB, SSIM-Y {bicubic['ssim_y']:.4f}"
        )
    _say(
        f"{title}: {sum(p.numel() for p in model.parameters()):,} parameters; device "
        f"{device}{' with AMP' if cfg.amp else ''}"
        f"{', memory-saving backprop' if cfg.memory_saving else ''}; {world} process(es); "
        f"batch {cfg.batch_size}"
        f"{f' in chunks of {micro}' if micro < sampler.local_batch else ''}, "
        f"patch {cfg.patch_size}; iterations {step} -> {cfg.iters}; output {out_dir}"
    )

    def save(path: Path, kind: str) -> None:
        if not main_proc:
            return
        extra = {
            f"best_{best_key}": best,
            "z_gen": z_gen.get_state(),
            "jpeg_gen": _pack_np_state(jpeg_gen.bit_generator.state),
            "guard": guard.state_dict(),
            "kind": kind,
        }
        state = make_checkpoint(
            model=model,
            config=config_dict,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            step=step,
            extra=extra,
        )
        save_checkpoint(path, state)
        if kind != "best":
            guard.note_checkpoint(path)

    history: list[dict[str, float]] = []
    val_history: list[dict[str, float]] = []

    def run_validation() -> None:
        nonlocal best
        if not val_pairs or not main_proc:
            return
        if color:
            run_color_validation()
            return
        metrics = validate(model, val_pairs, cfg, device, cfg.amp)
        metrics["step"] = step
        val_history.append(metrics)
        tb.scalars({k: v for k, v in metrics.items() if k != "step"}, step, prefix="val/")
        for name, img in preview_images(model, val_pairs[0], scale, device, cfg.amp).items():
            tb.image(f"val_images/{name}", img, step, dataformats="HWC")
        gain = metrics["psnr_y"] - bicubic.get("psnr_y", float("nan"))
        progress.write(
            f"[val {step}] PSNR-Y {metrics['psnr_y']:.2f} dB SSIM-Y {metrics['ssim_y']:.4f} | "
            f"RGB {metrics['psnr_rgb']:.2f} dB | LR' PSNR-Y {metrics['lr_psnr_y']:.2f} dB | "
            f"vs bicubic {gain:+.2f} dB"
        )
        if metrics["psnr_y"] > best:
            best = metrics["psnr_y"]
            save(out_dir / BEST_NAME, "best")

    def run_color_validation() -> None:
        """``--task color``: gray' vs the luminance reference, colour restored from gray'."""
        nonlocal best
        metrics = validate_color(model, val_pairs, cfg, device, cfg.amp)
        metrics["step"] = step
        val_history.append(metrics)
        tb.scalars({k: v for k, v in metrics.items() if k != "step"}, step, prefix="val/")
        preview = preview_color(model, val_pairs[0]["hr"], device, cfg.amp)
        for name, img in preview.items():
            tb.image(f"val_images/{name}", img, step, dataformats="HWC")
        progress.write(
            f"[val {step}] gray' vs luma PSNR {metrics['gray_psnr']:.2f} dB SSIM "
            f"{metrics['gray_ssim']:.4f} | colour PSNR-RGB {metrics['psnr_rgb']:.2f} dB SSIM "
            f"{metrics['ssim_rgb']:.4f} (z=0: {metrics['psnr_rgb_z0']:.2f} dB) | no colour "
            f"{metrics['nocolor_psnr_rgb']:.2f} dB"
        )
        if metrics[best_key] > best:
            best = metrics[best_key]
            save(out_dir / BEST_NAME, "best")

    progress = ProgressLogger(
        cfg.iters, initial=step, desc=title, log_every=cfg.log_every, enabled=main_proc
    )
    model.train()
    t_last, steps_since = time.perf_counter(), 0
    interrupted = False
    try:
        with GracefulInterrupt() as stop:
            data_iter = iter(loader)
            while step < cfg.iters:
                if _all_true(stop.requested, world, device):
                    interrupted = True
                    break
                batch = next(data_iter)
                hr = batch["hr"].to(device, non_blocking=True)
                lr_ref = batch["lr"].to(device, non_blocking=True)
                w_guide, w_recon = loss_weights(
                    step, lambda_guide, cfg.lambda_recon, cfg.loss_flip_period, cfg.loss_flip_scale
                )

                optimizer.zero_grad(set_to_none=True)
                if micro < hr.shape[0]:
                    initialize_actnorms(model, hr, device, cfg.amp)
                chunk_losses = functools.partial(
                    batch_losses, ddp_model, hr, lr_ref, cfg, w_guide, w_recon, z_gen, jpeg_gen
                )
                local_total, reported = accumulate_chunks(
                    chunk_losses,
                    hr.shape[0],
                    micro,
                    batch_offset,
                    lambda total: scaler.scale(total).backward(),
                    ddp_model if world > 1 else None,
                    z_gen,
                    jpeg_gen,
                )
                reported = _global_losses(reported, world)
                if not guard.check(reported["total"], step=step):
                    tb.scalar("train/skipped_nonfinite", 1.0, step)
                    progress.write(f"[step {step}] non-finite loss; step skipped")
                    step += 1
                    scheduler.step()
                    progress.update(1)
                    continue
                grad_norm = backward_and_step(local_total, ddp_model, optimizer, scaler, cfg)
                scheduler.step()
                step += 1
                steps_since += 1
                record = {k: float(v) for k, v in reported.items()}
                record["grad_norm"] = float(grad_norm)
                history.append(record)
                progress.update(1)
                progress.set_postfix(loss=record["total"], guide=record["guide"])
                if step % cfg.log_every == 0 or step == cfg.iters:
                    now = time.perf_counter()
                    tb.scalars(
                        {f"loss_{k}": v for k, v in record.items() if k != "grad_norm"},
                        step,
                        prefix="train/",
                    )
                    tb.scalar("train/grad_norm", record["grad_norm"], step)
                    tb.scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                    if cfg.loss_flip_period is not None:
                        tb.scalar("train/lambda_guide", w_guide, step)
                        tb.scalar("train/lambda_recon", w_recon, step)
                    tb.scalar("train/iters_per_s", steps_since / max(now - t_last, 1e-9), step)
                    t_last, steps_since = now, 0
                if step % cfg.val_every == 0 or step == cfg.iters:
                    run_validation()
                if step % cfg.save_every == 0:
                    save(checkpoint_path(out_dir, step), "periodic")
                    if main_proc:
                        prune_checkpoints(out_dir, cfg.keep_checkpoints)
    except TrainingDiverged as err:
        progress.close()
        tb.close()
        raise SystemExit(f"Training stopped: {err}") from None
    progress.close()
    save(out_dir / LAST_NAME, "interrupted" if interrupted else "last")
    tb.flush()
    tb.close()
    if interrupted:
        _say(
            f"Interrupted at iteration {step}; saved {out_dir / LAST_NAME}. "
            f"Continue with: --resume auto --out {out_dir}"
        )
    elif val_history and color:
        last = val_history[-1]
        _say(
            f"Validation after {step} iterations: gray' vs luma PSNR {last['gray_psnr']:.2f} dB; "
            f"colour PSNR-RGB {last['psnr_rgb']:.2f} dB (z=0: {last['psnr_rgb_z0']:.2f} dB) vs "
            f"no colour {last['nocolor_psnr_rgb']:.2f} dB; best {best:.2f} dB; checkpoints in "
            f"{out_dir}"
        )
    elif val_history:
        last = val_history[-1]
        if cfg.data is None and last["psnr_y"] < bicubic["psnr_y"]:
            _say(
                "IRN is still below bicubic after this short run; on the sample photos it "
                "reaches bicubic after about 1000 iterations at --batch-size 8 --patch-size 64 "
                "(the training curve in README.md)."
            )
        _say(
            f"Validation PSNR-Y after {step} iterations: IRN {last['psnr_y']:.2f} dB "
            f"(SSIM-Y {last['ssim_y']:.4f}) vs bicubic {bicubic['psnr_y']:.2f} dB "
            f"(SSIM-Y {bicubic['ssim_y']:.4f}); best {best:.2f} dB; checkpoints in {out_dir}"
        )
    return {
        "step": step,
        "interrupted": interrupted,
        "history": history,
        "val": val_history,
        "bicubic": bicubic,
        "out": str(out_dir),
        "rank": rank,
        "world_size": world,
        "model": model,
    }


def _pack_np_state(state: dict) -> dict:
    """numpy bit-generator state (PCG64: big ints) as strings, loadable with weights_only."""
    inner = state["state"]
    return {
        "bit_generator": state["bit_generator"],
        "state": str(inner["state"]),
        "inc": str(inner["inc"]),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def _unpack_np_state(packed: dict) -> dict:
    return {
        "bit_generator": packed["bit_generator"],
        "state": {"state": int(packed["state"]), "inc": int(packed["inc"])},
        "has_uint32": int(packed["has_uint32"]),
        "uinteger": int(packed["uinteger"]),
    }


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ValueError) as err:
        print(f"train_irn.py: error: {err}", file=sys.stderr)
        sys.exit(2)
