"""Train Glow on the 8x8 digits ("MNIST8", SPEC sec. 7); report test bits/dim and FD-digits.

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
import sys
import time
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import torch

from common.checkpoint import (
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
from common.runtime import (
    GracefulInterrupt,
    NonFiniteGuard,
    ProgressLogger,
    TensorBoardLogger,
    TrainingDiverged,
    resolve_device,
    seed_everything,
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

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_samples", "fd_samples", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("init_batch", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", field=name)
        if not self.lr > 0:
            raise ConfigError(f"must be > 0, got {self.lr}", field="lr")
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


def _train(
    model_cfg: GlowConfig,
    cfg: TrainGlowConfig,
    step_callback: Callable[[int, float], None] | None,
) -> dict[str, Any]:
    try:
        device = resolve_device(cfg.device)
    except (RuntimeError, ValueError) as err:
        raise SystemExit(f"train_glow.py: error: --device: {err}") from None
    out_dir = Path(cfg.out)
    data = load_digits_split(seed=cfg.data_seed)
    test_x = fixed_dequantized(data.test, seed=cfg.data_seed).to(device)
    per_epoch = num_batches(len(data.train), cfg.batch_size)

    seed_everything(cfg.seed)
    model = Glow(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    guard = NonFiniteGuard(cfg.max_nonfinite)
    config_dict = {**config_to_dict(cfg), "model": config_to_dict(model_cfg)}

    # Position in training: next batch `batch` of epoch `epoch`; running sums of that epoch.
    step, epoch, batch = 0, 0, 0
    epoch_nll, epoch_count, train_time, samples = 0.0, 0, 0.0, 0
    history: list[dict[str, float]] = []
    resume = resolve_resume(cfg.resume, out_dir)
    if cfg.resume == "auto" and resume is None:
        _say(f"--resume auto: no checkpoint in {out_dir}; starting from scratch.")
    if resume is not None:
        ckpt = load_checkpoint(resume, required_keys=("model", "config", "extra"))
        needed = ("epoch", "batch", "epoch_nll", "epoch_count", "train_time", "samples", "history")
        if (
            not isinstance(ckpt["config"], dict)
            or "model" not in ckpt["config"]
            or any(key not in (ckpt["extra"] or {}) for key in needed)
        ):
            raise CheckpointError(f"--resume {resume}: not a checkpoint written by train_glow.py")
        stored = config_from_dict(GlowConfig, ckpt["config"]["model"])
        if stored != model_cfg:
            raise SystemExit(
                f"train_glow.py: error: --resume {resume}: the checkpoint's model {stored} "
                f"differs from the flags' {model_cfg}; pass the same model flags"
            )
        extra = ckpt["extra"]
        stored_batch = ckpt["config"].get("batch_size")
        if extra["batch"] and stored_batch != cfg.batch_size:
            raise SystemExit(
                f"train_glow.py: error: --resume {resume}: stopped mid-epoch with --batch-size "
                f"{stored_batch}; resume with the same batch size (got {cfg.batch_size})"
            )
        step = restore_checkpoint(ckpt, model=model, optimizer=optimizer)
        epoch, batch = int(extra["epoch"]), int(extra["batch"])
        epoch_nll, epoch_count = float(extra["epoch_nll"]), int(extra["epoch_count"])
        train_time, samples = float(extra["train_time"]), int(extra["samples"])
        history = [dict(h) for h in extra["history"]]
        guard.load_state_dict(extra.get("guard", {}))
        guard.note_checkpoint(resume)
        _say(f"Resumed from {resume}: epoch {epoch + 1}, batch {batch}, step {step}.")
    elif cfg.init_batch > 0:
        t0 = time.perf_counter()
        init_x = next(train_batches(data.train, cfg.init_batch, epoch=0, seed=cfg.seed))[1]
        model.initialize(init_x.to(device))
        train_time += time.perf_counter() - t0

    classifier = None
    if cfg.fd:
        t0 = time.perf_counter()
        classifier, accuracy = load_or_train_classifier(
            data, out_dir / "fd_digits_classifier.pt", seed=cfg.seed, data_seed=cfg.data_seed
        )
        _say(
            f"{FD_NAME} feature extractor: test accuracy {accuracy:.3f} "
            f"({time.perf_counter() - t0:.1f} s)"
        )

    tb = TensorBoardLogger(out_dir / "tb", enabled=cfg.tensorboard)
    if resume is None:
        tb.text("config", config_to_text(cfg) + "\n\n" + config_to_text(model_cfg), 0)
        tb.images("data/test_digits", _finite_images(test_x[: cfg.num_samples]).cpu(), 0)
    n_params = sum(p.numel() for p in model.parameters())
    _say(
        f"Glow ({model_cfg.architecture}, K={model_cfg.steps}, {model_cfg.permutation}, "
        f"{model_cfg.scale_fn}): {n_params:,} parameters; device {device}, "
        f"{torch.get_num_threads()} thread(s); {cfg.epochs} epochs x {per_epoch} batches of "
        f"{cfg.batch_size}; output {out_dir}"
    )

    def save(path: Path) -> Path:
        extra = {
            "epoch": epoch,
            "batch": batch,
            "epoch_nll": epoch_nll,
            "epoch_count": epoch_count,
            "train_time": train_time,
            "samples": samples,
            "history": history,
            "guard": guard.state_dict(),
        }
        state = make_checkpoint(
            model=model, config=config_dict, optimizer=optimizer, step=step, extra=extra
        )
        return save_checkpoint(path, state)

    def evaluate(at_epoch: int) -> dict[str, float]:
        model.eval()
        metrics = {"epoch": at_epoch, "step": step}
        metrics["test_bpd"] = evaluate_bits_per_dim(model.log_prob, test_x)
        for t_index, temperature in enumerate(cfg.temperatures):
            gen = torch.Generator().manual_seed(derived_seed(cfg.seed, 3, t_index))
            grid = _finite_images(model.sample(cfg.num_samples, temperature, gen))
            tb.images(f"samples/T{_tname(temperature)}", grid.cpu(), step)
            if classifier is not None:
                gen = torch.Generator().manual_seed(derived_seed(cfg.seed, 4, at_epoch, t_index))
                raw = model.sample(cfg.fd_samples, temperature, gen)
                # Far-out latents can overflow the inverse (division by sigmoid scales < 1).
                bad = (~torch.isfinite(raw)).flatten(1).any(1).double().mean().item()
                fd = digits_frechet_distance(_finite_images(raw), test_x, classifier)
                metrics[f"fd_T{_tname(temperature)}"] = fd
                metrics[f"nonfinite_T{_tname(temperature)}"] = bad
                tb.scalar(f"fd_digits/T{_tname(temperature)}", fd, step)
                tb.scalar(f"samples_nonfinite/T{_tname(temperature)}", bad, step)
        tb.scalar("test/bpd", metrics["test_bpd"], step)
        model.train()
        return metrics

    losses: list[float] = []
    interrupted = False
    progress = ProgressLogger(
        cfg.epochs * per_epoch, initial=step, desc="Glow", log_every=cfg.log_every
    )
    model.train()
    try:
        with GracefulInterrupt() as stop:
            while epoch < cfg.epochs and not interrupted:
                t_epoch = time.perf_counter()
                for index, x in train_batches(
                    data.train, cfg.batch_size, epoch, cfg.seed, start=batch
                ):
                    if stop.requested:
                        interrupted = True
                        break
                    t0 = time.perf_counter()
                    x = x.to(device, non_blocking=True)
                    optimizer.zero_grad(set_to_none=True)
                    loss = -model.log_prob(x).mean() / NUM_DIMS  # nats per dimension
                    ok = guard.check(loss, step=step)
                    if ok:
                        loss.backward()
                        optimizer.step()
                    train_time += time.perf_counter() - t0
                    step, batch, samples = step + 1, index + 1, samples + x.shape[0]
                    value = float(loss.detach())
                    losses.append(value)
                    if ok:
                        epoch_nll += value * NUM_DIMS * x.shape[0]
                        epoch_count += x.shape[0]
                    else:
                        progress.write(f"[step {step}] non-finite loss; step skipped")
                    progress.update(1)
                    if ok and (step % cfg.log_every == 0 or batch == per_epoch):
                        step_bpd = bits_per_dim(-value * NUM_DIMS)
                        progress.set_postfix(epoch=epoch + 1, bpd=step_bpd)
                        tb.scalar("train/bpd_step", step_bpd, step)
                    if step_callback is not None:
                        step_callback(step, value)
                if interrupted:
                    break
                # End of epoch: metrics, samples, checkpoint.
                train_bpd = bits_per_dim(-epoch_nll / max(epoch_count, 1))
                record = evaluate(epoch + 1)
                record["train_bpd"] = train_bpd
                record["epoch_s"] = time.perf_counter() - t_epoch
                history.append(record)
                tb.scalar("train/bpd", train_bpd, step)
                tb.flush()
                fd_text = _fd_text(record, cfg.temperatures)
                progress.write(
                    f"epoch {epoch + 1}/{cfg.epochs} | train {train_bpd:.4f} bits/dim | "
                    f"test {record['test_bpd']:.4f} bits/dim"
                    + (f" | {FD_NAME} {fd_text}" if fd_text else "")
                    + f" | {record['epoch_s']:.1f} s"
                )
                epoch, batch, epoch_nll, epoch_count = epoch + 1, 0, 0.0, 0
                guard.note_checkpoint(save(checkpoint_path(out_dir, step)))
                save(out_dir / LAST_NAME)
                prune_checkpoints(out_dir, cfg.keep_checkpoints)
    except TrainingDiverged as err:
        progress.close()
        tb.close()
        raise SystemExit(f"train_glow.py: training stopped: {err}") from None
    progress.close()

    result: dict[str, Any] = {
        "step": step,
        "epoch": epoch,
        "interrupted": interrupted,
        "losses": losses,
        "history": history,
        "train_time_s": train_time,
        "out": str(out_dir),
    }
    if interrupted:
        save(out_dir / LAST_NAME)
        tb.close()
        _say(
            f"Interrupted at epoch {epoch + 1}, batch {batch} (step {step}); saved "
            f"{out_dir / LAST_NAME}. Continue with: --resume auto --out {out_dir}"
        )
        return result
    tb.close()

    final = history[-1] if history else evaluate(epoch)
    _say(
        f"Training time {train_time:.1f} s for {step} steps, {samples} samples "
        f"({1e3 * train_time / max(samples, 1):.3f} ms per training sample)."
    )
    fd_text = _fd_text(final, cfg.temperatures) or "not computed (--no-fd)"
    line = (
        f"final: epoch {epoch} | test {final['test_bpd']:.4f} bits/dim | "
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
