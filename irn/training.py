"""Training IRN and IRN-Color: the shared settings, the state of a run and one training step.

The entry scripts ``train_irn.py`` (rescaling) and ``train_irn_color.py`` (decolourisation) each
describe their job as a :class:`Task` (the objective of a batch, the latent shape, validation
and its messages) and call :func:`train`, which reads as the loop it runs::

    run = build_run(task, model_cfg, cfg, rank, world, device)    # data, model, optimiser, ...
    restore_or_init(run)                                           # --resume / --init-weights
    run_steps(run, batches, train_step, after_step)                # common/training.py
    save_run(run, out_dir / "last.pt", "last")

One step (:func:`train_step`): the random draws of the whole global batch (``z'`` and the JPEG
qualities, :class:`StepNoise`), then the objective of this process's rows, in ``--micro-batch``
chunks whose gradients add up (:func:`accumulate_chunks`), then one clipped optimiser step. The
objective is IRN's (Xiao et al., ECCV 2020, sec. 3.3, eq. 6-9; see docs/method.md, "Training
objective").
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from common.actnorm import ActNorm
from common.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    checkpoint_path,
    load_checkpoint,
    pack_np_state,
    prune_checkpoints,
    resolve_resume,
    unpack_np_state,
)
from common.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    config_to_text,
    configclass,
)
from common.outputs import check_run_outputs
from common.resume import nothing_to_do, reconcile_resume_flags
from common.runtime import (
    NonFiniteGuard,
    ProgressLogger,
    TensorBoardLogger,
    TrainingDiverged,
    amp_setting,
    autocast_context,
    describe_amp,
    make_grad_scaler,
    scaler_step,
    seed_everything,
)
from common.subnets import set_dense_block_options
from common.training import (
    TrainState,
    interrupted_message,
    mean_over_processes,
    on_rank0,
    refuse_nonfinite_weights,
    restore_state,
    run_steps,
    save_state,
    setup_distributed,
    teardown_distributed,
)
from irn.checkpoints import read_init_weights
from irn.data import (
    ColorAugment,
    PatchDataset,
    SmoothPatches,
    StepSampler,
    describe,
    load_folder,
    make_loader,
    memory_bytes,
    sample_photos,
)
from irn.limits import usable_validation_images
from irn.losses import LOSS_KINDS
from irn.ood import training_reference

LossKind = Literal["l1", "l2", "charbonnier"]
assert set(LossKind.__args__) == set(LOSS_KINDS)  # type: ignore[attr-defined]


def _positive(cfg: Any, names: tuple[str, ...], strict: bool) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not (value > 0 and math.isfinite(value) if strict else value >= 1):
            want = "> 0 and finite" if strict else ">= 1"
            raise ConfigError(f"must be {want}, got {value}", field=name)


@configclass
class TrainConfig:
    """Training settings shared by IRN and IRN-Color (the architecture is the model config)."""

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
    sample_set: Literal["broad", "classic"] = field(
        default="broad",
        metadata={
            "help": "Built-in photos used without --data: broad (the six scikit-image photos, "
            "its colour wheel and scikit-learn's flower; validation chelsea, stereo_motorcycle's "
            "right view and scikit-learn's china) or classic (the six photos; validation the "
            "first two)."
        },
    )
    color_augment: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata={
            "help": "Colour augmentation of the training patches (channel permutation, hue and "
            "saturation jitter, brightness; irn/data.py ColorAugment): auto = on for IRN "
            "rescaling on the built-in photos, off with --data (the paper's flips and "
            "rotations only) and for IRN-Color."
        },
    )
    smooth_patches: float = field(
        default=0.0,
        metadata={
            "help": "Share of training patches replaced by a smooth copy (area-downscaled by "
            "8, 16 or 32, bilinearly upscaled, rounded to 8 bits; irn/data.py SmoothPatches): "
            "teaches the network flat regions such as skies, which the built-in photos hardly "
            "hold. 0 = off (the paper)."
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
            "help": "Weight of the guidance loss; none = the task's (IRN: scale^2, the "
            "authors'; IRN-Color: 3)."
        },
    )
    lambda_recon: float = field(default=1.0, metadata={"help": "Weight of the reconstruction."})
    lambda_distr: float = field(
        default=1.0, metadata={"help": "Weight of the distribution-matching loss sum(z^2)."}
    )
    lambda_range: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the range loss: the LR output's distance outside [0, 1] "
            "(irn/losses.py range_loss), against the clipping of bright 8-bit LR'. 0 = off "
            "(the paper)."
        },
    )
    guide_loss: LossKind = field(default="l2", metadata={"help": "Guidance loss (authors: l2)."})
    recon_loss: LossKind = field(
        default="charbonnier",
        metadata={"help": "Reconstruction loss (authors: charbonnier, their 'l1')."},
    )
    gaussian_scale: float = field(
        default=1.0, metadata={"help": "Standard deviation of the z sampled for the inverse."}
    )
    zero_sample: bool = field(
        default=False, metadata={"help": "Run the inverse with z = 0 in training (no sampling)."}
    )
    quantize_guide_loss: bool = field(
        default=False, metadata={"help": "Compute the guidance loss on the quantised output."}
    )
    quantize_recon_loss: bool = field(
        default=False, metadata={"help": "Compute the reconstruction loss on the quantised x'."}
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
        default=1.0, metadata={"help": "Factor f of the loss flip schedule (1 = no change)."}
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
        metadata={"help": "Output folder; none = runs/irn_x<scale> (IRN-Color: runs/irn_color)."},
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
            "script, or for IRN the authors' released .pth) with a fresh optimiser, schedule "
            "and iteration count, e.g. the authors' x4 model on your own images. The model "
            "flags must describe the checkpoint's architecture (--init aside: the file's "
            "weights replace the fresh ones). Not used when the run resumes."
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
            "help": "Mixed precision (autocast, dtype from --amp-dtype); the coupling "
            "arithmetic, log-determinants, quantisation and losses stay float32."
        },
    )
    amp_dtype: Literal["auto", "bf16", "fp16"] = field(
        default="auto",
        metadata={
            "help": "Autocast dtype under --amp: auto = fp16 with a gradient scaler on CUDA, "
            "bf16 (no scaler) on the CPU; fp16 = fp16 with a gradient scaler on any device "
            "(on the CPU: the CUDA code path); bf16 = bf16, no scaler."
        },
    )
    amp_init_scale: float | None = field(
        default=None,
        metadata={
            "help": "First loss scale of the fp16 gradient scaler; none = torch's 65536. "
            "A step whose scaled gradients overflow is skipped and the scale halved "
            "(logged as train/scaler_skipped, never counted by --max-nonfinite)."
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
            "grows with depth; a slower step (docs/performance.md)."
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
        _positive(self, ("iters", "batch_size", "patch_size", "val_every", "save_every"), False)
        _positive(self, ("log_every", "keep_checkpoints", "max_nonfinite", "val_draws"), False)
        _positive(self, ("lr", "lr_gamma", "loss_flip_scale"), True)
        if self.gaussian_scale < 0:
            raise ConfigError("must be >= 0", field="gaussian_scale")
        if not (self.lambda_range >= 0 and math.isfinite(self.lambda_range)):
            raise ConfigError(f"must be >= 0, got {self.lambda_range}", field="lambda_range")
        if not 0.0 <= self.smooth_patches < 1.0:
            raise ConfigError(
                f"must be in [0, 1), got {self.smooth_patches}", field="smooth_patches"
            )
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
        if self.workers is not None and self.workers < 0:
            raise ConfigError("must be >= 0", field="workers")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"must be >= 1 (or omitted), got {self.threads}", field="threads")
        if self.amp_init_scale is not None and not self.amp_init_scale > 0:
            raise ConfigError(f"must be > 0, got {self.amp_init_scale}", field="amp_init_scale")


# ---------------------------------------------------------------------------------------------
# The job: what differs between IRN and IRN-Color
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """What a training script contributes: its name, the model, the objective of a batch and
    validation. Every callable is a module-level function of the script.

    ``losses(model, hr, lr_ref, cfg, noise, lambda_guide, lambda_recon, amp)`` returns the
    losses of a batch (``total``, ``guide``, ``recon``, ``distr``); ``z_shape(model, hr_shape)``
    the shape of ``z`` for an HR batch shape; ``validate(model, pairs, cfg, device, amp)`` the
    mean validation metrics; ``preview(model, pair, cfg, device, amp)`` named images for
    TensorBoard; ``val_line(metrics, baseline)`` the validation line; ``summary(run)`` the
    closing lines; ``validation_pairs(images, scale)`` the validation data;
    ``baseline(pairs, scale)`` the baseline's metrics on them (``None``: no baseline);
    ``val_method(config, legacy)`` how validation measures the score, in words, for a stored
    config mapping (``legacy``: as a checkpoint that did not record it was measured), kept
    with the best score so that a resume measured differently restarts it (``None``: one way).
    """

    name: str
    title: str
    best_key: str
    default_out: str
    lambda_guide: float
    scale: int
    model_class: type
    losses: Callable[..., dict[str, torch.Tensor]]
    z_shape: Callable[[torch.nn.Module, tuple[int, ...]], tuple[int, ...]]
    validation_pairs: Callable[[list, int], list[dict]]
    validate: Callable[..., dict[str, float]]
    preview: Callable[..., dict[str, np.ndarray]]
    val_line: Callable[[dict, dict], str]
    summary: Callable[[Any], list[str]]
    baseline: Callable[[list[dict], int], dict[str, float]] | None = None
    val_method: Callable[[Mapping[str, Any], bool], str] | None = None


@dataclass
class StepNoise:
    """The random draws of one training step for the whole global batch: ``z'`` for the
    inverse pass (``None``: ``z' = 0``, ``--zero-sample``) and the JPEG quality of each image
    (``None`` without ``--jpeg-quality-range``). Drawn once per step and sliced per process and
    micro-batch (:meth:`rows`), so neither the number of processes nor the chunking changes
    the draws."""

    z: torch.Tensor | None
    qualities: list[int] | None = None

    def rows(self, rows: slice) -> StepNoise:
        z = None if self.z is None else self.z[rows]
        q = None if self.qualities is None else self.qualities[rows]
        return StepNoise(z, q)


def draw_noise(
    z_shape: tuple[int, ...],
    cfg: Any,
    z_gen: torch.Generator,
    jpeg_gen: np.random.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> StepNoise:
    """``z' ~ N(0, gaussian_scale^2 I)`` of shape ``z_shape`` (the global batch) and, with a
    ``jpeg_quality_range`` in ``cfg``, one quality per image uniform in ``[LO, HI]``."""
    z = None
    if not cfg.zero_sample:
        z = torch.randn(z_shape, generator=z_gen, device=device, dtype=dtype)
        z = z * cfg.gaussian_scale
    quality_range = getattr(cfg, "jpeg_quality_range", None)
    qualities = None
    if quality_range is not None:
        assert jpeg_gen is not None, "a JPEG quality range needs its generator"
        lo, hi = quality_range
        qualities = [int(jpeg_gen.integers(lo, hi + 1)) for _ in range(z_shape[0])]
    return StepNoise(z, qualities)


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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def backward_and_step(
    total: torch.Tensor,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: Any,
) -> tuple[torch.Tensor, bool]:
    """Backward of ``total``, optional value clipping, norm clipping at ``cfg.grad_clip``, the
    optimiser step (through the AMP ``scaler``, which unscales the gradients before the
    clipping); returns the gradient norm before clipping and whether the scaler skipped the
    step (fp16 gradients overflowed: weights untouched, scale lowered)."""
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    params = list(unwrap(model).parameters())
    if cfg.clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    skipped = scaler_step(scaler, optimizer)
    return grad_norm, skipped


def build_optimizer(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """The authors' Adam (L2 weight decay added to the gradient), with PyTorch's fused kernel
    when every parameter is a CPU or CUDA floating-point tensor (one kernel per parameter
    instead of about ten elementwise passes; the same update up to float32 round-off; the
    fused CPU kernel assumes a gradient laid out as its parameter, which autograd's gradient
    accumulation guarantees)."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(
        params,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )


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


