"""Tests for common/metrics.py against the IRN authors' numbers (docs/method.md sec. 5)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common.metrics import image_metrics, modcrop, psnr, quantize_to_uint8, rgb_to_y, ssim

FIXTURES = Path(__file__).parent / "fixtures" / "irn_reference_metrics.npz"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURES) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def pair_rgb(ref) -> tuple[np.ndarray, np.ndarray]:
    # The fixtures are BGR (the authors' cv2 convention); the project is RGB inside.
    return ref["metric_a"][..., ::-1].copy(), ref["metric_b"][..., ::-1].copy()


def test_rgb_to_y_matches_reference(ref):
    y = rgb_to_y(ref["ycbcr_in_bgr"][..., ::-1], data_range=1.0)
    assert y.shape == ref["ycbcr_y"].shape == (20, 24)
    assert y.dtype == np.float64
    assert np.abs(y - ref["ycbcr_y"]).max() < 1e-12
    # torch CHW path, same numbers; 0..255 scale gives the [16, 235] values
    t = torch.from_numpy(ref["ycbcr_in_bgr"][..., ::-1].copy()).permute(2, 0, 1)
    assert torch.allclose(rgb_to_y(t), torch.from_numpy(ref["ycbcr_y"]), atol=1e-12, rtol=0)
    y255 = rgb_to_y(ref["ycbcr_in_bgr"][..., ::-1] * 255.0, data_range=255.0)
    assert np.abs(y255 - ref["ycbcr_y"] * 255.0).max() < 1e-9


def test_rgb_to_y_range_and_errors():
    black_white = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    assert np.allclose(rgb_to_y(black_white, data_range=255), [[16.0, 235.0]], atol=1e-9)
    with pytest.raises(ValueError, match="data_range=255"):
        rgb_to_y(black_white)
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, 3\]"):
        rgb_to_y(np.zeros((4, 4, 4)))
    x = torch.rand(2, 3, 5, 5, requires_grad=True)
    rgb_to_y(x).sum().backward()  # differentiable (used by the Y-channel loss)
    assert torch.allclose(x.grad[0, 0], torch.full((5, 5), 65.481 / 255))


def test_psnr_ssim_rgb_match_reference(ref, pair_rgb):
    a, b = pair_rgb
    assert psnr(a, b) == pytest.approx(float(ref["psnr_rgb"]), abs=1e-9)
    assert ssim(a, b) == pytest.approx(float(ref["ssim_rgb"]), abs=1e-9)


def test_psnr_ssim_y_match_reference(ref, pair_rgb):
    a, b = pair_rgb
    # As the reference: Y from a/255, b/255, then scaled by 255.
    ya = rgb_to_y(a / 255.0) * 255.0
    yb = rgb_to_y(b / 255.0) * 255.0
    assert psnr(ya, yb) == pytest.approx(float(ref["psnr_y"]), abs=1e-9)
    assert ssim(ya, yb) == pytest.approx(float(ref["ssim_y"]), abs=1e-9)


def test_image_metrics_from_uint8(ref, pair_rgb):
    a, b = (v.astype(np.uint8) for v in pair_rgb)
    m = image_metrics(a, b, crop_border=0)
    assert set(m) == {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}
    for key in m:
        assert m[key] == pytest.approx(float(ref[key]), abs=1e-9), key
    # torch CHW uint8 gives the same numbers
    ta, tb = (torch.from_numpy(v).permute(2, 0, 1) for v in (a, b))
    assert image_metrics(ta, tb)["psnr_y"] == pytest.approx(m["psnr_y"], abs=1e-12)
    cropped = image_metrics(a, b, crop_border=4)
    assert cropped["psnr_rgb"] == pytest.approx(psnr(a[4:-4, 4:-4], b[4:-4, 4:-4]), abs=1e-12)
    assert cropped["psnr_rgb"] != pytest.approx(m["psnr_rgb"], abs=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        image_metrics(a.astype(np.float64) * 2.0, b)


def _ssim_cv2_2d(x: np.ndarray, y: np.ndarray) -> float:
    """Independent SSIM with a full 11x11 window (the authors' cv2.filter2D formulation)."""
    k = cv2.getGaussianKernel(11, 1.5)
    win = k @ k.T
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(v: np.ndarray) -> np.ndarray:
        return cv2.filter2D(v, -1, win)[5:-5, 5:-5]

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(smap.mean())


def test_ssim_matches_independent_2d_filter_and_channel_mean():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (23, 31, 3)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    per_channel = [_ssim_cv2_2d(a[..., c].copy(), b[..., c].copy()) for c in range(3)]
    assert ssim(a[..., 1], b[..., 1]) == pytest.approx(per_channel[1], abs=1e-12)
    assert ssim(a, b) == pytest.approx(np.mean(per_channel), abs=1e-12)
    assert 0.3 < ssim(a, b) < 0.99


def test_identical_images():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    m = image_metrics(a, a.copy())
    assert m["psnr_y"] == math.inf and m["ssim_y"] == pytest.approx(1.0, abs=1e-12)


def test_psnr_value_and_max_val():
    a = np.zeros((4, 4))
    b = np.full((4, 4), 10.0)  # MSE = 100
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 10), abs=1e-12)
    assert psnr(a / 255, b / 255, max_val=1.0) == pytest.approx(psnr(a, b), abs=1e-9)


