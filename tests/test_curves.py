"""bench/curves.py: validation curves read back from TensorBoard events, and their statistics."""

from __future__ import annotations

import math

import pytest
from torch.utils.tensorboard import SummaryWriter

from bench import curves


def _run(root, name, psnr, ssim=None, steps=(200, 400)):
    """A fake train_irn.py --out folder: validation scalars in <out>/tb."""
    out = root / name
    with SummaryWriter(str(out / "tb")) as w:
        w.add_scalar("train/loss_total", 1.0, 1)
        for i, (s, v) in enumerate(zip(steps, psnr, strict=True)):
            w.add_scalar("val/psnr_y", v, s)
            w.add_scalar("val/ssim_y", (ssim or [0.5] * len(psnr))[i], s)
    return str(out)


def test_curves_statistics_reference_and_pairs(tmp_path, capsys):
    a = _run(tmp_path, "a", [20.0, 26.0], [0.6, 0.7])
    b = _run(tmp_path, "b", [22.0, 27.0])
    c = _run(tmp_path, "c", [24.0, 28.0])
    a2 = _run(tmp_path, "a_amp", [19.0, 26.5])
    b2 = _run(tmp_path, "b_amp", [23.0, 26.0])
    approx = pytest.approx
    assert curves.read_curve(a) == {200: (20.0, approx(0.6)), 400: (26.0, approx(0.7))}
    res = curves.main(
        [a, b, c, "--reference", "25,27.5", "--pair", f"{a}:{a2}", "--pair", f"{b}:{b2}"]
    )
    st = res["stats"]
    assert res["steps"] == [200, 400]
    assert st[200]["mean"] == pytest.approx(22.0) and st[200]["sd"] == pytest.approx(2.0)
    assert (st[400]["min"], st[400]["max"]) == (26.0, 28.0)
    ref = res["reference"]
    assert ref[200]["minus_mean"] == pytest.approx(3.0) and not ref[200]["in_range"]
    assert ref[400]["minus_mean"] == pytest.approx(0.5) and ref[400]["in_range"]
    pr = res["pairs"]
    assert pr["diffs"][(a, a2)] == {200: -1.0, 400: 0.5}
    # differences at 400: +0.5 and -1.0 -> mean -0.25, sd 1.0607, se 0.75
    assert pr["mean"] == pytest.approx(-0.25)
    assert pr["se"] == pytest.approx(math.sqrt(1.125) / math.sqrt(2))
    text = capsys.readouterr().out
    assert "| mean of 3 | 22.00 | 27.00 |" in text
    assert "+3.00 (outside)" in text and "+0.50 |" in text
    assert "mean difference at 400 over 2 pair(s): -0.250 dB, standard error 0.750 dB" in text


def test_curves_errors_name_the_run_or_flag(tmp_path, capsys):
    a = _run(tmp_path, "a", [20.0, 26.0])
    with pytest.raises(SystemExit, match=r"nope: no TensorBoard events"):
        curves.main([str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match=r"--reference has 1 values; the runs share 2 "):
        curves.main([a, "--reference", "25"])
    with pytest.raises(SystemExit):
        curves.main([a, "--pair", "just_one"])
    assert "expected RUN_A:RUN_B" in capsys.readouterr().err
    empty = tmp_path / "e"
    with SummaryWriter(str(empty / "tb")) as w:
        w.add_scalar("train/loss_total", 1.0, 1)
    with pytest.raises(SystemExit, match=r"e: no validation in its events"):
        curves.main([str(empty)])


def test_plot_colours_a_pair_like_its_first_run(tmp_path):
    from PIL import Image, ImageColor

    a = _run(tmp_path, "a", [20.0, 26.0])
    b = _run(tmp_path, "b", [22.0, 27.0])
    a2 = _run(tmp_path, "a_amp", [19.0, 26.5])
    png = tmp_path / "fig" / "c.png"
    curves.main([a, b, "--pair", f"{a}:{a2}", "--reference", "25,27.5", "--plot", str(png),
                 "--bicubic", "24"])  # fmt: skip
    img = Image.open(png).convert("RGB")
    assert img.size == (900, 560)
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    want = [ImageColor.getrgb(curves.PALETTE[i]) for i in (0, 1)]
    assert all(c in colours for c in want) and (0, 0, 0) in colours
    assert ImageColor.getrgb("#999999") in colours  # the bicubic level
    # a_amp takes a's colour (dashed), not a third one
    assert ImageColor.getrgb(curves.PALETTE[2]) not in colours
    # a chain a:a_amp, a_amp:a_mb draws a_mb in a's colour too
    a3 = _run(tmp_path, "a_mb", [21.0, 26.2])
    curves.main([a, b, "--pair", f"{a}:{a2}", "--pair", f"{a2}:{a3}", "--plot", str(png)])
    colours = {c for _, c in Image.open(png).convert("RGB").getcolors(maxcolors=1 << 20)}
    assert ImageColor.getrgb(curves.PALETTE[2]) not in colours


def test_divergence_runs_start_equal(tmp_path, capsys):
    """bench/divergence.py: the chunked run computes the same first loss (the same patches and
    z'; only the order of the sums differs), and the table has a row per step."""
    from tests_support import tiny_images

    from bench import divergence

    train, val = tiny_images(tmp_path)
    res = divergence.main(
        ["--iters", "3", "--batch-size", "2", "--patch-size", "16", "--micro-batch", "1", "--",
         "--blocks-per-level", "1", "--gc", "4", "--data", str(train), "--val-data", str(val)]
    )  # fmt: skip
    assert [r[0] for r in res["rows"]] == [1, 2, 3]
    assert res["rows"][0][3] < 1e-6
    assert "relative difference first above 0.0001" in capsys.readouterr().out
