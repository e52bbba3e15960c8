"""bench/heldout.py's bookkeeping (the photos themselves need a system package; not in CI)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import heldout  # noqa: E402


def row(photo: str, irn: float, bicubic: float) -> dict:
    stats = {"p999_irn": 3.0, "p999_bicubic": 4.5, "lr_psnr_y": 40.0, "z_rms": 0.01}
    stats |= {"lr_rmse": 2.0, "clip": 0.0, "warned": False}
    return {"photo": photo, "irn": irn, "bicubic": bicubic, "diff": irn - bicubic, **stats}


def test_rmse_levels_inverts_the_psnr():
    assert heldout.rmse_levels(20 * math.log10(255.0)) == pytest.approx(1.0)
    assert heldout.rmse_levels(20 * math.log10(255.0 / 0.5)) == pytest.approx(0.5)


def test_bar_needs_the_mean_and_every_photo():
    rows = [row("a", 40.0, 36.0), row("b", 30.0, 30.5), row("c", 50.0, 52.5)]
    s = heldout.summarise(rows)
    assert s["mean_diff"] == pytest.approx((4.0 - 0.5 - 2.5) / 3)
    assert s["worst"] == "c" and s["worst_diff"] == pytest.approx(-2.5)
    assert s["meets_bar"]
    rows.append(row("d", 48.0, 51.5))  # one photo 3.5 dB below: the bar fails on it alone
    s = heldout.summarise(rows)
    assert s["worst"] == "d" and not s["meets_bar"]
    assert s["mean_diff"] > heldout.MEAN_BAR
    s = heldout.summarise([row("a", 30.0, 31.5), row("b", 30.0, 31.5)])  # mean -1.5
    assert not s["meets_bar"] and s["worst_diff"] > heldout.WORST_BAR


def test_table_reports_levels_and_the_verdict():
    rows = [row("flat", 48.0, 54.0)]
    text = heldout.table("ckpt", rows, heldout.summarise(rows))
    assert "| flat | 48.00 | 54.00 | -6.00 | 1.02 / 0.51 | 3.0 / 4.5 |" in text
    assert text.rstrip().endswith("not met")


def test_tail_error_ignores_the_border_and_reads_levels():
    hr = np.full((20, 20, 3), 100, np.uint8)
    rec = hr.copy()
    rec[0, :, :] = 0  # a ruined first row: inside the border, not counted
    assert heldout.tail_error_levels(rec, hr, border=2) == 0.0
    rec[10, 10, :] = 110  # one pixel of 256 counted, off by 10 levels in R, G and B
    assert 0 < heldout.tail_error_levels(rec, hr, border=2) <= 10.0
    assert heldout.tail_error_levels(rec, hr, border=0) == pytest.approx(100.0 * 0.859, rel=0.1)


def test_measure_one_synthetic_photo():
    """The per-photo row of a tiny IRN: PSNRs, their difference and both tail errors agree."""
    from irn.model import IRN, IRNConfig

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = IRN(IRNConfig(scale=2, blocks_per_level=1, gc=4)).eval()
    yy, xx = np.mgrid[0:34, 0:36]  # not a multiple of 4: modcrop must line the images up
    hr = np.stack([np.sin(yy / 5), np.cos(xx / 7), np.sin((xx + yy) / 9)], -1) * 0.4 + 0.5
    rows = heldout.measure(model, [("synthetic", hr.astype(np.float32))], 0.0, 1, False, {})
    (r,) = rows
    assert r["photo"] == "synthetic" and not r["warned"]
    assert r["diff"] == pytest.approx(r["irn"] - r["bicubic"])
    assert r["bicubic"] > 20.0 and r["irn"] > 0.0
    assert 0.0 <= r["p999_bicubic"] < 255.0 and 0.0 <= r["p999_irn"] <= 255.0
    assert r["p999_irn"] >= heldout.rmse_levels(r["irn"]) * 0.5  # a tail is not below the rms


def test_z_estimate_window_checked_at_the_flag(capsys):
    with pytest.raises(SystemExit):
        heldout.parse_args(["--z-estimate", "-3"])
    assert "--z-estimate -3: the window must be >= 0" in capsys.readouterr().err
    assert heldout.parse_args(["--z-estimate", "0"]).z_estimate == 0


def test_latent_follows_the_flags_or_the_checkpoints_training_z():
    zero, normal = {"gaussian_scale": 0.0}, {"gaussian_scale": 1.0}
    auto = heldout.parse_args([])
    assert heldout.latent_choice(auto, zero)[:2] == (1.0, heldout.DEFAULT_Z_WINDOW)
    assert heldout.latent_choice(auto, normal)[:2] == (1.0, None)
    assert heldout.latent_choice(auto, {})[:2] == (1.0, None)  # the authors' .pth: no record
    cold = heldout.parse_args(["--temperature", "0"])
    assert heldout.latent_choice(cold, zero)[:2] == (0.0, None)
    assert heldout.latent_choice(heldout.parse_args(["--z-estimate", "3"]), normal)[:2] == (1.0, 3)


def test_temperature_and_estimate_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        heldout.parse_args(["--z-estimate", "7", "--temperature", "0.5"])
    assert "--temperature" in capsys.readouterr().err


def test_the_mate_set_reads_its_nature_photos_and_names_its_package(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for n in heldout.MATE_NATURE[:-1]:
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / n)
    with pytest.raises(SystemExit, match="mate-backgrounds") as err:
        heldout.heldout_photos(tmp_path, 32, "mate")
    assert heldout.MATE_NATURE[-1] in str(err.value)
    Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(tmp_path / heldout.MATE_NATURE[-1])
    photos = heldout.heldout_photos(tmp_path, 32, "mate")
    assert [n for n, _ in photos] == [n.removesuffix(".jpg") for n in heldout.MATE_NATURE]
    assert photos[0][1].shape == (32, 32, 3) and photos[-1][1].shape == (30, 20, 3)
    assert heldout.parse_args(["--set", "mate"]).photo_set == "mate"
