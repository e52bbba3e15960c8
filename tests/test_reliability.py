"""Nothing lost, nothing misread: outputs checked before work, atomic writes, resume edges,
numbers, unsafe pickles, EXIF and float images, tiny and huge images (CPU, tiny models).

Each test was checked to fail without the change it covers."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import types
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from tests_support import smooth_image, tiny_images

import rescale
import train_glow
import train_irn
from common import atomic, outputs
from common.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from common.images import ImageReadError, load_image, save_image
from common.runtime import NonFiniteGuard
from common.training import TrainState, refuse_nonfinite_weights, save_state
from irn import cli, limits
from irn import training as irn_training

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "2", "--patch-size", "16"]
TINY += ["--no-tensorboard", "--threads", "1"]


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if atomic.is_temp_name(p.name)]


# ---------------------------------------------------------------------------------------------
# 2. Atomic writes
# ---------------------------------------------------------------------------------------------


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.json"
    atomic.atomic_write_json(target, {"old": 1})

    def half_then_fail(f):
        f.write(b'{"new": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write(target, half_then_fail)
    assert target.read_text() == '{\n  "old": 1\n}\n'
    assert temps(tmp_path) == []


@pytest.mark.parametrize("writer", ["image", "checkpoint", "lr_png", "json"])
def test_every_writer_is_atomic(tmp_path, monkeypatch, writer):
    """A failure at the rename (after all bytes were written) leaves neither a final file nor a
    temporary one, for images, checkpoints, the LR PNG and the JSON report."""
    from irn.eval_io import write_json

    def boom(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(atomic.os, "replace", boom)
    img = np.zeros((8, 8, 3), np.uint8)
    calls = {
        "image": lambda: save_image(tmp_path / "a.png", img),
        "checkpoint": lambda: save_checkpoint(tmp_path / "a.pt", {"step": 1}),
        "lr_png": lambda: rescale.write_lr_png(tmp_path / "a.png", img, (32, 32), 4),
        "json": lambda: write_json(tmp_path / "a.json", {}, [], 0.0, sys.stdout),
    }
    with pytest.raises(OSError, match="rename failed"):
        calls[writer]()
    assert list(tmp_path.iterdir()) == []


def test_kill_9_mid_write_leaves_no_partial_file_and_the_next_start_removes_the_temp(tmp_path):
    """SIGKILL while the bytes are being written (a subprocess kills itself at that point): no
    file at the final path; the temporary file is removed, with a note, at the next start."""
    target = tmp_path / "run" / "last.pt"
    code = textwrap.dedent(
        f"""
        import importlib.util, os, signal
        spec = importlib.util.spec_from_file_location("atomic", {str(atomic.__file__)!r})
        writer = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(writer)  # alone: no torch import, a quick subprocess
        def write(f):
            f.write(b"x" * 100000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        writer.atomic_write({str(target)!r}, write)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    left = temps(target.parent)
    assert len(left) == 1 and left[0].stat().st_size == 100000
    said = []
    outputs.check_run_outputs(target.parent, tensorboard=False, say=said.append)
    assert temps(target.parent) == []
    assert len(said) == 1 and "removed 1 unfinished temporary file" in said[0]


def test_temps_of_a_running_process_are_kept(tmp_path):
    mine = atomic.temp_path(tmp_path / "x.pt")
    mine.write_bytes(b"partial")
    assert atomic.remove_stale_temps(tmp_path, say=None) == []
    assert mine.exists()


# ---------------------------------------------------------------------------------------------
# 1. Outputs checked before any work
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path):
    train_dir, val_dir = tiny_images(tmp_path)
    return str(train_dir), str(val_dir)


def _no_data(*args, **kwargs):
    raise AssertionError("data was loaded before the outputs were checked")


@pytest.mark.parametrize("case", ["file", "below_file", "unwritable", "logdir_file"])
def test_training_outputs_are_checked_before_any_data(tmp_path, data, monkeypatch, case):
    monkeypatch.setattr(irn_training, "load_data", _no_data)
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    out, extra = tmp_path / "run", []
    if case == "file":
        out = blocker
    elif case == "below_file":
        out = blocker / "run"
    elif case == "unwritable":

        def denied(folder):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(outputs, "_probe_write", denied)
    else:
        extra = ["--tensorboard", "--logdir", str(blocker)]
    argv = [*TINY, "--data", data[0], "--iters", "1", "--out", str(out), *extra]
    with pytest.raises(outputs.OutputError) as info:
        train_irn.main(argv)
    message = str(info.value)
    assert "\n" not in message
    assert ("--logdir" if case == "logdir_file" else "--out") in message
    assert str(blocker if case != "unwritable" else out) in message


