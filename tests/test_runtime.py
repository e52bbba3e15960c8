"""Tests for common/runtime.py: device, AMP, signals, divergence guard, logging helpers."""

from __future__ import annotations

import io
import math
import os
import random
import signal
import threading
import time

import numpy as np
import pytest
import torch

from common.runtime import (
    GracefulInterrupt,
    NonFiniteGuard,
    ProgressLogger,
    TensorBoardLogger,
    TrainingDiverged,
    amp_dtype,
    autocast_context,
    get_rank,
    get_world_size,
    is_main_process,
    make_grad_scaler,
    resolve_device,
    seed_everything,
    set_num_threads,
)

# -- device / AMP -----------------------------------------------------------------------------


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("cuda:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_resolve_device_without_cuda():
    for name in ("cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device(name)


def test_autocast_cpu_is_bf16():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context("cpu", enabled=True):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_context(torch.device("cpu"), enabled=False):
        assert (a @ b).dtype == torch.float32
    assert amp_dtype("cpu") == torch.bfloat16 and amp_dtype("cuda") == torch.float16


def test_grad_scaler_disabled_on_cpu_has_same_interface():
    scaler = make_grad_scaler("cpu", enabled=True)
    assert not scaler.is_enabled()
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.5)
    loss = (w * 2).sum()
    assert scaler.scale(loss) is loss
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    assert torch.equal(w.detach(), torch.zeros(2))
    scaler.load_state_dict(scaler.state_dict())


# -- seeds / threads / distributed ------------------------------------------------------------


def test_seed_everything():
    seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_set_num_threads():
    current = torch.get_num_threads()
    assert set_num_threads(None) == current
    assert set_num_threads(1) == 1
    set_num_threads(current)


def test_rank_helpers_without_process_group(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert get_rank() == 0 and get_world_size() == 1 and is_main_process()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert get_rank() == 2 and get_world_size() == 4 and not is_main_process()


# -- signals ----------------------------------------------------------------------------------


def _wait_for(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.001)  # Python runs signal handlers between bytecodes of the main thread
    return predicate()


def test_graceful_interrupt_sigterm_sets_flag_and_restores():
    before_term = signal.getsignal(signal.SIGTERM)
    before_int = signal.getsignal(signal.SIGINT)
    with GracefulInterrupt() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(lambda: stop.requested)
        assert stop.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM only keeps the flag set
        time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) == before_term
    assert signal.getsignal(signal.SIGINT) == before_int


def test_graceful_interrupt_second_sigint_raises():
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background
    with pytest.raises(KeyboardInterrupt), GracefulInterrupt() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert _wait_for(lambda: stop.requested)
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(lambda: False, timeout=1.0)
    assert signal.getsignal(signal.SIGINT) == before


def test_graceful_interrupt_is_noop_off_main_thread():
    before = signal.getsignal(signal.SIGTERM)
    seen = {}

    def worker():
        with GracefulInterrupt() as stop:
            seen["active"] = stop.active
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"active": False, "handler": before}


# -- divergence guard -------------------------------------------------------------------------


def test_nonfinite_guard_counts_and_raises(tmp_path):
    guard = NonFiniteGuard(max_consecutive=3)
    assert guard.check(torch.tensor(1.0))
    assert not guard.check(torch.tensor(float("nan")))
    assert not guard.check(float("inf"))
    assert guard.consecutive == 2
    assert guard.check(0.5)  # a finite loss resets the run
    assert guard.consecutive == 0 and guard.total_skipped == 2
    assert not guard.check(1.0, grad_norm=torch.tensor(math.inf))
    guard.note_checkpoint(tmp_path / "last.pt")
    assert not guard.check(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TrainingDiverged, match="3 consecutive.*step 42.*last.pt") as exc:
        guard.check(torch.tensor(float("-inf")), step=42)
    assert exc.value.checkpoint == tmp_path / "last.pt" and exc.value.step == 42
    restored = NonFiniteGuard(3)
    restored.load_state_dict(guard.state_dict())
    assert restored.total_skipped == guard.total_skipped == 5


def test_nonfinite_guard_without_checkpoint():
    guard = NonFiniteGuard(max_consecutive=1)
    with pytest.raises(TrainingDiverged, match="no checkpoint was saved yet"):
        guard.check(float("nan"))
    with pytest.raises(ValueError):
        NonFiniteGuard(0)


# -- console progress -------------------------------------------------------------------------


def test_progress_logger_plain_lines():
    out = io.StringIO()  # not a TTY -> plain lines
    with ProgressLogger(total=10, initial=2, log_every=4, file=out) as progress:
        for step in range(3, 11):
            progress.set_postfix(loss=1.0 / step)
            progress.update()
            if step == 5:
                progress.write("validation psnr 30.00")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step 4/10 | loss 0.25 | ") and "it/s | eta " in lines[0]
    assert lines[1] == "validation psnr 30.00"
    assert lines[2].startswith("step 8/10 | loss 0.125 | ")
    assert lines[3].startswith("step 10/10 | loss 0.1 | ") and lines[3].endswith("eta 0:00:00")
    assert len(lines) == 4


def test_progress_logger_tqdm_and_disabled():
    out = io.StringIO()
    with ProgressLogger(total=5, use_tqdm=True, file=out) as progress:
        progress.set_postfix({"loss": torch.tensor(0.5)})
        progress.update(5)
    assert "5/5" in out.getvalue() and "loss=0.5" in out.getvalue()
    quiet = io.StringIO()
    with ProgressLogger(total=5, enabled=False, file=quiet) as progress:
        progress.update(5)
        progress.write("hidden")
    assert quiet.getvalue() == ""


# -- TensorBoard ------------------------------------------------------------------------------


def test_tensorboard_logger_writes_readable_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLogger(tmp_path / "tb") as tb:
        tb.scalar("loss/total", torch.tensor(1.5), step=1)
        tb.scalars({"psnr": 30.0, "ssim": 0.9}, step=2, prefix="val")
        tb.image("sample", torch.rand(3, 8, 8) * 2 - 0.5, step=2)
        tb.images("batch", torch.rand(4, 3, 8, 8), step=2)
        tb.text("config", "| a | b |\n|---|---|\n| 1 | 2 |")
        tb.flush()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/total", "val/psnr", "val/ssim"} <= set(tags["scalars"])
    assert {"sample", "batch"} <= set(tags["images"])
    assert events.Scalars("loss/total")[0].value == 1.5
    assert events.Scalars("val/psnr")[0].step == 2


def test_tensorboard_logger_disabled_is_noop(tmp_path, monkeypatch):
    tb = TensorBoardLogger(tmp_path / "off", enabled=False)
    tb.scalar("x", 1.0, 0)
    tb.scalars({"y": 1.0}, 0)
    tb.image("i", torch.zeros(3, 2, 2), 0)
    tb.text("t", "hi")
    tb.close()
    monkeypatch.setenv("RANK", "1")  # not the main process
    assert TensorBoardLogger(tmp_path / "rank1").writer is None
    assert not (tmp_path / "off").exists() and not (tmp_path / "rank1").exists()
