"""Tests for train_glow.py: a tiny run, checkpoints, exact resume, signals, TensorBoard, flags."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import train_glow
from common.checkpoint import CheckpointError, find_latest_checkpoint, load_checkpoint
from common.config import config_from_dict
from glow.data import evaluate_bits_per_dim, fixed_dequantized, load_digits_split
from glow.model import Glow, GlowConfig

TINY = ["--steps", "1", "--hidden", "16", "--num-samples", "4", "--log-every", "5"]


def run(out: Path, *extra: str, callback=None) -> dict:
    argv = [*TINY, "--out", str(out), "--no-fd", "--no-tensorboard", *extra]
    return train_glow.main(argv, step_callback=callback)


def _metrics(history: list[dict]) -> list[dict]:
    """Per-epoch records without the wall-clock time."""
    return [{k: v for k, v in record.items() if k != "epoch_s"} for record in history]


def test_one_tiny_epoch_writes_a_loadable_checkpoint(tmp_path, capsys):
    previous = torch.get_num_threads()
    # Train on 1 thread (2 OpenMP threads on a busy 2-core machine wait on each other for
    # milliseconds per operation); main() must restore the caller's count afterwards.
    torch.set_num_threads(2)
    try:
        result = run(tmp_path, "--epochs", "1", "--threads", "1")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert not result["interrupted"] and result["step"] == 51  # ceil(1617 / 32)
    assert len(result["losses"]) == 51 and all(map(torch.isfinite, torch.tensor(result["losses"])))
    assert "final: epoch 1 | test" in capsys.readouterr().out
    for name in ("last.pt", "ckpt_00000051.pt"):
        ckpt = load_checkpoint(tmp_path / name, required_keys=("model", "config", "optimizer"))
        assert ckpt["step"] == 51 and ckpt["extra"]["epoch"] == 1
    # the model is rebuilt from the stored config alone and gives the logged test bits/dim
    ckpt = load_checkpoint(tmp_path / "last.pt")
    model = Glow(config_from_dict(GlowConfig, ckpt["config"]["model"]))
    model.load_state_dict(ckpt["model"])
    test = fixed_dequantized(load_digits_split().test)
    bpd = evaluate_bits_per_dim(model.eval().log_prob, test)
    assert bpd == pytest.approx(result["history"][-1]["test_bpd"], abs=1e-6)


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    full = run(tmp_path / "full", "--epochs", "2", "--keep-checkpoints", "1")
    assert sorted(p.name for p in (tmp_path / "full").glob("*.pt")) == [
        "ckpt_00000102.pt",  # the epoch-1 checkpoint was pruned
        "last.pt",
    ]
    first = run(tmp_path / "split", "--epochs", "1")
    second = run(tmp_path / "split", "--epochs", "2", "--resume", "auto")
    assert first["losses"] + second["losses"] == full["losses"]  # bit-identical
    assert _metrics(second["history"]) == _metrics(full["history"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_epoch_saves_and_resume_is_exact(tmp_path, signum):
    full = run(tmp_path / "full", "--epochs", "1")

    def interrupt(step: int, loss: float) -> None:
        if step == 7:
            os.kill(os.getpid(), signum)

    stopped = run(tmp_path / "run", "--epochs", "1", callback=interrupt)
    assert stopped["interrupted"] and stopped["step"] == 7
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (ckpt["step"], ckpt["extra"]["epoch"], ckpt["extra"]["batch"]) == (7, 0, 7)
    assert find_latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "last.pt"
    resumed = run(tmp_path / "run", "--epochs", "1", "--resume", str(tmp_path / "run/last.pt"))
    assert stopped["losses"] + resumed["losses"] == full["losses"]
    assert _metrics(resumed["history"]) == _metrics(full["history"])


def test_tensorboard_has_scalars_and_sample_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = [*TINY, "--out", str(tmp_path), "--epochs", "1", "--fd-samples", "200"]
    result = train_glow.main(argv)
    assert "fd_T0.7" in result["final"] and "fd_T1.0" in result["final"]
    assert "NOT comparable to Inception FID" in result["final_line"]
    assert (tmp_path / "fd_digits_classifier.pt").is_file()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/bpd", "train/bpd_step", "test/bpd", "fd_digits/T0.7", "fd_digits/T1.0"):
        assert tag in tags["scalars"], tag
    for tag in ("samples/T0.7", "samples/T1.0", "data/test_digits"):
        assert tag in tags["images"], tag
    assert events.Scalars("test/bpd")[-1].value == pytest.approx(result["final"]["test_bpd"])


def test_multiscale_and_options_run(tmp_path):
    result = run(
        tmp_path,
        "--epochs", "1", "--architecture", "multiscale", "--levels", "2", "--hidden", "8",
        "--permutation", "shuffle", "--scale-fn", "exp", "--init-batch", "0",
        "--adam", "foreach", "--temperatures", "0.5", "--kernel-size", "1",
    )  # fmt: skip
    assert result["step"] == 51 and result["history"][-1]["test_bpd"] < 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs: must be >= 1"),
        (["--lr", "-1"], "--lr: must be > 0"),
        (["--permutation", "reverse"], "invalid choice"),
        (["--levels", "2"], "--levels: only applies to architecture='multiscale'"),
        (["--architecture", "multiscale", "--levels", "4"], "--levels: image_size 8"),
        (["--temperatures", "-1"], "--temperatures"),
        (["--threads", "0"], "--threads: must be >= 1"),
        (["--batch-size", "x"], "invalid int value"),
        (["--image-size", "4"], "the digits are 1x8x8"),
        (["--clamp", "1.5"], "--clamp: only applies with scale_fn='exp'"),
    ],
)
def test_bad_flags_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        train_glow.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_resume_errors(tmp_path, capsys):
    run(tmp_path, "--epochs", "1")
    with pytest.raises(SystemExit, match="differs from the flags"):
        run(tmp_path, "--epochs", "2", "--resume", "auto", "--hidden", "32")
    with pytest.raises(CheckpointError, match="not found"):
        run(tmp_path, "--resume", str(tmp_path / "missing.pt"))
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "config": {}, "extra": {}, "step": 3}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint written by train_glow.py"):
        run(tmp_path, "--resume", str(foreign))
    fresh = run(tmp_path / "empty", "--epochs", "1", "--resume", "auto")
    assert fresh["step"] == 51
    assert "no checkpoint" in capsys.readouterr().err


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        train_glow.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--architecture",
        "--permutation",
        "--scale-fn",
        "--epochs",
        "--resume",
        "--temperatures",
        "--no-fd",
        "--threads",
    ):
        assert flag in text, flag


def test_divergence_stops_with_a_clear_message(tmp_path):
    with pytest.raises(SystemExit, match="training diverged: 2 consecutive non-finite"):
        run(tmp_path, "--epochs", "1", "--lr", "1e30", "--max-nonfinite", "2")


def test_mid_epoch_resume_needs_the_same_batch_size(tmp_path):
    def interrupt(step: int, loss: float) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    run(tmp_path, "--epochs", "1", callback=interrupt)
    with pytest.raises(SystemExit, match="resume with the same batch size"):
        run(tmp_path, "--epochs", "1", "--resume", "auto", "--batch-size", "16")