# ---------------------------------------------------------------------------------------------
# The state of a run and one training step
# ---------------------------------------------------------------------------------------------


@dataclass
class IRNRun(TrainState):
    """A training run of IRN or IRN-Color: :class:`~common.training.TrainState` plus the
    run's settings, its generators (``z'``, JPEG qualities), processes, data and logs."""

    task: Task | None = None
    cfg: Any = None
    amp: torch.dtype | None = None  # the autocast dtype (None: float32), from amp_setting
    scaler_skipped: int = 0  # steps the fp16 gradient scaler skipped (not non-finite losses)
    model_cfg: Any = None
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world: int = 1
    micro: int = 1
    lambda_guide: float = 1.0
    out_dir: Path = Path("runs")
    z_gen: torch.Generator | None = None
    jpeg_gen: np.random.Generator | None = None
    train_items: list = field(default_factory=list)
    val_pairs: list[dict] = field(default_factory=list)
    baseline: dict[str, float] = field(default_factory=dict)
    tb: TensorBoardLogger | None = None
    progress: ProgressLogger | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)
    step_ok: bool = True
    t_last: float = 0.0  # when the iterations-per-second clock last started
    forward_stats: dict = field(default_factory=dict)  # irn/ood.py, stored by the final save
    steps_since: int = 0  # optimiser steps since then

    @property
    def main_process(self) -> bool:
        return self.rank == 0

    def config_dict(self) -> dict[str, Any]:
        """The configuration stored in every checkpoint (``task`` names the script's job)."""
        return {
            **config_to_dict(self.cfg),
            "task": self.task.name,
            "model": config_to_dict(self.model_cfg),
        }