def test_evaluate_outputs_are_checked_before_any_work(tmp_path, capsys):
    import evaluate

    photo = tmp_path / "data" / "a.png"
    save_image(photo, smooth_image(48, 48, 0))
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    base = ["--method", "bicubic", "--scale", "2", "--data", str(photo.parent)]
    for flags, expected in [
        (["--json", str(tmp_path)], "--json"),
        (["--json", str(blocker / "r.json")], "lies below"),
        (["--json", str(tmp_path / "r.txt")], "unsupported extension"),
        (["--save-images", str(blocker)], "--save-images"),
    ]:
        with pytest.raises(SystemExit) as info:
            evaluate.main([*base, *flags])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["down", "up"])
def test_rescale_refuses_to_overwrite_its_input(tmp_path, command, capsys, monkeypatch):
    photo = tmp_path / "a.png"
    save_image(photo, smooth_image(32, 32, 0))
    before = photo.read_bytes()
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    for out in ["a.png", "sub/../a.png", str(photo)]:
        with pytest.raises(SystemExit) as info:
            rescale.main([command, "a.png", out, "--checkpoint", "missing.pt"])
        assert info.value.code == 2
        assert "is the input file" in capsys.readouterr().err
    assert photo.read_bytes() == before


def test_rescale_output_below_a_file_is_refused_before_the_model(tmp_path, capsys):
    photo = tmp_path / "a.png"
    save_image(photo, smooth_image(32, 32, 0))
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    argv = ["down", str(photo), str(blocker / "lr.png"), "--checkpoint", "missing.pt"]
    with pytest.raises(SystemExit) as info:
        rescale.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "lies below" in err and "missing.pt" not in err


# ---------------------------------------------------------------------------------------------
# 6. Numbers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "flags", "message"),
    [
        (train_irn, ["--lr", "inf"], "--lr"),
        (train_irn, ["--lr", "nan"], "--lr"),
        (train_irn, ["--lr", "0"], "--lr"),
        (train_irn, ["--threads", "-1"], "--threads"),
        (train_irn, ["--patch-size", "4"], "--patch-size 4 is too small"),
        (train_glow, ["--lr", "inf"], "--lr"),
        (train_glow, ["--threads", "0"], "--threads"),
    ],
)
def test_bad_numbers_are_refused_as_flags(script, flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        script.parse_args(flags)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def _state(nan: bool) -> TrainState:
    model = torch.nn.Linear(2, 2)
    if nan:
        with torch.no_grad():
            model.weight[0, 0] = float("nan")
    return TrainState(model, torch.optim.Adam(model.parameters()), NonFiniteGuard(3), step=7)


def test_non_finite_final_weights_exit_non_zero_naming_the_last_good_checkpoint(tmp_path):
    good = _state(False)
    save_state(tmp_path / "good.pt", good, {}, {})
    bad = _state(True)
    bad.guard = good.guard
    save_state(tmp_path / "nan.pt", bad, {}, {})  # not a good checkpoint
    assert bad.guard.last_checkpoint == tmp_path / "good.pt"
    with pytest.raises(SystemExit) as info:
        refuse_nonfinite_weights(bad)
    assert "non-finite weights" in str(info.value) and "good.pt" in str(info.value)
    refuse_nonfinite_weights(good)  # finite: nothing happens


# ---------------------------------------------------------------------------------------------
# 7. Unsafe pickles
# ---------------------------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_an_unsafe_pickle_is_refused_plainly(tmp_path):
    from irn.checkpoints import load_irn

    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)
    for load in (load_checkpoint, load_irn):
        with pytest.raises(ValueError) as info:
            load(path)
        message = str(info.value)
        assert "holds pickled objects that safe loading refuses" in message
        assert "not loaded" in message
        assert "weights_only=False" not in message and "truncated" not in message


