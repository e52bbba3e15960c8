"""End-to-end tests of train_irn.py at a tiny size (CPU, seconds)."""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests_support import tiny_images

import train_irn
import train_irn_color
from common.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from irn import training as irn_training

TINY = ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "2", "--patch-size", "16"]


@pytest.fixture
def data(tmp_path):
    train_dir, val_dir = tiny_images(tmp_path)
    return str(train_dir), str(val_dir)


def run(tmp_path, data, *extra):
    train_dir, val_dir = data
    argv = [*TINY, "--data", train_dir, "--val-data", val_dir, "--out", str(tmp_path / "run")]
    return train_irn.main([*argv, *extra])


def test_one_training_step_changes_weights_and_logs(tmp_path, data):
    torch.manual_seed(0)
    out = run(tmp_path, data, "--iters", "1", "--val-every", "1", "--log-every", "1")
    assert out["step"] == 1 and len(out["history"]) == 1
    rec = out["history"][0]
    for k in ("total", "guide", "recon", "distr", "grad_norm"):
        assert math.isfinite(rec[k])
    # the zero-initialised couplings start as Haar only: the loss terms are non-trivial
    assert rec["guide"] > 0 and rec["recon"] > 0 and rec["distr"] > 0
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["config"]["model"]["scale"] == 4
    assert ckpt["config"]["batch_size"] == 2
    assert set(out["val"][0]) >= {"psnr_y", "ssim_y", "psnr_rgb", "lr_psnr_y"}


def test_total_loss_is_the_weighted_sum_of_paper_terms(tmp_path, data):
    """The objective by hand: lambda_guide = scale^2 times the L2 guidance etc."""
    from irn.model import IRN, IRNConfig

    torch.manual_seed(0)
    model = IRN(IRNConfig(scale=2, blocks_per_level=1, gc=4))
    hr = torch.rand(2, 3, 8, 8)
    lr_ref = torch.rand(2, 3, 4, 4)
    cfg = train_irn.IRNTrainConfig()
    gen = torch.Generator().manual_seed(5)
    noise = train_irn.sample_noise(model, hr, cfg, gen)
    losses = train_irn.compute_losses(model, hr, lr_ref, cfg, noise, 4.0)
    y, _ = model(hr)
    guide = ((y[:, :3] - lr_ref) ** 2).sum() / 2
    distr = (y[:, 3:] ** 2).sum() / 2
    z = torch.randn(y[:, 3:].shape, generator=torch.Generator().manual_seed(5))
    lr_q = (y[:, :3].clamp(0, 1) * 255).round() / 255
    x_rec, _ = model.inverse(torch.cat([lr_q, z], 1))
    recon = torch.sqrt((x_rec - hr) ** 2 + 1e-6).sum() / 2
    assert torch.allclose(losses["guide"], guide)
    assert torch.allclose(losses["distr"], distr)
    assert torch.allclose(losses["recon"], recon, rtol=1e-5)
    assert torch.allclose(losses["total"], 4 * guide + recon + distr, rtol=1e-5)


@pytest.mark.parametrize("extra", [[], ["--actnorm", "--jpeg-quality-range", "40", "90"]])
def test_micro_batches_give_the_whole_batchs_update(tmp_path, data, extra):
    """--micro-batch 2 of a batch of 4: the same losses and weights as the unchunked run (same
    z' and JPEG draws, ActNorm initialised on the whole batch), up to float32 round-off. (Checked
    to fail when the chunks draw their own z' or JPEG qualities, or ActNorm initialises on the
    first chunk.)"""
    flags = ["--iters", "3", "--batch-size", "4", "--val-every", "100", "--log-every", "1"]
    whole = run(tmp_path / "whole", data, *flags, *extra)
    chunked = run(tmp_path / "chunked", data, *flags, *extra, "--micro-batch", "2")
    for a, b in zip(whole["history"], chunked["history"], strict=True):
        for k in ("total", "guide", "recon", "distr", "grad_norm"):
            assert math.isclose(a[k], b[k], rel_tol=2e-5), (k, a[k], b[k])
    wa, wb = whole["model"].state_dict(), chunked["model"].state_dict()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-6), k


def test_micro_batch_must_divide_the_batch(tmp_path, data, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path, data, "--iters", "1", "--batch-size", "4", "--micro-batch", "3")
    assert "--micro-batch: 3 must divide --batch-size 4" in capsys.readouterr().err