def accumulate_chunks(
    run: IRNRun, hr: torch.Tensor, lr_ref: torch.Tensor, noise: StepNoise, weights: tuple
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective of this process's rows of the global batch, in chunks of ``run.micro``
    (``--micro-batch``) whose gradients add up.

    Every chunk but the last is back-propagated here with weight ``micro / rows`` (under DDP
    without the gradient all-reduce, ``no_sync``); the weighted total of the last chunk is
    returned for :func:`backward_and_step` (which all-reduces), with the batch's losses
    (detached weighted sums: the means over the batch) for the non-finite check and the logs.
    Each chunk takes its rows of the step's draws, so the result is the unchunked one up to
    round-off; with one chunk it is exactly the unchunked computation.
    """
    rows, micro = hr.shape[0], run.micro
    chunks, weight = rows // micro, micro / rows
    offset = run.rank * rows
    reported: dict[str, torch.Tensor] = {}
    total = None
    for c in range(chunks):
        local = slice(c * micro, (c + 1) * micro)
        chunk_noise = noise.rows(slice(offset + c * micro, offset + (c + 1) * micro))
        losses = run.task.losses(
            run.module, hr[local], lr_ref[local], run.cfg, chunk_noise, *weights, run.amp
        )
        if chunks == 1:
            return losses["total"], {k: v.detach() for k, v in losses.items()}
        for k, v in losses.items():
            part = v.detach() * weight
            reported[k] = part if k not in reported else reported[k] + part
        total = losses["total"] * weight
        if c < chunks - 1:
            sync = run.net.no_sync() if run.world > 1 else contextlib.nullcontext()
            with sync:
                run.scaler.scale(total).backward()
    assert total is not None
    return total, reported


def train_step(run: IRNRun, batch: dict[str, torch.Tensor]) -> None:
    """One iteration: draws, objective (chunked), non-finite check, clipped optimiser step,
    schedule step and the training logs. A non-finite loss skips the update (the iteration
    still counts) and sets ``run.step_ok`` false."""
    cfg = run.cfg
    hr = batch["hr"].to(run.device, non_blocking=True)
    lr_ref = batch["lr"].to(run.device, non_blocking=True)
    weights = loss_weights(
        run.step, run.lambda_guide, cfg.lambda_recon, cfg.loss_flip_period, cfg.loss_flip_scale
    )
    global_shape = (cfg.batch_size, *hr.shape[1:])
    noise = draw_noise(
        run.task.z_shape(run.model, global_shape), cfg, run.z_gen, run.jpeg_gen, run.device
    )
    run.optimizer.zero_grad(set_to_none=True)
    if run.micro < hr.shape[0]:
        initialize_actnorms(run.model, hr, run.device, run.amp)
    local_total, reported = accumulate_chunks(run, hr, lr_ref, noise, weights)
    reported = mean_over_processes(reported, run.world)
    run.step_ok = run.guard.check(reported["total"], step=run.step)
    if not run.step_ok:
        run.tb.scalar("train/skipped_nonfinite", 1.0, run.step)
        run.progress.write(f"[step {run.step}] non-finite loss; step skipped")
        run.step += 1
        run.scheduler.step()
        run.progress.update(1)
        return
    grad_norm, skipped = backward_and_step(local_total, run.module, run.optimizer, run.scaler, cfg)
    if skipped:
        note_scaler_skip(run)
    run.scheduler.step()
    run.step += 1
    record = {k: float(v) for k, v in reported.items()}
    record["grad_norm"] = float(grad_norm)
    record["scaler_skipped"] = float(skipped)
    run.history.append(record)
    run.progress.update(1)
    run.progress.set_postfix(loss=record["total"], guide=record["guide"])
    log_step(run, record, weights)


def note_scaler_skip(run: IRNRun) -> None:
    """A step the fp16 gradient scaler skipped (overflowing scaled gradients; the weights are
    untouched and the scale lowered): counted in the run and its checkpoints, logged at once
    as ``train/scaler_skipped``, and not a non-finite loss for ``--max-nonfinite``."""
    run.scaler_skipped += 1
    run.tb.scalar("train/scaler_skipped", 1.0, run.step)
    run.tb.scalar("train/loss_scale", run.scaler.get_scale(), run.step)
    if run.scaler_skipped <= 10 or run.scaler_skipped % 100 == 0:
        run.progress.write(
            f"[step {run.step}] fp16 gradients overflowed: the gradient scaler skipped the "
            f"step and lowered its scale to {run.scaler.get_scale():g} "
            f"({run.scaler_skipped} such step(s) so far)"
        )


def log_step(run: IRNRun, record: dict[str, float], weights: tuple[float, float]) -> None:
    """TensorBoard scalars every ``--log-every`` iterations and at the last."""
    cfg, tb = run.cfg, run.tb
    run.steps_since += 1
    if run.step % cfg.log_every and run.step != cfg.iters:
        return
    now = time.perf_counter()
    losses = {
        f"loss_{k}": v for k, v in record.items() if k not in ("grad_norm", "scaler_skipped")
    }
    tb.scalars(losses, run.step, prefix="train/")
    tb.scalar("train/grad_norm", record["grad_norm"], run.step)
    tb.scalar("train/lr", run.optimizer.param_groups[0]["lr"], run.step)
    if run.scaler.is_enabled():
        tb.scalar("train/loss_scale", run.scaler.get_scale(), run.step)
        tb.scalar("train/scaler_skipped_total", run.scaler_skipped, run.step)
    if cfg.loss_flip_period is not None:
        tb.scalar("train/lambda_guide", weights[0], run.step)
        tb.scalar("train/lambda_recon", weights[1], run.step)
    tb.scalar("train/iters_per_s", run.steps_since / max(now - run.t_last, 1e-9), run.step)
    run.t_last, run.steps_since = now, 0


def after_step(run: IRNRun) -> None:
    """Validation every ``--val-every`` iterations and at the last; a periodic checkpoint every
    ``--save-every`` (nothing after a skipped step)."""
    if not run.step_ok:
        return
    if run.step % run.cfg.val_every == 0 or run.step == run.cfg.iters:
        validate_and_log(run)
    if run.step % run.cfg.save_every == 0:
        save_run(run, checkpoint_path(run.out_dir, run.step), "periodic")
        if run.main_process:
            prune_checkpoints(run.out_dir, run.cfg.keep_checkpoints)


def validate_and_log(run: IRNRun) -> None:
    """Validation metrics, TensorBoard scalars and preview images, the validation line, and
    ``best.pt`` when the task's score improves (rank 0 only)."""
    if not run.val_pairs or not run.main_process:
        return
    task, amp = run.task, run.amp
    metrics = task.validate(run.model, run.val_pairs, run.cfg, run.device, amp)
    metrics["step"] = run.step
    run.val_history.append(metrics)
    run.tb.scalars({k: v for k, v in metrics.items() if k != "step"}, run.step, prefix="val/")
    for name, img in task.preview(run.model, run.val_pairs[0], run.cfg, run.device, amp).items():
        run.tb.image(f"val_images/{name}", img, run.step, dataformats="HWC")
    run.progress.write(f"[val {run.step}] " + task.val_line(metrics, run.baseline))
    if metrics[task.best_key] > run.best:
        run.best = metrics[task.best_key]
        save_run(run, run.out_dir / BEST_NAME, "best")


def save_run(run: IRNRun, path: Path, kind: str) -> None:
    """Checkpoint the run (rank 0): weights, optimiser, schedule, scaler, step, the best score,
    the generators and the guard. Only non-``best`` checkpoints become the guard's last good."""
    if not run.main_process:
        return
    extra = {
        f"best_{run.task.best_key}": run.best,
        "z_gen": run.z_gen.get_state(),
        "jpeg_gen": pack_np_state(run.jpeg_gen.bit_generator.state),
        "kind": kind,
        "scaler_skipped": run.scaler_skipped,
    }
    if run.forward_stats:
        extra["forward_stats"] = run.forward_stats
    if run.task.val_method is not None:
        extra["best_method"] = run.task.val_method(config_to_dict(run.cfg), False)
    save_state(path, run, run.config_dict(), extra, good=kind != "best")


# ---------------------------------------------------------------------------------------------
# Building, restoring and finishing a run
# ---------------------------------------------------------------------------------------------


def cache_budget() -> int:
    """Bytes ``--cache auto`` may use: a third of the physical memory, divided by the training
    processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; each holds its own copy)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: the former fixed 2 GiB
        total = 6 * 2**30
    return int(total / 3 / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def load_data(cfg: TrainConfig) -> tuple[list, list, str]:
    """``(training images, validation images, a sentence saying what they are)``; a missing
    folder or unreadable image fails here, before any work."""
    if cfg.data is None:
        train = sample_photos("train", cfg.sample_set)
        val_names = ", ".join(i.name for i in sample_photos("val", cfg.sample_set))
        note = (
            f"No --data given: training on the {len(train)} built-in photos of the "
            f"{cfg.sample_set!r} set ({', '.join(i.name for i in train)}); validating on "
            f"{val_names}."
        )
        val = (
            sample_photos("val", cfg.sample_set)
            if cfg.val_data is None
            else load_folder(cfg.val_data, "--val-data")
        )
        return train, val, note
    items = load_folder(cfg.data, "--data")
    need = memory_bytes(items)
    if cfg.cache == "on" or (cfg.cache == "auto" and need <= cache_budget()):
        items = load_folder(cfg.data, "--data", decode=True)
        where = f"decoded in memory ({need / 2**30:.2f} GiB)"
    else:
        where = f"decoded per patch from disk (--cache on keeps them: {need / 2**30:.2f} GiB)"
    note = f"Training on {cfg.data}: {describe(items)}; {where}."
    val = [] if cfg.val_data is None else load_folder(cfg.val_data, "--val-data")
    return items, val, note


def say(run: IRNRun, message: str) -> None:
    if run.main_process:
        print(message, flush=True)


def build_run(
    task: Task, model_cfg: Any, cfg: TrainConfig, rank: int, world: int, device: torch.device
) -> IRNRun:
    """Data, model, optimiser, schedule, scaler, generators and guard of a fresh run (its
    weights drawn from ``cfg.seed``), before any resume or fine-tuning."""
    amp = amp_setting(device, cfg.amp, cfg.amp_dtype)
    scaler = make_grad_scaler(device, amp, init_scale=cfg.amp_init_scale)
    if rank == 0:
        print(describe_amp(device, amp, scaler), flush=True)
    train_items, val_items, note = load_data(cfg)
    seed_everything(cfg.seed)
    model = task.model_class(model_cfg, memory_saving=cfg.memory_saving).to(device)
    set_dense_block_options(model, channels_last=cfg.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma
    )
    run = IRNRun(
        model=model,
        optimizer=optimizer,
        guard=NonFiniteGuard(cfg.max_nonfinite),
        scheduler=scheduler,
        scaler=scaler,
        amp=amp,
        task=task,
        cfg=cfg,
        model_cfg=model_cfg,
        device=device,
        rank=rank,
        world=world,
        lambda_guide=task.lambda_guide if cfg.lambda_guide is None else cfg.lambda_guide,
        out_dir=Path(cfg.out or task.default_out),
        # The same generators on every rank: each draws for the whole global batch and keeps
        # its rows (StepNoise.rows), so N processes reproduce the single-process run.
        z_gen=torch.Generator(device=device).manual_seed(cfg.seed),
        jpeg_gen=np.random.default_rng([cfg.seed, 3, 0]),
        train_items=train_items,
        val_pairs=[],
    )
    say(run, note)
    val_items = usable_validation_images(val_items, task.scale, run.main_process)
    run.val_pairs = task.validation_pairs(val_items, task.scale) if val_items else []
    return run


def _read_resume(cfg: TrainConfig, out_dir: Path) -> tuple[str | None, dict | None]:
    """The checkpoint ``--resume`` names (``auto``: the newest in ``out_dir``), read; refuses a
    fresh run over another run's checkpoints unless ``--overwrite``."""
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


def _resume_step(cfg: TrainConfig, out_dir: Path) -> tuple[str, int] | None:
    """``(checkpoint, its step)`` that ``--resume`` would continue from (its step read from a
    memory map, the tensors not loaded), or ``None`` for a fresh start."""
    path = resolve_resume(cfg.resume, out_dir) if cfg.resume else None
    if path is None:
        return None
    return str(path), int(load_checkpoint(path, required_keys=("step",), mmap=True)["step"])


def restore_run(run: IRNRun, path: Path, ckpt: dict) -> None:
    """Continue the run in ``ckpt``: refuses another task or model, then restores the state,
    the best score, the generators and the guard."""
    stored_task = ckpt["config"].get("task", "rescale")
    if stored_task != run.task.name:
        raise SystemExit(
            f"--resume {path}: the checkpoint is a {stored_task!r} run, this script trains "
            f"{run.task.name!r}; resume it with the script that wrote it"
        )
    stored = config_from_dict(type(run.model_cfg), ckpt["config"]["model"])
    if stored != run.model_cfg:
        diffs = [
            f"{name}: checkpoint {getattr(stored, name)!r}, flags {getattr(run.model_cfg, name)!r}"
            for name in run.model_cfg.__dataclass_fields__
            if getattr(stored, name) != getattr(run.model_cfg, name)
        ]
        raise SystemExit(
            f"--resume {path}: the checkpoint's model differs from the flags' "
            f"({'; '.join(diffs)}); pass the same model flags"
        )
    extra = restore_state(run, ckpt, path)
    run.cfg, lines = reconcile_resume_flags(run.cfg, ckpt["config"], str(path))
    for line in lines:
        say(run, line)
    run.best = float(extra.get(f"best_{run.task.best_key}", -math.inf))
    restart_best_if_measured_otherwise(run, extra, ckpt["config"], path)
    run.scaler_skipped = int(extra.get("scaler_skipped", 0))
    if "z_gen" in extra:
        state = extra["z_gen"]
        run.z_gen.set_state(state.cpu() if run.device.type == "cpu" else state)
    if "jpeg_gen" in extra:
        run.jpeg_gen.bit_generator.state = unpack_np_state(extra["jpeg_gen"])


def restart_best_if_measured_otherwise(
    run: IRNRun, extra: Mapping[str, Any], stored: Mapping[str, Any], path: Path
) -> None:
    """Forget the resumed best score if validation now measures it another way (e.g.
    ``--gaussian-scale`` changed on resume, or a checkpoint from before the method was
    recorded): scores measured two ways are not compared, and ``best.pt`` is replaced at the
    next validation."""
    method = run.task.val_method
    if method is None or run.best == -math.inf:
        return
    then = extra.get("best_method") or method(stored, True)
    now = method(config_to_dict(run.cfg), False)
    if then != now:
        say(
            run,
            f"--resume {path}: its best {run.task.best_key} ({run.best:.2f}) was measured with "
            f"{then}, this run validates with {now}; the best score restarts and best.pt is "
            "replaced at the next validation.",
        )
        run.best = -math.inf


def restore_or_init(run: IRNRun) -> None:
    """``--resume`` (read on rank 0 and broadcast) or ``--init-weights`` (fine-tuning)."""
    cfg = run.cfg
    read = functools.partial(_read_resume, cfg, run.out_dir)
    path, ckpt = on_rank0(read, run.world, run.rank)
    if path is not None:
        restore_run(run, Path(path), ckpt)
        scale = f", loss scale {run.scaler.get_scale():g}" if run.scaler.is_enabled() else ""
        say(run, f"Resumed from {path} at iteration {run.step}{scale}.")
        if cfg.init_weights:
            say(
                run,
                f"--init-weights {cfg.init_weights}: not used, the resumed checkpoint has them.",
            )
    elif cfg.init_weights:
        read = functools.partial(read_init_weights, cfg.init_weights, run.model_cfg)
        state, what = on_rank0(read, run.world, run.rank)
        run.model.load_state_dict(state)
        say(
            run,
            f"Fine-tuning {what}; optimiser, learning-rate schedule and iterations start anew.",
        )


def prepare_loop(run: IRNRun) -> torch.utils.data.DataLoader:
    """DDP wrapper, the loader from the current iteration, the logs and the opening lines."""
    cfg, device = run.cfg, run.device
    if run.world > 1:
        run.net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)
    sampler = StepSampler(cfg.batch_size, run.step, cfg.iters, rank=run.rank, world_size=run.world)
    run.micro = cfg.micro_batch or sampler.local_batch
    if sampler.local_batch % run.micro:
        raise SystemExit(
            f"--micro-batch {run.micro} must divide the per-process batch {sampler.local_batch} "
            f"(--batch-size {cfg.batch_size} over {run.world} processes)"
        )
    auto = cfg.data is None and run.task.name == "rescale"  # built-in photos, IRN rescaling
    color = cfg.color_augment == "on" or (cfg.color_augment == "auto" and auto)
    dataset = PatchDataset(
        run.train_items, cfg.patch_size, run.task.scale, seed=cfg.seed,
        color=ColorAugment() if color else None,
        smooth=SmoothPatches(p=cfg.smooth_patches) if cfg.smooth_patches > 0 else None,
    )  # fmt: skip
    loader = make_loader(dataset, sampler, workers, device.type == "cuda", cfg.seed)
    run.tb = TensorBoardLogger(
        cfg.logdir or run.out_dir / "tb", enabled=cfg.tensorboard and run.main_process
    )
    run.tb.text("config", config_to_text(cfg) + "\n\n" + config_to_text(run.model_cfg), run.step)
    if run.task.baseline is not None:
        run.baseline = run.task.baseline(run.val_pairs, run.task.scale)
    announce(run, sampler.local_batch)
    return loader


