"""Train Glow on the 8x8 digits (the dissertation's "MNIST8"); report test bits/dim and FD-digits.

The dissertation's setting (flat Glow: actnorm -> fixed permutation -> affine coupling, 8 steps,
Adam lr 1e-3, batch 32, 5 epochs; seconds on a CPU)::

    python train_glow.py
    python train_glow.py --permutation invconv_lu --epochs 20 --out runs/glow_lu  # Glow's 1x1 conv
    python train_glow.py --architecture multiscale --epochs 10 --out runs/glow_ms
    tensorboard --logdir runs/glow

Every epoch prints train and test bits/dim, writes TensorBoard scalars and sample grids at
temperatures 0.7 and 1.0, and saves a checkpoint (``ckpt_<step>.pt`` and ``last.pt``, atomic,
with the config). Ctrl-C or SIGTERM saves ``last.pt`` and exits; ``--resume auto`` (or
``--resume PATH``) continues with exactly the losses of an uninterrupted run. The last line
printed is the final test bits/dim and FD-digits, a Frechet distance in the features of a small
digit classifier (``glow/fid.py``) that is NOT comparable to Inception FID. Every flag is listed
by ``python train_glow.py --help``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from common.checkpoint import (
    LAST_NAME,
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
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
from common.outputs import check_run_outputs
from common.resume import nothing_to_do, reconcile_resume_flags
from common.runtime import (
    NonFiniteGuard,
    ProgressLogger,
    TensorBoardLogger,
    TrainingDiverged,
    resolve_device,
    seed_everything,
)
from common.training import (
    TrainState,
    interrupted_message,
    refuse_nonfinite_weights,
    restore_state,
    run_steps,
    save_state,
)
from glow.data import (
    IMAGE_SHAPE,
    NUM_DIMS,
    bits_per_dim,
    derived_seed,
    evaluate_bits_per_dim,
    fixed_dequantized,
    load_digits_split,
    num_batches,
    train_batches,
)
from glow.fid import FD_NAME, digits_frechet_distance, load_or_train_classifier
from glow.model import Glow, GlowConfig

AdamImpl = Literal["fused", "foreach", "forloop"]
FD_NOTE = "digit-classifier Frechet distance, NOT comparable to Inception FID"


@configclass
class TrainGlowConfig:
    """Training settings (the architecture is :class:`glow.GlowConfig`)."""

    epochs: int = field(default=5, metadata={"help": "Training epochs (dissertation: 5)."})
    batch_size: int = field(default=32, metadata={"help": "Batch size."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (dissertation: 1e-3)."})
    adam: AdamImpl = field(
        default="fused",
        metadata={"help": "Adam implementation (same maths): fused, foreach or forloop."},
    )
    init_batch: int = field(
        default=256,
        metadata={
            "help": "Training digits for the data-dependent ActNorm init (Glow sec. 3.1); "
            "0 = initialise on the first training batch."
        },
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the weights, batch order and dequantisation noise."}
    )
    data_seed: int = field(
        default=0, metadata={"help": "Seed of the fixed 1617/180 train/test shuffle."}
    )
    temperatures: tuple[float, ...] = field(
        default=(0.7, 1.0),
        metadata={"help": "Sampling temperatures for the sample grids and FD-digits."},
    )
    num_samples: int = field(
        default=64, metadata={"help": "Samples per TensorBoard grid (fixed latents)."}
    )
    fd: bool = field(
        default=True,
        metadata={"help": "Compute FD-digits each epoch (trains a small classifier once)."},
    )
    fd_samples: int = field(default=1000, metadata={"help": "Generated samples for FD-digits."})
    log_every: int = field(
        default=10, metadata={"help": "Log the training loss every N steps (console, TB)."}
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "Per-epoch checkpoints kept (last.pt is always kept)."}
    )
    out: str = field(default="runs/glow", metadata={"help": "Output folder."})
    tensorboard: bool = field(
        default=True, metadata={"help": "Write TensorBoard logs to <out>/tb."}
    )
    resume: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint to resume from, or 'auto' for the latest in --out (a fresh "
            "start if there is none)."
        },
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})
    threads: int | None = field(
        default=1,
        metadata={
            "help": "torch CPU threads; 1 is fastest for this small model and robust on a "
            "shared machine; none = torch's default."
        },
    )
    max_nonfinite: int = field(
        default=10,
        metadata={"help": "Stop after this many consecutive steps with a non-finite loss."},
    )
    amp_dtype: Literal["auto", "bf16", "fp16"] = field(
        default="auto",
        metadata={
            "help": "Glow trains in float32 (it has no --amp; docs/gpu.md says why): only "
            "'auto' is accepted, so a command line shared with the IRN scripts still parses."
        },
    )

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_samples", "fd_samples", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("init_batch", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", field=name)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"must be > 0 and finite, got {self.lr}", field="lr")
        if self.adam not in ("fused", "foreach", "forloop"):
            raise ConfigError(
                f"must be fused, foreach or forloop, got {self.adam!r}", field="adam"
            )
        if not self.temperatures or any(not t >= 0 for t in self.temperatures):
            raise ConfigError(
                f"need at least one temperature, all >= 0, got {self.temperatures}",
                field="temperatures",
            )
        if self.fd_samples < 2:
            raise ConfigError("must be >= 2 (a covariance is estimated)", field="fd_samples")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"must be >= 1 or none, got {self.threads}", field="threads")
        if self.max_nonfinite < 1:
            raise ConfigError(f"must be >= 1, got {self.max_nonfinite}", field="max_nonfinite")
        if self.amp_dtype != "auto":
            raise ConfigError(
                f"{self.amp_dtype} refused: Glow trains in float32 only (no --amp; its exact "
                "log-likelihood and the 8x8 digits gain nothing from autocast)",
                field="amp_dtype",
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_glow.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataclass_arguments(parser, GlowConfig)
    add_dataclass_arguments(parser, TrainGlowConfig)
    return parser


def parse_args(argv: list[str] | None) -> tuple[GlowConfig, TrainGlowConfig]:
    """Flags -> configs; invalid values exit with ``error: --flag: message`` (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model_cfg = dataclass_from_args(GlowConfig, args)
        train_cfg = dataclass_from_args(TrainGlowConfig, args)
    except ConfigError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits
    if model_cfg.input_shape != IMAGE_SHAPE:
        parser.error(
            f"--in-channels/--image-size: the digits are {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}x"
            f"{IMAGE_SHAPE[2]}, got {model_cfg.in_channels}x{model_cfg.image_size}x"
            f"{model_cfg.image_size}"
        )
    return model_cfg, train_cfg


def make_optimizer(model: torch.nn.Module, cfg: TrainGlowConfig) -> torch.optim.Optimizer:
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, **flags[cfg.adam])


