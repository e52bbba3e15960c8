"""bench/figure_irn.py: the IRN-vs-bicubic figure from a checkpoint, its panels and labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from bench import figure_irn
from common.images import save_image
from common.metrics import quantize_to_uint8
from irn.evaluation import bicubic_baseline, evaluate_rescaling
from irn.model import IRN, IRNConfig


@pytest.fixture
def tiny(tmp_path):
    """An untrained x2 IRN (one coupling, small subnets) saved as our checkpoint, and a photo."""
    torch.manual_seed(0)
    cfg = IRNConfig(scale=2, blocks_per_level=1, gc=4)
    model = IRN(cfg)
    with torch.no_grad():  # away from the identity, so HR' differs from the HR
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = tmp_path / "tiny.pt"
    torch.save(
        {"model": model.state_dict(), "config": {"model": dataclasses.asdict(cfg)}, "step": 7},
        ckpt,
    )
    yy, xx = np.mgrid[0:50, 0:70].astype(np.float32)
    img = np.stack([np.sin(xx / 5) * 0.4 + 0.5, np.cos(yy / 7) * 0.4 + 0.5, xx / 70], axis=2)
    photo = tmp_path / "photo.png"
    save_image(photo, img)
    return model, ckpt, photo


def test_figure_layout_panels_and_labels(tiny, tmp_path):
    model, ckpt, photo = tiny
    out = tmp_path / "fig.png"
    fig = figure_irn.main(
        [
            "--checkpoint", str(ckpt), "--image", str(photo), "--crop", "10", "6", "32",
            "--zoom", "3", "--out", str(out), "--threads", "1",
        ]
    )  # fmt: skip
    written = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(written, fig.image)

    # five panels of 32 * 3 pixels in one row, left to right, gaps and margins as declared
    size = 32 * 3
    m, g = figure_irn.MARGIN, figure_irn.GAP
    assert written.shape == (2 * m + figure_irn.HEADER + size + figure_irn.FOOTER,
                             2 * m + 5 * size + 4 * g, 3)  # fmt: skip
    assert [p["box"] for p in fig.panels] == [
        (m + k * (size + g), m + figure_irn.HEADER, m + k * (size + g) + size,
         m + figure_irn.HEADER + size)
        for k in range(5)
    ]  # fmt: skip
    titles = [p["title"] for p in fig.panels]
    assert titles == ["HR photo", "bicubic", "IRN (it. 7) HR'", "|bicubic - HR| x4",
                      "|IRN HR' - HR| x4"]  # fmt: skip

    # panel contents: the crops enlarged with nearest-neighbour, and the error maps
    hr = quantize_to_uint8(np.asarray(Image.open(photo).convert("RGB")) / 255.0)
    crop = (slice(6, 38), slice(10, 42))
    img_hr = np.asarray(Image.open(photo).convert("RGB")).astype(np.float32) / 255.0
    irn = evaluate_rescaling(model, img_hr, draws=1, seed=0, return_images=True)
    bic = bicubic_baseline(img_hr, 2, quantize_lr=True, return_images=True)
    expected = [
        hr[crop],
        bic["hr_rec"][crop],
        irn["hr_rec"][crop],
        figure_irn.error_map(bic["hr_rec"][crop], hr[crop], 4.0),
        figure_irn.error_map(irn["hr_rec"][crop], hr[crop], 4.0),
    ]
    for panel, want in zip(fig.panels, expected, strict=True):
        left, top, right, bottom = panel["box"]
        got = written[top:bottom, left:right]
        assert np.array_equal(got, np.repeat(np.repeat(want, 3, axis=0), 3, axis=1))
    assert not np.array_equal(expected[0], expected[2])  # the untrained IRN is not exact

    # PSNR-Y of the whole image in the labels, the same numbers evaluate.py would report
    assert f"PSNR-Y {bic['psnr_y']:.2f} dB" in fig.panels[1]["label"]
    assert f"PSNR-Y {irn['psnr_y']:.2f} dB" in fig.panels[2]["label"]
    assert fig.metrics["irn"]["psnr_y"] == pytest.approx(irn["psnr_y"])
    assert "seed 0" in fig.caption and "x2" in fig.caption


def test_figure_refuses_a_crop_outside_the_image(tiny, tmp_path):
    _, ckpt, photo = tiny
    with pytest.raises(SystemExit, match="does not fit the 70x50 image"):
        figure_irn.main(
            ["--checkpoint", str(ckpt), "--image", str(photo), "--crop", "50", "0", "32",
             "--out", str(tmp_path / "x.png")]
        )  # fmt: skip
