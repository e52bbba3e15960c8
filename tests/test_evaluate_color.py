"""``evaluate_color.py`` (run in-process through ``main(argv)``): the IRN-Color evaluation, and
``evaluate.py`` / ``rescale.py`` refusing an IRN-Color checkpoint with a pointer to it.

The checkpoint is written here with :func:`common.checkpoint.make_checkpoint` (the format of
``train_irn_color.py``) from a perturbed :class:`IRNColor`, so the numbers are not those of
an identity map.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flow_checks import perturb_
from tests_support import smooth_image

import evaluate
import evaluate_color
import rescale
from common.checkpoint import make_checkpoint, save_checkpoint
from common.images import load_image, save_image
from irn.color import IRNColor, IRNColorConfig
from irn.color import evaluate_color as color_metrics
from irn.model import IRN, IRNConfig


def tiny_color() -> IRNColor:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = IRNColor(IRNColorConfig(couplings=1, gc=4))
    return perturb_(model, std=0.05, seed=3).eval()


@pytest.fixture(scope="module")
def color_ckpt(tmp_path_factory) -> Path:
    model = tiny_color()
    config = {"task": "color", "model": dataclasses.asdict(model.config)}
    path = tmp_path_factory.mktemp("ckpt") / "color.pt"
    save_checkpoint(path, make_checkpoint(model=model, config=config, step=3, include_rng=False))
    return path


@pytest.fixture(scope="module")
def irn_ckpt(tmp_path_factory) -> Path:
    model = IRN(IRNConfig(scale=2, blocks_per_level=1, gc=4))
    config = {"model": dataclasses.asdict(model.config)}
    path = tmp_path_factory.mktemp("ckpt") / "irn_x2.pt"
    save_checkpoint(path, make_checkpoint(model=model, config=config, step=1, include_rng=False))
    return path


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("val")
    save_image(root / "v0.png", smooth_image(64, 72, seed=10))
    save_image(root / "sub" / "v1.png", smooth_image(48, 56, seed=11))
    save_image(root / "tiny.png", smooth_image(8, 30, seed=12))  # below the SSIM window
    return root


def fail(main, argv: list, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and ": error: " in lines[-1]  # usage, then a one-line error
    assert sum(": error: " in line for line in lines) == 1
    return err


def test_evaluate_color_metrics_json_and_images(color_ckpt, val_dir, tmp_path, capsys):
    report, saved = tmp_path / "color.json", tmp_path / "im"
    argv = ["--checkpoint", color_ckpt, "--data", val_dir, "--draws", 2, "--seed", 4]
    assert evaluate_color.main([str(a) for a in [*argv, "--json", report,
                                                 "--save-images", saved]]) == 0  # fmt: skip
    captured = capsys.readouterr()
    printed = captured.out
    assert "IRN-Color from" in printed and "step 3" in printed and "Gray:PSNR" in printed
    assert "mean (2 images)" in printed and "skipping tiny.png" in captured.err
    doc = json.loads(report.read_text())
    settings = doc["settings"]
    assert settings["task"] == "color" and settings["model_config"]["gc"] == 4
    assert settings["checkpoint_step"] == 3 and settings["command"][0] == "evaluate_color.py"
    assert (settings["draws"], settings["seed"]) == (2, 4)
    (dataset,) = doc["datasets"]
    assert dataset["num_images"] == 2 and dataset["skipped"][0]["name"] == "tiny.png"
    model = tiny_color()
    for row in dataset["images"]:
        assert row["draws"] == 2 and len(row["files"]) == 2
        assert all(Path(f).is_file() for f in row["files"])
        direct = color_metrics(model, [load_image(val_dir / row["name"])], draws=2, seed=4)[0]
        for key in ("psnr_rgb", "psnr_rgb_z0", "gray_psnr", "gray_ssim", "nocolor_psnr_rgb"):
            assert row[key] == pytest.approx(direct[key], abs=1e-9), key
    gray = load_image(saved / val_dir.name / "sub" / "v1_gray.png")
    assert gray.shape[:2] == (48, 56)
    mean_rgb = np.mean([r["psnr_rgb"] for r in dataset["images"]])
    assert dataset["mean"]["psnr_rgb"] == pytest.approx(mean_rgb)
    # --z zero is one draw with z = 0: the sampled metrics equal the z = 0 ones
    assert evaluate_color.main(["--checkpoint", str(color_ckpt), "--data", str(val_dir),
                                "--z", "zero", "--json", str(report)]) == 0  # fmt: skip
    row = json.loads(report.read_text())["datasets"][0]["images"][0]
    assert row["draws"] == 1 and row["psnr_rgb"] == row["psnr_rgb_z0"]


def test_evaluate_color_flags_and_checkpoints(color_ckpt, irn_ckpt, capsys):
    err = fail(evaluate_color.main, ["--checkpoint", color_ckpt, "--scale", 4], capsys)
    assert "unrecognized arguments: --scale 4" in err
    err = fail(evaluate_color.main, ["--checkpoint", color_ckpt, "--tile", 64], capsys)
    assert "unrecognized arguments: --tile 64" in err
    err = fail(evaluate_color.main, ["--checkpoint", color_ckpt, "--draws", 0], capsys)
    assert "--draws: must be >= 1" in err
    err = fail(evaluate_color.main, ["--checkpoint", irn_ckpt], capsys)
    assert "--checkpoint" in err and "not an IRN-Color checkpoint" in err
    assert f"python evaluate.py --checkpoint {irn_ckpt}" in err
    err = fail(evaluate_color.main, ["--checkpoint", Path("missing.pt")], capsys)
    assert "--checkpoint" in err and "missing.pt" in err


def test_evaluate_and_rescale_point_a_color_checkpoint_to_evaluate_color(
    color_ckpt, val_dir, tmp_path, capsys
):
    err = fail(evaluate.main, ["--checkpoint", color_ckpt, "--data", val_dir], capsys)
    assert "is an IRN-Color checkpoint" in err
    assert f"python evaluate_color.py --checkpoint {color_ckpt}" in err
    argv = ["down", val_dir / "v0.png", tmp_path / "x.png", "--checkpoint", color_ckpt]
    err = fail(rescale.main, argv, capsys)
    assert "is an IRN-Color checkpoint" in err and "evaluate_color.py" in err
    assert not (tmp_path / "x.png").exists()
