"""The smooth-patch augmentation (irn/data.py SmoothPatches, --smooth-patches)."""

import numpy as np
import pytest

from irn.data import (
    NamedImage,
    PatchDataset,
    SmoothPatches,
    bicubic_lr,
    modcrop,
    smooth_region,
    transformed_patch,
)


def _photo(h=96, w=120, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((h, w, 3)).astype(np.float32)  # all detail, no flat part


def _tv(a):
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def test_smooth_region_is_smooth_8bit_and_keeps_flat_and_mean():
    img = _photo()
    for factor in (8, 16, 32):
        out = smooth_region(img, factor)
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1
        np.testing.assert_array_equal(np.round(out * 255) / 255, out)  # on the 8-bit grid
        assert _tv(out) < 0.1 * _tv(img)  # detail gone
        assert abs(float(out.mean() - img.mean())) < 2 / 255  # brightness kept
    flat = np.full((40, 50, 3), 0.4, np.float32)
    np.testing.assert_allclose(smooth_region(flat, 16), 102 / 255, atol=1e-7)
    tiny = smooth_region(_photo(5, 7), 32)  # smaller than the factor: one average colour
    assert tiny.shape == (5, 7, 3) and np.ptp(tiny.reshape(-1, 3), 0).max() <= 1 / 255


def test_transformed_patch_is_the_smoothed_region_downscaled():
    scale, size = 4, 32
    img = modcrop(_photo(), scale)
    for top, left in [(0, 0), (24, 40), (img.shape[0] - size, img.shape[1] - size)]:
        hr, lr = transformed_patch(img, top, left, size, scale, smooth=8)
        m = 3 * scale  # the LR margin of irn/data.py
        r0, c0 = max(0, top - m), max(0, left - m)
        region = smooth_region(img[r0 : top + size + m, c0 : left + size + m], 8)
        t, lf = top - r0, left - c0
        np.testing.assert_array_equal(hr, region[t : t + size, lf : lf + size])
        ref = bicubic_lr(region, scale)[t // 4 : (t + size) // 4, lf // 4 : (lf + size) // 4]
        assert np.abs(lr - ref).max() < 1e-6 and lr.shape == (size // 4, size // 4, 3)
    plain_hr, plain_lr = transformed_patch(img, 24, 40, size, scale)
    np.testing.assert_array_equal(plain_hr, img[24 : 24 + size, 40 : 40 + size])


def test_patch_dataset_smooth_share_and_seeding():
    items = [NamedImage("a", image=_photo(seed=1)), NamedImage("b", image=_photo(seed=2))]
    plain = PatchDataset(items, 32, 4, seed=3)
    off = PatchDataset(items, 32, 4, seed=3, smooth=None)
    half = PatchDataset(items, 32, 4, seed=3, smooth=SmoothPatches(p=0.5))
    half2 = PatchDataset(items, 32, 4, seed=3, smooth=SmoothPatches(p=0.5))
    n, smoothed = 200, 0
    for k in range(n):
        a = half[k]["hr"].numpy()
        np.testing.assert_array_equal(a, half2[k]["hr"].numpy())  # seeded
        np.testing.assert_array_equal(off[k]["hr"].numpy(), plain[k]["hr"].numpy())
        ref = plain[k]["hr"].numpy()
        smoothed += _tv(a.transpose(1, 2, 0)) < 0.1 * _tv(ref.transpose(1, 2, 0))
    assert 0.4 * n < smoothed < 0.6 * n  # p = 0.5: binomial sd 7 of 200
    rng = np.random.default_rng(0)
    assert SmoothPatches(p=0.0).draw(rng) is None
    assert {SmoothPatches(p=1.0).draw(rng) for _ in range(60)} == {8, 16, 32}


def test_smooth_patches_flag_checked():
    from irn.training import TrainConfig

    with pytest.raises(Exception, match="smooth_patches|smooth-patches"):
        TrainConfig(smooth_patches=1.0)
    assert TrainConfig().smooth_patches == 0.0  # off by default: the paper's data