def announce(run: IRNRun, local_batch: int) -> None:
    """The baseline on the validation images and the line describing the run."""
    cfg = run.cfg
    if run.baseline:
        run.tb.scalars(dict(run.baseline), run.step, prefix="val_bicubic/")
        say(
            run,
            f"Bicubic baseline on {len(run.val_pairs)} validation images: "
            f"PSNR-Y {run.baseline['psnr_y']:.2f} dB, SSIM-Y {run.baseline['ssim_y']:.4f}",
        )
    chunks = f" in chunks of {run.micro}" if run.micro < local_batch else ""
    say(
        run,
        f"{run.task.title}: {sum(p.numel() for p in run.model.parameters()):,} parameters; "
        f"device {run.device}{' with AMP' if run.amp else ''}"
        f"{', memory-saving backprop' if cfg.memory_saving else ''}; {run.world} process(es); "
        f"batch {cfg.batch_size}{chunks}, patch {cfg.patch_size}; iterations {run.step} -> "
        f"{cfg.iters}; output {run.out_dir}",
    )


def train_distributed(task: Task, model_cfg: Any, cfg: TrainConfig) -> dict[str, Any]:
    """:func:`train` in this process of a ``torchrun`` group (or alone), the group torn down
    afterwards whatever happens."""
    rank, world, device = setup_distributed(cfg.device)
    try:
        return train(task, model_cfg, cfg, rank, world, device)
    finally:
        teardown_distributed(world)