def test_crop_border_really_crops():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (30, 32, 3)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 5, a.shape), 0, 255)
    b2 = b.copy()
    border = 4
    b2[:border] = 0
    b2[-border:] = 255
    b2[:, :border] = 17
    b2[:, -border:] = 200
    assert psnr(a, b, crop_border=border) == psnr(a, b2, crop_border=border)
    assert ssim(a, b, crop_border=border) == ssim(a, b2, crop_border=border)
    assert psnr(a, b2) < psnr(a, b) - 1.0  # uncropped, the change is visible
    assert ssim(a, b2) < ssim(a, b) - 0.01
    # one pixel further in is inside the crop, so it counts
    b3 = b.copy()
    b3[border, border] = 255 - b3[border, border]
    assert psnr(a, b3, crop_border=border) < psnr(a, b, crop_border=border)


def test_errors():
    a = np.zeros((20, 20, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, np.zeros((20, 21, 3)))
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(a, np.zeros((20, 20)))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, crop_border=10)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, crop_border=-1)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a, a, crop_border=5)
    with pytest.raises(ValueError, match="per image"):
        psnr(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))


def test_quantize_to_uint8():
    v = np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 0.2, 1.0, 7.0])
    # round half to even: 0.5 -> 0, 1.5 -> 2; 0.2*255 = 51
    expected = np.array([0, 0, 0, 2, 51, 255, 255], dtype=np.uint8)
    out = quantize_to_uint8(v)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    t = quantize_to_uint8(torch.tensor(v, dtype=torch.float32))
    assert t.dtype == torch.uint8
    np.testing.assert_array_equal(t.numpy(), expected)
    with pytest.raises(ValueError, match="NaN"):
        quantize_to_uint8(np.array([np.nan]))
    with pytest.raises(TypeError):
        quantize_to_uint8(np.array([1], dtype=np.uint8))


def test_modcrop(ref):
    img = np.zeros((37, 53, 3))
    assert modcrop(img, 4).shape == tuple(ref["modcrop_shape_x4"])
    assert modcrop(img[..., 0], 3).shape == (36, 51)
    assert modcrop(torch.zeros(2, 3, 37, 53), 4).shape == (2, 3, 36, 52)
    x = np.arange(5 * 6).reshape(5, 6)
    np.testing.assert_array_equal(modcrop(x, 2), x[:4, :6])  # top-left is kept
    with pytest.raises(ValueError, match="scale"):
        modcrop(img, 0)