def _finite_images(x: torch.Tensor) -> torch.Tensor:
    """Samples for display/FD: non-finite values replaced, clipped to the data range [0, 1]."""
    return torch.nan_to_num(x.float(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def _tname(temperature: float) -> str:
    """``0.7`` -> ``"0.7"``, ``1`` -> ``"1.0"``: the temperature as written in tags and logs."""
    return repr(float(temperature))


def _fd_text(record: dict[str, float], temperatures: tuple[float, ...]) -> str:
    """``"15.7 (T=1.0), ..."`` for the FD-digits values in ``record`` ("" if none)."""
    parts = [
        f"{record[f'fd_T{_tname(t)}']:.3f} (T={_tname(t)})"
        for t in temperatures
        if f"fd_T{_tname(t)}" in record
    ]
    return ", ".join(parts)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class GlowRun(TrainState):
    """A Glow training run: :class:`~common.training.TrainState` plus the position in training
    (next batch ``batch`` of epoch ``epoch``), that epoch's running sums, the data and the
    logs."""

    cfg: TrainGlowConfig | None = None
    model_cfg: GlowConfig | None = None
    device: torch.device = torch.device("cpu")
    out_dir: Path = Path("runs/glow")
    data: Any = None
    test_x: torch.Tensor | None = None
    per_epoch: int = 1
    epoch: int = 0
    batch: int = 0
    epoch_nll: float = 0.0
    epoch_count: int = 0
    train_time: float = 0.0
    samples: int = 0
    t_epoch: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    classifier: torch.nn.Module | None = None
    tb: TensorBoardLogger | None = None
    progress: ProgressLogger | None = None
    step_callback: Callable[[int, float], None] | None = None

    def config_dict(self) -> dict[str, Any]:
        return {**config_to_dict(self.cfg), "model": config_to_dict(self.model_cfg)}

    def extra(self) -> dict[str, Any]:
        """The position in training and the running sums, stored in every checkpoint."""
        keys = ("epoch", "batch", "epoch_nll", "epoch_count", "train_time", "samples")
        return {**{k: getattr(self, k) for k in keys}, "history": self.history}


def main(
    argv: list[str] | None = None,
    step_callback: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate; return a summary (losses of the steps run here, per-epoch metrics).

    ``step_callback(step, loss)`` is called after every optimiser step (tests use it to send a
    signal mid-epoch).
    """
    model_cfg, cfg = parse_args(argv)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(model_cfg, cfg, step_callback)
    finally:
        torch.set_num_threads(previous_threads)


def build_run(model_cfg: GlowConfig, cfg: TrainGlowConfig) -> GlowRun:
    """Data, model (weights from ``cfg.seed``), optimiser and guard of a fresh run."""
    try:
        device = resolve_device(cfg.device)
    except (RuntimeError, ValueError) as err:
        raise SystemExit(f"train_glow.py: error: --device: {err}") from None
    data = load_digits_split(seed=cfg.data_seed)
    seed_everything(cfg.seed)
    model = Glow(model_cfg).to(device)
    return GlowRun(
        model=model,
        optimizer=make_optimizer(model, cfg),
        guard=NonFiniteGuard(cfg.max_nonfinite),
        cfg=cfg,
        model_cfg=model_cfg,
        device=device,
        out_dir=Path(cfg.out),
        data=data,
        test_x=fixed_dequantized(data.test, seed=cfg.data_seed).to(device),
        per_epoch=num_batches(len(data.train), cfg.batch_size),
    )


def restore_run(run: GlowRun, resume: Path) -> None:
    """Continue the run in ``resume``: refuses another model, or another batch size mid-epoch;
    restores the state, the position in training and the running sums."""
    cfg = run.cfg
    ckpt = load_checkpoint(resume, required_keys=("model", "config", "extra"))
    needed = ("epoch", "batch", "epoch_nll", "epoch_count", "train_time", "samples", "history")
    if (
        not isinstance(ckpt["config"], dict)
        or "model" not in ckpt["config"]
        or any(key not in (ckpt["extra"] or {}) for key in needed)
    ):
        raise CheckpointError(f"--resume {resume}: not a checkpoint written by train_glow.py")
    stored = config_from_dict(GlowConfig, ckpt["config"]["model"])
    if stored != run.model_cfg:
        raise SystemExit(
            f"train_glow.py: error: --resume {resume}: the checkpoint's model {stored} "
            f"differs from the flags' {run.model_cfg}; pass the same model flags"
        )
    extra = ckpt["extra"]
    stored_batch = ckpt["config"].get("batch_size")
    if extra["batch"] and stored_batch != cfg.batch_size:
        raise SystemExit(
            f"train_glow.py: error: --resume {resume}: stopped mid-epoch with --batch-size "
            f"{stored_batch}; resume with the same batch size (got {cfg.batch_size})"
        )
    restore_state(run, ckpt, resume)
    run.cfg, lines = reconcile_resume_flags(cfg, ckpt["config"], str(resume), locked=("lr",))
    for line in lines:
        _say(line)
    run.epoch, run.batch = int(extra["epoch"]), int(extra["batch"])
    run.epoch_nll, run.epoch_count = float(extra["epoch_nll"]), int(extra["epoch_count"])
    run.train_time, run.samples = float(extra["train_time"]), int(extra["samples"])
    run.history = [dict(h) for h in extra["history"]]
    _say(f"Resumed from {resume}: epoch {run.epoch + 1}, batch {run.batch}, step {run.step}.")


def restore_or_init(run: GlowRun) -> Path | None:
    """``--resume`` (``auto``: the newest checkpoint in ``--out``, else a fresh start) or the
    data-dependent ActNorm initialisation of a fresh run; returns the resumed checkpoint."""
    cfg = run.cfg
    resume = resolve_resume(cfg.resume, run.out_dir)
    if cfg.resume == "auto" and resume is None:
        _say(f"--resume auto: no checkpoint in {run.out_dir}; starting from scratch.")
    if resume is not None:
        restore_run(run, resume)
    elif cfg.init_batch > 0:
        t0 = time.perf_counter()
        init_x = next(train_batches(run.data.train, cfg.init_batch, epoch=0, seed=cfg.seed))[1]
        run.model.initialize(init_x.to(run.device))
        run.train_time += time.perf_counter() - t0
    return resume


def prepare_logs(run: GlowRun, resumed: bool) -> None:
    """The FD-digits classifier (``--fd``), TensorBoard and the line describing the run."""
    cfg, model_cfg = run.cfg, run.model_cfg
    if cfg.fd:
        t0 = time.perf_counter()
        run.classifier, accuracy = load_or_train_classifier(
            run.data,
            run.out_dir / "fd_digits_classifier.pt",
            seed=cfg.seed,
            data_seed=cfg.data_seed,
        )
        _say(
            f"{FD_NAME} feature extractor: test accuracy {accuracy:.3f} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    run.tb = TensorBoardLogger(run.out_dir / "tb", enabled=cfg.tensorboard)
    if not resumed:
        run.tb.text("config", config_to_text(cfg) + "\n\n" + config_to_text(model_cfg), 0)
        run.tb.images("data/test_digits", _finite_images(run.test_x[: cfg.num_samples]).cpu(), 0)
    n_params = sum(p.numel() for p in run.model.parameters())
    _say(
        f"Glow ({model_cfg.architecture}, K={model_cfg.steps}, {model_cfg.permutation}, "
        f"{model_cfg.scale_fn}): {n_params:,} parameters; device {run.device}, "
        f"{torch.get_num_threads()} thread(s); {cfg.epochs} epochs x {run.per_epoch} batches of "
        f"{cfg.batch_size}; output {run.out_dir}"
    )


def epoch_batches(run: GlowRun) -> Iterator[torch.Tensor]:
    """The training batches from the current position to the end of the last epoch."""
    cfg, start = run.cfg, run.batch
    for epoch in range(run.epoch, cfg.epochs):
        for _, x in train_batches(run.data.train, cfg.batch_size, epoch, cfg.seed, start=start):
            yield x
        start = 0


def train_step(run: GlowRun, x: torch.Tensor) -> None:
    """One optimiser step on the negative log-likelihood in nats per dimension (skipped when
    non-finite); the running sums of the epoch, the logs and the test callback."""
    cfg = run.cfg
    if run.t_epoch is None:
        run.t_epoch = time.perf_counter()
    t0 = time.perf_counter()
    x = x.to(run.device, non_blocking=True)
    run.optimizer.zero_grad(set_to_none=True)
    loss = -run.model.log_prob(x).mean() / NUM_DIMS
    ok = run.guard.check(loss, step=run.step)
    if ok:
        loss.backward()
        run.optimizer.step()
    run.train_time += time.perf_counter() - t0
    run.step, run.batch, run.samples = run.step + 1, run.batch + 1, run.samples + x.shape[0]
    value = float(loss.detach())
    run.losses.append(value)
    if ok:
        run.epoch_nll += value * NUM_DIMS * x.shape[0]
        run.epoch_count += x.shape[0]
    else:
        run.progress.write(f"[step {run.step}] non-finite loss; step skipped")
    run.progress.update(1)
    if ok and (run.step % cfg.log_every == 0 or run.batch == run.per_epoch):
        step_bpd = bits_per_dim(-value * NUM_DIMS)
        run.progress.set_postfix(epoch=run.epoch + 1, bpd=step_bpd)
        run.tb.scalar("train/bpd_step", step_bpd, run.step)
    if run.step_callback is not None:
        run.step_callback(run.step, value)


def evaluate(run: GlowRun, at_epoch: int) -> dict[str, float]:
    """Test bits/dim, sample grids at each temperature and (``--fd``) FD-digits."""
    cfg, model, step = run.cfg, run.model, run.step
    model.eval()
    metrics = {"epoch": at_epoch, "step": step}
    metrics["test_bpd"] = evaluate_bits_per_dim(model.log_prob, run.test_x)
    for t_index, temperature in enumerate(cfg.temperatures):
        gen = torch.Generator().manual_seed(derived_seed(cfg.seed, 3, t_index))
        grid = _finite_images(model.sample(cfg.num_samples, temperature, gen))
        run.tb.images(f"samples/T{_tname(temperature)}", grid.cpu(), step)
        if run.classifier is not None:
            gen = torch.Generator().manual_seed(derived_seed(cfg.seed, 4, at_epoch, t_index))
            raw = model.sample(cfg.fd_samples, temperature, gen)
            # Far-out latents can overflow the inverse (division by sigmoid scales < 1).
            bad = (~torch.isfinite(raw)).flatten(1).any(1).double().mean().item()
            fd = digits_frechet_distance(_finite_images(raw), run.test_x, run.classifier)
            metrics[f"fd_T{_tname(temperature)}"] = fd
            metrics[f"nonfinite_T{_tname(temperature)}"] = bad
            run.tb.scalar(f"fd_digits/T{_tname(temperature)}", fd, step)
            run.tb.scalar(f"samples_nonfinite/T{_tname(temperature)}", bad, step)
    run.tb.scalar("test/bpd", metrics["test_bpd"], step)
    model.train()
    return metrics


def after_step(run: GlowRun) -> None:
    """At the end of an epoch: metrics, samples, the epoch line and the checkpoints."""
    if run.batch < run.per_epoch:
        return
    train_bpd = bits_per_dim(-run.epoch_nll / max(run.epoch_count, 1))
    record = evaluate(run, run.epoch + 1)
    record["train_bpd"] = train_bpd
    record["epoch_s"] = time.perf_counter() - run.t_epoch
    run.history.append(record)
    run.tb.scalar("train/bpd", train_bpd, run.step)
    run.tb.flush()
    fd_text = _fd_text(record, run.cfg.temperatures)
    run.progress.write(
        f"epoch {run.epoch + 1}/{run.cfg.epochs} | train {train_bpd:.4f} bits/dim | "
        f"test {record['test_bpd']:.4f} bits/dim"
        + (f" | {FD_NAME} {fd_text}" if fd_text else "")
        + f" | {record['epoch_s']:.1f} s"
    )
    run.epoch, run.batch, run.epoch_nll, run.epoch_count = run.epoch + 1, 0, 0.0, 0
    run.t_epoch = None
    save_state(checkpoint_path(run.out_dir, run.step), run, run.config_dict(), run.extra())
    save_state(run.out_dir / LAST_NAME, run, run.config_dict(), run.extra(), good=False)
    prune_checkpoints(run.out_dir, run.cfg.keep_checkpoints)


def _train(
    model_cfg: GlowConfig,
    cfg: TrainGlowConfig,
    step_callback: Callable[[int, float], None] | None,
) -> dict[str, Any]:
    check_run_outputs(cfg.out, None, cfg.tensorboard)
    run = build_run(model_cfg, cfg)
    run.step_callback = step_callback
    resumed = restore_or_init(run) is not None
    cfg = run.cfg
    total = cfg.epochs * run.per_epoch
    if run.step >= total:
        _say(nothing_to_do(f"the resumed checkpoint ({run.out_dir})", run.step, total, "--epochs"))
        return {"step": run.step, "epoch": run.epoch, "interrupted": False, "nothing_to_do": True}
    prepare_logs(run, resumed)
    run.progress = ProgressLogger(
        cfg.epochs * run.per_epoch, initial=run.step, desc="Glow", log_every=cfg.log_every
    )
    run.model.train()
    try:
        interrupted = run_steps(run, epoch_batches(run), train_step, after_step)
    except TrainingDiverged as err:
        run.progress.close()
        run.tb.close()
        raise SystemExit(f"train_glow.py: training stopped: {err}") from None
    run.progress.close()
    refuse_nonfinite_weights(run)
    result: dict[str, Any] = {
        "step": run.step,
        "epoch": run.epoch,
        "interrupted": interrupted,
        "losses": run.losses,
        "history": run.history,
        "train_time_s": run.train_time,
        "out": str(run.out_dir),
    }
    if interrupted:
        saved = save_state(run.out_dir / LAST_NAME, run, run.config_dict(), run.extra(), False)
        run.tb.close()
        where = f"epoch {run.epoch + 1}, batch {run.batch} (step {run.step})"
        _say(interrupted_message(where, saved, run.out_dir))
        return result
    run.tb.close()
    return finish(run, result)


def finish(run: GlowRun, result: dict[str, Any]) -> dict[str, Any]:
    """The closing lines: training time and the final test bits/dim and FD-digits."""
    final = run.history[-1] if run.history else evaluate(run, run.epoch)
    _say(
        f"Training time {run.train_time:.1f} s for {run.step} steps, {run.samples} samples "
        f"({1e3 * run.train_time / max(run.samples, 1):.3f} ms per training sample)."
    )
    fd_text = _fd_text(final, run.cfg.temperatures) or "not computed (--no-fd)"
    line = (
        f"final: epoch {run.epoch} | test {final['test_bpd']:.4f} bits/dim | "
        f"{FD_NAME} {fd_text} [{FD_NOTE}]"
    )
    print(line, flush=True)
    result["final"] = final
    result["final_line"] = line
    return result


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ValueError) as err:
        print(f"train_glow.py: error: {err}", file=sys.stderr)
        sys.exit(2)