def test_resume_gives_the_identical_loss_sequence(tmp_path, data):
    full = run(tmp_path / "a", data, "--iters", "6", "--save-every", "3", "--val-every", "100")
    first = run(tmp_path / "b", data, "--iters", "3", "--save-every", "3", "--val-every", "100")
    rest = run(
        tmp_path / "b",
        data,
        "--iters",
        "6",
        "--save-every",
        "3",
        "--val-every",
        "100",
        "--resume",
        "auto",
    )
    seq_full = [h["total"] for h in full["history"]]
    seq_resumed = [h["total"] for h in first["history"] + rest["history"]]
    assert len(seq_resumed) == 6
    assert seq_full == seq_resumed  # bit-identical


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path, data):
    """SIGTERM mid-run: the loop saves last.pt and stops; nothing written is lost."""
    original = train_irn.compute_losses
    calls = {"n": 0}

    def compute_and_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    train_irn.compute_losses = compute_and_signal
    try:
        out = run(tmp_path, data, "--iters", "50", "--val-every", "100")
    finally:
        train_irn.compute_losses = original
    assert out["interrupted"] and out["step"] == 3
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["extra"]["kind"] == "interrupted"
    again = run(tmp_path, data, "--iters", "5", "--val-every", "100", "--resume", "auto")
    assert again["step"] == 5 and len(again["history"]) == 2


def test_amp_bf16_step_on_cpu(tmp_path, data):
    out = run(tmp_path, data, "--iters", "2", "--amp", "--val-every", "2")
    assert all(math.isfinite(h["total"]) for h in out["history"])
    assert math.isfinite(out["val"][0]["psnr_y"])


def test_nonfinite_losses_skip_then_stop_naming_the_checkpoint(tmp_path, data, monkeypatch):
    original = train_irn.compute_losses
    calls = {"n": 0}

    def nan_after_two(*args, **kwargs):
        calls["n"] += 1
        losses = original(*args, **kwargs)
        if calls["n"] > 2:
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(train_irn, "compute_losses", nan_after_two)
    with pytest.raises(SystemExit, match=r"ckpt_00000002.pt"):
        run(
            tmp_path,
            data,
            "--iters",
            "20",
            "--save-every",
            "2",
            "--max-nonfinite",
            "3",
            "--val-every",
            "100",
        )
    assert (tmp_path / "run" / "ckpt_00000002.pt").is_file()


def test_tensorboard_has_scalars_and_images(tmp_path, data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tmp_path, data, "--iters", "2", "--val-every", "2", "--log-every", "1")
    acc = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    expected = {
        "train/loss_total",
        "train/loss_guide",
        "train/loss_recon",
        "train/loss_distr",
        "train/lr",
        "train/grad_norm",
        "train/iters_per_s",
        "val/psnr_y",
        "val/ssim_y",
        "val/psnr_rgb",
        "val/lr_psnr_y",
        "val_bicubic/psnr_y",
    }
    assert expected <= scalars, expected - scalars
    images = set(acc.Tags()["images"])
    assert {
        f"val_images/{n}"
        for n in ("1_hr", "2_bicubic_lr", "3_lr_irn", "4_hr_irn", "5_abs_error_x4")
    } <= images
    assert any("config" in t for t in acc.Tags()["tensors"])


def test_bad_input_gives_clear_errors(tmp_path, data, capsys):
    with pytest.raises(ValueError, match=r"--data: folder .*missing does not exist"):
        train_irn.main(["--data", str(tmp_path / "missing"), "--iters", "1"])
    with pytest.raises(SystemExit):
        train_irn.main(["--patch-size", "30", "--iters", "1"])
    assert "--patch-size 30 must be a multiple of --scale 4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_irn.main(["--in-channels", "1", "--iters", "1"])
    assert "--in-channels 1: train_irn.py trains on RGB images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_irn.main(["--y-channel-usage", "2"])
    assert "--y-channel-usage" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"x.png"):
        train_irn.main([*TINY, "--data", str(bad), "--iters", "1"])