# ---------------------------------------------------------------------------------------------
# 8. Images: EXIF orientation, float range
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_show_it(tmp_path, orientation):
    from PIL import Image, ImageOps

    from irn.data import _image_size

    pixels = (smooth_image(6, 10, 0) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "p.png"
    Image.fromarray(pixels).save(path, exif=exif)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = load_image(path)
    assert got.shape == expected.shape
    assert np.array_equal(np.round(got * 255).astype(np.uint8), expected)
    assert _image_size(path) == expected.shape[:2]


def test_float_images_outside_0_1_are_refused(tmp_path):
    import cv2

    path = tmp_path / "f.tiff"
    cv2.imwrite(str(path), np.full((8, 8, 3), 2.0, np.float32))
    with pytest.raises(ImageReadError, match=r"outside \[0, 1\]"):
        load_image(path)
    cv2.imwrite(str(path), np.full((8, 8, 3), 0.5, np.float32))
    assert np.allclose(load_image(path), 0.5)


# ---------------------------------------------------------------------------------------------
# 3. Memory: pixel limit from the header, automatic tiling, allocation failures
# ---------------------------------------------------------------------------------------------


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A small PNG whose header claims ``width`` x ``height`` (never decoded here)."""
    from PIL import Image

    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_images_above_the_pixel_limit_are_refused_from_the_header(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    _png_claiming(bomb, 15000, 15000)
    with pytest.raises(ValueError) as info:
        limits.check_pixels(bomb, "input", limits.DEFAULT_MAX_MEGAPIXELS)
    for part in ("bomb.png", "15000x15000", "225.0 megapixels", "100", "--max-megapixels"):
        assert part in str(info.value)
    argv = ["down", str(bomb), str(tmp_path / "lr.png"), "--checkpoint", "missing.pt"]
    with pytest.raises(SystemExit):  # the checkpoint is read after the outputs, then the input
        rescale.main(argv)
    assert not (tmp_path / "lr.png").exists()


def test_tiling_switches_on_above_the_memory_budget_unless_tile_none():
    hw, gc, scale = (4000, 4000), 32, 4
    cfg = types.SimpleNamespace(tile=None, tile_overlap=2, memory_budget=0.5)
    parser = rescale.build_parser("down")
    tile = cli.resolve_tile(parser, cfg, scale, hw, gc)
    assert tile is not None and tile < 4000
    assert "tiling automatically" in cli.memory_hint(tile, hw, 0.5, gc, None)
    cfg.tile = "none"
    assert cli.resolve_tile(parser, cfg, scale, hw, gc) is None
    assert "--tile none" in cli.memory_hint(None, hw, 0.5, gc, "none")
    cfg.tile, cfg.memory_budget = None, 1000.0
    assert cli.resolve_tile(parser, cfg, scale, hw, gc) is None


def test_an_allocation_failure_becomes_one_line_suggesting_tiling(monkeypatch, tmp_path):
    def oom(run, src, dst):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 135000000000 bytes. Error code 12"
        )

    monkeypatch.setattr(rescale, "downscale_file", oom)
    with pytest.raises(rescale.FileError) as info:
        rescale.rescale_file(None, "down", tmp_path / "a.png", tmp_path / "b.png")
    message = str(info.value)
    assert "out of memory" in message and "--tile" in message and "\n" not in message
    assert limits.is_allocation_failure(torch.OutOfMemoryError("CUDA out of memory"))
    assert not limits.is_allocation_failure(RuntimeError("shape mismatch"))


# ---------------------------------------------------------------------------------------------
# 4. Tiny images
# ---------------------------------------------------------------------------------------------


def test_the_skip_rule_covers_the_lr_metrics():
    import evaluate

    hr = np.zeros((29, 37, 3), np.float32)  # x4: LR 9x7, below SSIM's 11 pixels
    assert "11 LR pixels" in evaluate.too_small(4, hr)
    assert evaluate.too_small(4, hr, lr_metrics=False) is None  # HR alone: 28 >= 20 px
    assert evaluate.too_small(4, np.zeros((44, 44, 3))) is None


def test_small_validation_images_are_skipped_before_training(tmp_path, data, capsys):
    train_dir, val_dir = data
    save_image(Path(val_dir) / "tiny.png", smooth_image(29, 37, 3))
    out = tmp_path / "run"
    argv = [*TINY, "--data", train_dir, "--val-data", val_dir, "--out", str(out)]
    result = train_irn.main([*argv, "--iters", "1", "--val-every", "1"])
    err = capsys.readouterr().err
    assert "tiny.png" in err and "skipping 1 image(s)" in err
    assert result["step"] == 1 and (out / "last.pt").is_file() and result["val"]


# ---------------------------------------------------------------------------------------------
# 5. Resume
# ---------------------------------------------------------------------------------------------


def _train(tmp_path, data, *extra):
    train_dir, _ = data
    argv = [*TINY, "--data", train_dir, "--out", str(tmp_path / "run"), "--val-every", "100"]
    return train_irn.main([*argv, *extra])


def _poison(path: Path, key: str = "model") -> None:
    ckpt = torch.load(path, weights_only=True)
    if key == "model":
        name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
        ckpt["model"][name].view(-1)[0] = float("nan")
    else:
        state = next(iter(ckpt["optimizer"]["state"].values()))
        state["exp_avg"].view(-1)[0] = float("inf")
    torch.save(ckpt, path)


@pytest.mark.parametrize("key", ["model", "optimizer"])
def test_non_finite_checkpoints_are_refused_on_resume(tmp_path, data, key):
    _train(tmp_path, data, "--iters", "1")
    last = tmp_path / "run" / "last.pt"
    _poison(last, key)
    with pytest.raises(CheckpointError, match="NaN or inf"):
        _train(tmp_path, data, "--iters", "2", "--resume", str(last))
    with pytest.raises(CheckpointError, match="NaN or inf"):
        restore_checkpoint(last, model=None, optimizer=None, restore_rng=False)


def test_resume_auto_falls_back_over_unusable_checkpoints(tmp_path, data):
    _train(tmp_path, data, "--iters", "3", "--save-every", "1", "--keep-checkpoints", "3")
    run = tmp_path / "run"
    (run / "last.pt").unlink()
    newest = run / "ckpt_00000003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated by a kill
    _poison(run / "ckpt_00000002.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert find_latest_checkpoint(run) == run / "ckpt_00000001.pt"
    text = " ".join(str(w.message) for w in caught)
    assert "ckpt_00000003.pt" in text and "ckpt_00000002.pt" in text


def test_optimiser_flags_on_resume_are_refused_or_taken_from_the_checkpoint(
    tmp_path, data, capsys
):
    _train(tmp_path, data, "--iters", "1", "--lr", "1e-4")
    with pytest.raises(SystemExit, match="--lr 0.001"):
        _train(tmp_path, data, "--iters", "2", "--resume", "auto", "--lr", "1e-3")
    result = _train(tmp_path, data, "--iters", "2", "--resume", "auto", "--grad-clip", "5")
    said = capsys.readouterr().out
    assert "--lr 0.0001" in said and "--grad-clip 10.0 -> 5.0" in said
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert result["step"] == 2 and ckpt["config"]["lr"] == 1e-4
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 1e-4


def test_a_setting_the_checkpoint_predates_is_reported_on_resume(tmp_path, data, capsys):
    _train(tmp_path, data, "--iters", "1")
    last = tmp_path / "run" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    del ckpt["config"]["lambda_range"]  # as in a checkpoint written before the flag existed
    torch.save(ckpt, last)
    capsys.readouterr()
    result = _train(tmp_path, data, "--iters", "2", "--resume", "auto", "--lambda-range", "2")
    assert "--lambda-range 0.0 (default; not recorded) -> 2.0" in capsys.readouterr().out
    assert result["step"] == 2
    assert torch.load(last, weights_only=False)["config"]["lambda_range"] == 2.0


def test_resuming_at_or_past_iters_does_nothing(tmp_path, data, capsys, monkeypatch):
    _train(tmp_path, data, "--iters", "2")
    monkeypatch.setattr(irn_training, "load_data", _no_data)  # decided before reading data
    run = tmp_path / "run"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*")}
    result = _train(tmp_path, data, "--iters", "1", "--resume", "auto")
    assert "Nothing to do" in capsys.readouterr().out and result["step"] == 2
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*")} == before


def test_glow_resume_refuses_a_new_lr_and_does_nothing_past_the_epochs(tmp_path, capsys):
    glow = ["--steps", "1", "--hidden", "16", "--num-samples", "4", "--no-fd"]
    glow += ["--no-tensorboard", "--out", str(tmp_path), "--epochs", "1"]
    train_glow.main(glow)
    last = tmp_path / "last.pt"
    before = last.read_bytes()
    with pytest.raises(SystemExit, match="--lr 0.01"):
        train_glow.main([*glow, "--resume", "auto", "--lr", "0.01"])
    capsys.readouterr()
    result = train_glow.main([*glow, "--resume", "auto"])
    assert result["nothing_to_do"] and "Nothing to do" in capsys.readouterr().err
    assert last.read_bytes() == before
    _poison(last)
    for periodic in tmp_path.glob("ckpt_*.pt"):
        periodic.unlink()
    with pytest.raises(CheckpointError, match="NaN or inf"):
        train_glow.main([*glow, "--epochs", "2", "--resume", str(last)])


# ---------------------------------------------------------------------------------------------
# evaluate.py end to end: tiny images, automatic tiling, pixel limit, allocation failure
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def irn_ckpt(tmp_path_factory) -> Path:
    from common.checkpoint import make_checkpoint
    from irn.model import IRN, IRNConfig

    torch.manual_seed(0)
    model = IRN(IRNConfig(scale=4, blocks_per_level=1, gc=4))
    config = {"seed": 10, "model": __import__("dataclasses").asdict(model.config)}
    path = tmp_path_factory.mktemp("ckpt") / "tiny_x4.pt"
    save_checkpoint(path, make_checkpoint(model=model, config=config, step=1, include_rng=False))
    return path


def _evaluate(argv, capsys):
    import evaluate

    code = evaluate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_evaluate_skips_an_image_too_small_for_the_lr_metrics(irn_ckpt, tmp_path, capsys):
    save_image(tmp_path / "d" / "small.png", smooth_image(29, 37, 1))
    save_image(tmp_path / "d" / "ok.png", smooth_image(48, 48, 2))
    code, text = _evaluate(["--checkpoint", irn_ckpt, "--data", tmp_path / "d", "--draws", "1"],
                           capsys)  # fmt: skip
    assert code == 0 and "skipping small.png" in text and "11 LR pixels" in text


def test_evaluate_tiles_by_itself_above_the_memory_budget(irn_ckpt, tmp_path, capsys):
    save_image(tmp_path / "d" / "ok.png", smooth_image(96, 96, 2))
    base = ["--checkpoint", irn_ckpt, "--data", tmp_path / "d", "--draws", "1"]
    code, text = _evaluate([*base, "--memory-budget", "0.0005"], capsys)
    assert code == 0 and "tiling automatically" in text and "tiles of" in text
    code, text = _evaluate([*base, "--memory-budget", "0.0005", "--tile", "none"], capsys)
    assert code == 0 and "--tile none: it may run out of memory" in text


def test_evaluate_refuses_a_huge_image_from_its_header(irn_ckpt, tmp_path, capsys):
    (tmp_path / "d").mkdir()
    _png_claiming(tmp_path / "d" / "bomb.png", 15000, 15000)
    with pytest.raises(SystemExit) as info:
        _evaluate(["--checkpoint", irn_ckpt, "--data", tmp_path / "d"], capsys)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "bomb.png" in err and "15000x15000" in err and "--max-megapixels" in err


def test_evaluate_turns_an_allocation_failure_into_one_line(
    irn_ckpt, tmp_path, capsys, monkeypatch
):
    import evaluate

    def oom(*args, **kwargs):
        raise RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 9e10"
        )

    monkeypatch.setattr(evaluate, "_evaluate_irn", oom)
    save_image(tmp_path / "d" / "ok.png", smooth_image(48, 48, 2))
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--checkpoint", str(irn_ckpt), "--data", str(tmp_path / "d")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "ok.png: out of memory" in err and "--tile auto" in err and "Traceback" not in err


def test_a_run_ending_with_non_finite_weights_exits_non_zero_and_saves_nothing(
    tmp_path, data, monkeypatch
):
    original = irn_training.backward_and_step

    def poisoning(total, model, optimizer, scaler, cfg):
        norm = original(total, model, optimizer, scaler, cfg)
        with torch.no_grad():
            next(irn_training.unwrap(model).parameters()).view(-1)[0] = float("nan")
        return norm

    monkeypatch.setattr(irn_training, "backward_and_step", poisoning)
    with pytest.raises(SystemExit) as info:
        _train(tmp_path, data, "--iters", "1")
    assert "non-finite weights" in str(info.value) and info.value.code != 0
    assert not (tmp_path / "run" / "last.pt").exists()