def train(
    task: Task, model_cfg: Any, cfg: TrainConfig, rank: int, world: int, device: torch.device
) -> dict[str, Any]:
    """A whole training run of ``task``; returns its summary (history, validation, model)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if rank == 0:
        check_run_outputs(Path(cfg.out or task.default_out), cfg.logdir, cfg.tensorboard)
    done = on_rank0(functools.partial(_resume_step, cfg, Path(cfg.out or task.default_out)),
                    world, rank)  # fmt: skip
    if done is not None and done[1] >= cfg.iters:  # before the data is read
        if rank == 0:
            print(nothing_to_do(done[0], done[1], cfg.iters), flush=True)
        return {"step": done[1], "interrupted": False, "nothing_to_do": True, "rank": rank}
    run = build_run(task, model_cfg, cfg, rank, world, device)
    restore_or_init(run)
    cfg = run.cfg  # a resume takes the checkpoint's optimiser settings
    if run.step >= cfg.iters:
        say(run, nothing_to_do(f"the resumed checkpoint ({run.out_dir})", run.step, cfg.iters))
        return run_summary(run, False)
    loader = prepare_loop(run)
    run.progress = ProgressLogger(
        cfg.iters, initial=run.step, desc=task.title, log_every=cfg.log_every,
        enabled=run.main_process,
    )  # fmt: skip
    run.model.train()
    run.t_last, run.steps_since = time.perf_counter(), 0
    batches = itertools.islice(loader, max(0, cfg.iters - run.step))
    try:
        interrupted = run_steps(run, batches, train_step, after_step, world, device)
    except TrainingDiverged as err:
        run.progress.close()
        run.tb.close()
        raise SystemExit(f"Training stopped: {err}") from None
    run.progress.close()
    refuse_nonfinite_weights(run)
    if task.name == "rescale" and not interrupted and run.main_process:
        run.forward_stats = training_reference(run.model, run.train_items)
    save_run(run, run.out_dir / LAST_NAME, "interrupted" if interrupted else "last")
    run.tb.flush()
    run.tb.close()
    if interrupted:
        where = f"iteration {run.step}"
        say(run, interrupted_message(where, run.out_dir / LAST_NAME, run.out_dir))
    if run.scaler_skipped:
        say(run, f"The fp16 gradient scaler skipped {run.scaler_skipped} step(s) (overflow).")
    if not interrupted and run.val_history:
        for line in task.summary(run):
            say(run, line)
    return run_summary(run, interrupted)


def run_summary(run: IRNRun, interrupted: bool) -> dict[str, Any]:
    """What :func:`train` returns: the history, validation and the model."""
    return {
        "step": run.step,
        "interrupted": interrupted,
        "history": run.history,
        "scaler_skipped": run.scaler_skipped,
        "loss_scale": run.scaler.get_scale() if run.scaler.is_enabled() else None,
        "val": run.val_history,
        "bicubic": run.baseline,
        "out": str(run.out_dir),
        "rank": run.rank,
        "world_size": run.world,
        "model": run.model,
    }