def test_cli_runs_as_a_script(tmp_path, data):
    train_dir, val_dir = data
    cmd = [
        sys.executable,
        "train_irn.py",
        *TINY,
        "--data",
        train_dir,
        "--val-data",
        val_dir,
        "--iters",
        "2",
        "--val-every",
        "2",
        "--out",
        str(tmp_path / "cli"),
    ]
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "Precision: float32 on cpu (no --amp)."  # the first line says which
    assert lines[1].startswith("Training on")
    assert lines[-1].startswith("Validation PSNR-Y after 2 iterations: IRN")
    missing = subprocess.run(
        [sys.executable, "train_irn.py", "--data", str(tmp_path / "nope")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "nope does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_cache_is_said_and_its_budget_is_shared_by_local_processes(
    tmp_path, data, capsys, monkeypatch
):
    run(tmp_path / "a", data, "--iters", "1", "--val-every", "100")
    assert "decoded in memory (0.00 GiB)" in capsys.readouterr().out
    run(tmp_path / "b", data, "--iters", "1", "--val-every", "100", "--cache", "off")
    assert "decoded per patch from disk (--cache on keeps them" in capsys.readouterr().out
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    one = irn_training.cache_budget()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert abs(one - total / 3) <= 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert abs(irn_training.cache_budget() - one / 4) <= 1


def test_sample_photo_run_ends_with_the_bicubic_comparison(tmp_path, capsys):
    out = train_irn.main(
        [
            *TINY,
            "--iters",
            "1",
            "--val-every",
            "1",
            "--out",
            str(tmp_path / "s"),
            "--no-tensorboard",
            "--sample-set",
            "classic",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Precision: float32")
    assert lines[1].startswith(
        "No --data given: training on the 6 built-in photos of the 'classic'"
    )
    assert out["val"][-1]["psnr_y"] < out["bicubic"]["psnr_y"]
    assert lines[-2].startswith("IRN is still below bicubic after this short run")
    assert lines[-1].startswith("Validation PSNR-Y after 1 iterations: IRN")
    assert f"vs bicubic {out['bicubic']['psnr_y']:.2f} dB" in lines[-1]
    assert out["bicubic"]["psnr_y"] == pytest.approx(28.39, abs=0.005)


def test_init_weights_fine_tunes_from_ours_or_the_authors_checkpoint(tmp_path, data, capsys):
    """--init-weights starts from the file's weights with a fresh optimiser and iteration
    count, from this script's checkpoint and from the authors' layout alike (lr 1e-12: one step
    leaves the weights where they started)."""
    from irn.checkpoints import to_authors_state_dict

    base = run(tmp_path / "base", data, "--iters", "2", "--val-every", "100")
    trained = {k: v.clone() for k, v in base["model"].state_dict().items()}
    fresh = run(tmp_path / "fresh", data, "--iters", "1", "--val-every", "100", "--lr", "1e-12")
    assert not torch.allclose(
        fresh["model"].operations[1].F.conv5.weight, trained["operations.1.F.conv5.weight"]
    )
    authors = tmp_path / "authors.pth"
    torch.save(to_authors_state_dict(base["model"]), authors)
    for source, said in (
        (tmp_path / "base" / "run" / "last.pt", "weights after 2 iterations"),
        (authors, "the IRN authors' released weights"),
    ):
        out_dir = tmp_path / f"tuned_{source.suffix[1:]}"
        tuned = run(
            out_dir, data, "--iters", "1", "--val-every", "100", "--lr", "1e-12",
            "--init-weights", str(source),
        )  # fmt: skip
        assert f"Fine-tuning {said} from {source}" in capsys.readouterr().out
        for k, v in tuned["model"].state_dict().items():
            assert torch.allclose(v, trained[k], atol=1e-9), k
        ckpt = torch.load(out_dir / "run" / "last.pt", weights_only=True)
        assert ckpt["step"] == 1
        assert all(int(s["step"]) == 1 for s in ckpt["optimizer"]["state"].values())
    # resuming a fine-tuned run takes the weights from its checkpoint, not from --init-weights
    again = run(
        tmp_path / "tuned_pt", data, "--iters", "2", "--val-every", "100", "--lr", "1e-12",
        "--init-weights", str(authors), "--resume", "auto",
    )  # fmt: skip
    assert again["step"] == 2
    assert "not used, the resumed checkpoint has them" in capsys.readouterr().out


def test_init_weights_refuses_another_architecture_naming_the_fields(tmp_path, data):
    run(tmp_path / "base", data, "--iters", "1", "--val-every", "100")
    ckpt = str(tmp_path / "base" / "run" / "last.pt")
    with pytest.raises(SystemExit, match=r"--init-weights .*last.pt: the checkpoint's model "
                       r"differs .*gc: checkpoint 4, flags 8"):  # fmt: skip
        run(tmp_path / "b", data, "--iters", "1", "--gc", "8", "--init-weights", ckpt)
    with pytest.raises(SystemExit, match=r"not an IRN-Color checkpoint.*fine-tune an IRN with"):
        train_irn_color.main(
            ["--iters", "1", "--out", str(tmp_path / "c"), "--init-weights", ckpt]
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"--init-weights: checkpoint not found: .*nope.pt"):
        run(tmp_path / "d", data, "--iters", "1", "--init-weights", str(tmp_path / "nope.pt"))
    # --init only decides how fresh weights are drawn: a kaiming run may start from xavier
    # weights (lr 1e-12: after one step the weights are still the file's)
    base = torch.load(ckpt, weights_only=True)["model"]
    tuned = run(
        tmp_path / "e", data, "--iters", "1", "--val-every", "100", "--lr", "1e-12",
        "--init", "kaiming", "--init-weights", ckpt,
    )  # fmt: skip
    for k, v in tuned["model"].state_dict().items():
        assert torch.allclose(v, base[k], atol=1e-9), k


def test_a_new_run_does_not_replace_another_runs_checkpoints(tmp_path, data):
    """A fresh run into an --out holding checkpoints stops before training, naming the folder,
    and leaves the files as they were; --resume auto continues, --overwrite replaces them."""
    run(tmp_path, data, "--iters", "1", "--val-every", "100")
    last = tmp_path / "run" / "last.pt"
    before = last.read_bytes()
    with pytest.raises(SystemExit, match=r"--out .*run already holds checkpoints .*last.pt"):
        run(tmp_path, data, "--iters", "2", "--val-every", "100")
    assert last.read_bytes() == before
    assert run(tmp_path, data, "--iters", "2", "--resume", "auto")["step"] == 2
    fresh = run(tmp_path, data, "--iters", "1", "--val-every", "100", "--overwrite")
    assert fresh["step"] == 1
    assert torch.load(last, weights_only=True)["step"] == 1


def test_a_resume_validated_another_way_restarts_the_best_score(tmp_path, data, capsys):
    """best.pt compares scores measured one way: a checkpoint from before the method was
    recorded (a --gaussian-scale 0 run then validated with z = 0, now with the z estimate),
    or a resume with another --gaussian-scale, restarts the best score; the same way keeps it."""
    common = ["--save-every", "2", "--val-every", "2", "--gaussian-scale", "0"]
    run(tmp_path, data, "--iters", "2", *common)
    out_dir = tmp_path / "run"
    best = load_checkpoint(out_dir / "best.pt")
    assert best["extra"]["best_method"] == "z estimated from LR' (window 7)"
    older = load_checkpoint(checkpoint_path(out_dir, 2))  # as before the method was recorded
    del older["extra"]["best_method"]
    older["extra"]["best_psnr_y"] = 99.0  # z = 0 scored it; the estimate scores lower
    save_checkpoint(checkpoint_path(out_dir, 2), older)
    capsys.readouterr()
    run(tmp_path, data, "--iters", "4", *common, "--resume", str(checkpoint_path(out_dir, 2)))
    out = capsys.readouterr().out
    assert (
        "best psnr_y (99.00) was measured with z = 0, this run validates with z estimated" in out
    )
    assert load_checkpoint(out_dir / "best.pt")["step"] == 4  # replaced, though below 99 dB
    run(tmp_path, data, "--iters", "6", *common, "--resume", "auto")
    assert "the best score restarts" not in capsys.readouterr().out  # measured the same way
    run(tmp_path, data, "--iters", "8", *common[:4], "--gaussian-scale", "0.5", "--resume", "auto")
    out = capsys.readouterr().out
    assert (
        "estimated from LR' (window 7), this run validates with z sampled at temperature 0.5"
        in out
    )
    assert load_checkpoint(out_dir / "best.pt")["extra"]["best_method"].endswith("0.5")
