"""Train an Invertible Rescaling Network (IRN) with the authors' recipe (SPEC sec. 3).

Quick run on the photos bundled with scikit-image (no download; a few minutes on a laptop CPU)::

    python train_irn.py --iters 200 --batch-size 4 --patch-size 64 --val-every 100

The paper's x4 training on DIV2K (500k iterations at batch 16; a GPU and AMP strongly advised)::

    python train_irn.py --scale 4 --data DIV2K/DIV2K_train_HR --val-data DIV2K/DIV2K_valid_HR \\
        --amp --out runs/irn_x4
    tensorboard --logdir runs

Several GPUs, or several CPU processes (DDP; ``--batch-size`` is the global batch, split
evenly; only rank 0 logs and writes checkpoints)::

    torchrun --standalone --nproc_per_node=4 train_irn.py --data DIV2K/DIV2K_train_HR --amp
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST:29500 train_irn.py ...            # on every node, its node_rank

Lower memory: ``--memory-saving`` recomputes activations from the outputs in the backward pass
(1.2-1.3x the step time measured on CPU; memory independent of depth).

Interrupt with Ctrl-C (or SIGTERM): the last state is saved; continue with ``--resume auto``.
Every flag is listed by ``python train_irn.py --help``; defaults are the paper's.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

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
from irn.data import (
    PatchDataset,
    StepSampler,
    describe,
    load_folder,
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
        metadata={"help": "Weight of the LR guidance loss; none = scale^2 (the authors')."},
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
        default=None, metadata={"help": "Output folder; none = runs/irn_x<scale>."}
    )
    logdir: str | None = field(
        default=None, metadata={"help": "TensorBoard folder; none = <out>/tb."}
    )
    tensorboard: bool = field(default=True, metadata={"help": "Write TensorBoard logs."})
    resume: str | None = field(
        default=None,
        metadata={"help": "Checkpoint to resume from, or 'auto' for the latest in --out."},
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
            "help": "Keep decoded training images in memory: on, off, or auto (on when they "
            "take under 2 GiB)."
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
    add_dataclass_arguments(parser, TrainConfig)
    return parser


def parse_args(argv: list[str] | None) -> tuple[IRNConfig, TrainConfig]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model_cfg = dataclass_from_args(IRNConfig, args)
        train_cfg = dataclass_from_args(TrainConfig, args)
    except ConfigError as err:
        parser.error(str(err))
    if model_cfg.in_channels != 3:
        parser.error(
            f"--in-channels {model_cfg.in_channels}: train_irn.py trains on RGB images; only 3 "
            "is supported"
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
) -> dict[str, torch.Tensor]:
    """The IRN objective of one batch (IRN eq. 4-9; SPEC sec. 3) and the dissertation's options.

    ``(y, z) = f(x)``; ``L_guide`` on ``y`` (unquantised unless --quantize-guide-loss);
    ``y_q = Quant(y)`` (STE); ``x' = f^-1(y_q, z')`` with ``z' ~ N(0, gaussian_scale^2)``;
    ``L_recon`` on ``x'``; ``L_distr = mean_b sum z^2``.

    Under DDP, ``hr`` holds rows ``batch_offset ...`` of a ``global_batch``: the random draws
    (``z'``, JPEG qualities) are made for the global batch and sliced (:func:`sample_z`), so the
    result does not depend on the number of processes.
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
    total = lambda_guide * l_guide + cfg.lambda_recon * l_recon + cfg.lambda_distr * l_distr
    return {"total": total, "guide": l_guide, "recon": l_recon, "distr": l_distr}


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
        budget = 2 * 2**30
        from irn.data import memory_bytes

        if cfg.cache == "on" or (cfg.cache == "auto" and memory_bytes(items) < budget):
            items = load_folder(cfg.data, "--data", decode=True)
        train = items
        note = f"Training on {cfg.data}: {describe(items)}."
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


def _load_resume(
    cfg: TrainConfig, out_dir: Path, world: int, main_proc: bool
) -> tuple[Path | None, dict | None]:
    """Find and read the checkpoint to resume on rank 0 and broadcast it to every rank (nodes
    need not share a file system); an error is raised on every rank alike."""
    result: list[Any] = [None, None, None]
    if main_proc or world <= 1:
        try:
            resume = resolve_resume(cfg.resume, out_dir)
            if cfg.resume and resume is None:
                raise SystemExit(f"--resume auto: no checkpoint found in {out_dir}")
            result = [
                None if resume is None else str(resume),
                None if resume is None else load_checkpoint(resume),
                None,
            ]
        except (SystemExit, CheckpointError) as err:
            result = [None, None, (type(err).__name__, str(err))]
    if world > 1:
        torch.distributed.broadcast_object_list(result, src=0)
    path, ckpt, error = result
    if error is not None:
        kind, message = error
        raise (SystemExit(message) if kind == "SystemExit" else CheckpointError(message))
    return (None if path is None else Path(path)), ckpt


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_cfg, cfg = parse_args(argv)
    rank, world, device = _setup_distributed(cfg.device)
    try:
        return _train(model_cfg, cfg, rank, world, device)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(
    model_cfg: IRNConfig, cfg: TrainConfig, rank: int, world: int, device: torch.device
) -> dict[str, Any]:
    main_proc = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    scale = model_cfg.scale
    out_dir = Path(cfg.out or f"runs/irn_x{scale}")
    lambda_guide = float(scale**2) if cfg.lambda_guide is None else cfg.lambda_guide

    # Data first: a missing folder or unreadable image fails before any work.
    train_items, val_items, note = _load_data(cfg, scale)
    _say(note)
    dataset = PatchDataset(train_items, cfg.patch_size, scale, seed=cfg.seed)
    val_pairs = validation_pairs(val_items, scale) if val_items else []

    seed_everything(cfg.seed)
    model = IRN(model_cfg, memory_saving=cfg.memory_saving).to(device)
    set_dense_block_options(model, channels_last=cfg.channels_last)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
    )
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
        stored = config_from_dict(IRNConfig, ckpt["config"]["model"])
        if stored != model_cfg:
            raise SystemExit(
                f"--resume {resume}: the checkpoint's model {stored} differs from the flags' "
                f"{model_cfg}; pass the same model flags"
            )
        step = restore_checkpoint(
            ckpt, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler
        )
        extra = ckpt.get("extra") or {}
        best = float(extra.get("best_psnr_y", -math.inf))
        if "z_gen" in extra:
            z_gen.set_state(extra["z_gen"].cpu() if device.type == "cpu" else extra["z_gen"])
        if "jpeg_gen" in extra:
            jpeg_gen.bit_generator.state = _unpack_np_state(extra["jpeg_gen"])
        guard.load_state_dict(extra.get("guard", {}))
        guard.note_checkpoint(resume)
        _say(f"Resumed from {resume} at iteration {step}.")

    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)
    sampler = StepSampler(cfg.batch_size, step, cfg.iters, rank=rank, world_size=world)
    batch_offset = rank * sampler.local_batch
    loader = DataLoader(
        dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )

    tb = TensorBoardLogger(cfg.logdir or out_dir / "tb", enabled=cfg.tensorboard and main_proc)
    tb.text("config", config_to_text(cfg) + "\n\n" + config_to_text(model_cfg), step)
    bicubic = mean_metrics([bicubic_baseline(p["hr"], scale) for p in val_pairs])
    if bicubic:
        tb.scalars({k: v for k, v in bicubic.items()}, step, prefix="val_bicubic/")
        _say(
            f"Bicubic baseline on {len(val_pairs)} validation images: "
            f"PSNR-Y {bicubic['psnr_y']:.2f} dB, SSIM-Y {bicubic['ssim_y']:.4f}"
        )
    _say(
        f"IRN x{scale}: {sum(p.numel() for p in model.parameters()):,} parameters; device "
        f"{device}{' with AMP' if cfg.amp else ''}"
        f"{', memory-saving backprop' if cfg.memory_saving else ''}; {world} process(es); "
        f"batch {cfg.batch_size}, "
        f"patch {cfg.patch_size}; iterations {step} -> {cfg.iters}; output {out_dir}"
    )

    def save(path: Path, kind: str) -> None:
        if not main_proc:
            return
        extra = {
            "best_psnr_y": best,
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

    progress = ProgressLogger(
        cfg.iters, initial=step, desc=f"IRN x{scale}", log_every=cfg.log_every, enabled=main_proc
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
                losses = compute_losses(
                    ddp_model,
                    hr,
                    lr_ref,
                    cfg,
                    lambda_guide,
                    z_gen,
                    cfg.amp,
                    jpeg_gen,
                    global_batch=cfg.batch_size,
                    batch_offset=batch_offset,
                )
                optimizer.zero_grad(set_to_none=True)
                reported = _global_losses(losses, world)
                if not guard.check(reported["total"], step=step):
                    tb.scalar("train/skipped_nonfinite", 1.0, step)
                    progress.write(f"[step {step}] non-finite loss; step skipped")
                    step += 1
                    scheduler.step()
                    progress.update(1)
                    continue
                grad_norm = backward_and_step(losses["total"], ddp_model, optimizer, scaler, cfg)
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
    elif val_history:
        last = val_history[-1]
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
