"""train_irn_color.py: one tiny IRN-Color training step, its checkpoint and logs, exact resume,
fine-tuning, and the refusals that keep IRN and IRN-Color checkpoints apart."""

from __future__ import annotations

import math

import pytest
import torch
from tests_support import tiny_images

import train_irn
import train_irn_color
from common.checkpoint import load_checkpoint
from irn.checkpoints import is_color_checkpoint, load_color_checkpoint
from irn.color import IRNColor

TRAIN = ["--color-couplings", "1", "--color-gc", "4", "--batch-size", "2", "--patch-size", "16"]


@pytest.fixture(scope="module")
def color_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("color")
    train_dir, val_dir = tiny_images(root)
    argv = [*TRAIN, "--data", str(train_dir), "--val-data", str(val_dir), "--val-every", "1"]
    out = train_irn_color.main(
        [*argv, "--iters", "1", "--log-every", "1", "--out", str(root / "run")]
    )
    return {"root": root, "argv": argv, "out": out, "val_dir": val_dir}


def test_training_step_writes_a_color_checkpoint(color_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, root = color_run["out"], color_run["root"]
    assert out["step"] == 1 and isinstance(out["model"], IRNColor)
    rec = out["history"][0]
    assert all(math.isfinite(rec[k]) for k in ("total", "guide", "recon", "distr", "grad_norm"))
    # the zero-initialised couplings start as RGB->YUV: gray = luma, so no guidance loss yet
    assert rec["guide"] < 1e-10 and rec["recon"] > 0 and rec["distr"] > 0
    assert set(out["val"][0]) >= {"gray_psnr", "psnr_rgb", "psnr_rgb_z0", "nocolor_psnr_rgb"}
    ckpt = load_checkpoint(root / "run" / "last.pt")
    assert ckpt["config"]["task"] == "color"
    assert ckpt["config"]["model"] == {
        "couplings": 1,
        "clamp": 1.0,
        "clamp_tightness": 1.0,
        "gc": 4,
        "init": "xavier",
        "learnable_transform": True,
    }
    assert "best_psnr_rgb" in ckpt["extra"]
    assert is_color_checkpoint(root / "run" / "last.pt")
    assert not is_color_checkpoint(root / "missing.pt")
    model, info = load_color_checkpoint(root / "run" / "last.pt")
    assert info["task"] == "color" and info["step"] == 1
    for key, value in out["model"].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    acc = EventAccumulator(str(root / "run" / "tb"), size_guidance={"images": 0})
    acc.Reload()
    names = ("1_rgb", "2_gray", "3_rgb_restored", "4_abs_error_x4")
    assert {f"val_images/{n}" for n in names} <= set(acc.Tags()["images"])
    assert {"val/gray_psnr", "val/psnr_rgb", "train/loss_guide"} <= set(acc.Tags()["scalars"])


def test_resume_continues_the_color_run(color_run, tmp_path):
    argv = [*color_run["argv"], "--val-every", "100", "--save-every", "1"]
    full = train_irn_color.main([*argv, "--iters", "2", "--out", str(tmp_path / "a")])
    train_irn_color.main([*argv, "--iters", "1", "--out", str(tmp_path / "b")])
    rest = train_irn_color.main(
        [*argv, "--iters", "2", "--out", str(tmp_path / "b"), "--resume", "auto"]
    )
    assert rest["step"] == 2 and len(rest["history"]) == 1
    assert rest["history"][0]["total"] == pytest.approx(full["history"][1]["total"], rel=1e-5)
    # the IRN script refuses to continue an IRN-Color run, naming both jobs
    with pytest.raises(SystemExit, match="a 'color' run, this script trains 'rescale'"):
        train_irn.main(
            ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "2", "--patch-size", "16"]
            + ["--data", argv[argv.index("--data") + 1], "--iters", "3"]
            + ["--out", str(tmp_path / "b"), "--resume", "auto"]
        )


def test_init_weights_fine_tunes_a_color_checkpoint_and_refuses_it_for_an_irn(color_run, capsys):
    """``train_irn_color.py --init-weights`` starts from the IRN-Color checkpoint's weights (lr
    1e-12: one step leaves them there); the same file for an IRN is refused, naming the task."""
    root, ckpt = color_run["root"], color_run["root"] / "run" / "last.pt"
    start = {k: v.clone() for k, v in color_run["out"]["model"].state_dict().items()}
    tuned = train_irn_color.main(
        [*color_run["argv"], "--iters", "1", "--lr", "1e-12", "--out", str(root / "tuned"),
         "--init-weights", str(ckpt)]
    )  # fmt: skip
    assert f"Fine-tuning weights after 1 iterations from {ckpt}" in capsys.readouterr().out
    for k, v in tuned["model"].state_dict().items():
        assert torch.allclose(v, start[k], atol=1e-9), k
    with pytest.raises(
        SystemExit, match=r"an IRN-Color checkpoint; fine-tune it with train_irn_c"
    ):
        train_irn.main(["--iters", "1", "--out", str(root / "irn"), "--init-weights", str(ckpt)])


def test_flags_of_the_other_job_are_refused(color_run, capsys):
    """IRN's rescaling flags do not exist here, and ``train_irn.py --task color`` (the former
    way to train IRN-Color) says where IRN-Color training went."""
    for argv in ([*TRAIN, "--scale", "2"], [*TRAIN, "--sr-mode"], [*TRAIN, "--gc", "8"]):
        with pytest.raises(SystemExit):
            train_irn_color.main([*argv, "--iters", "1"])
        assert "unrecognized arguments" in capsys.readouterr().err, argv
    with pytest.raises(SystemExit, match="run python train_irn_color.py with the same flags"):
        train_irn.main(["--task", "color", "--iters", "1"])
    with pytest.raises(SystemExit):
        train_irn.main(["--color-gc", "8", "--iters", "1"])
    assert "unrecognized arguments: --color-gc 8" in capsys.readouterr().err
