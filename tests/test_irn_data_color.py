"""The broad built-in photo set and the colour augmentation (irn/data.py)."""

import numpy as np
import pytest

from irn.data import (
    ColorAugment,
    PatchDataset,
    apply_color,
    bicubic_lr,
    color_matrix,
    colored_patch,
    modcrop,
    sample_photos,
)


def _photo(h=72, w=96, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(yy / 5.0), np.cos(xx / 7.0), np.sin((xx + yy) / 9.0)], -1)
    return ((base + 1) / 2 * 0.8 + 0.2 * rng.random((h, w, 3))).astype(np.float32)


def test_broad_set_adds_photos_and_colours():
    classic_train, broad_train = sample_photos("train", "classic"), sample_photos("train", "broad")
    broad_val = sample_photos("val", "broad")
    assert [i.name for i in broad_train[:6]] == [i.name for i in classic_train]
    assert {"skimage:colorwheel", "sklearn:flower"} <= {i.name for i in broad_train}
    assert [i.name for i in broad_val][-1] == "sklearn:china" and len(broad_val) == 3
    assert not {i.name for i in broad_val} & {i.name for i in broad_train}  # held out
    # several colours: different dominant channels, and china is a fifth blue (its sky)
    dominant = {int(np.argmax(i.image.reshape(-1, 3).mean(0))) for i in broad_val}
    blue_green = [float(np.mean(i.image[..., 2] > i.image[..., 0] + 0.1)) for i in broad_val]
    assert len(dominant) >= 2 and max(blue_green) > 0.15
    for item in broad_train + broad_val:
        assert item.image.dtype == np.float32 and item.image.shape[2] == 3
    with pytest.raises(ValueError, match="collection"):
        sample_photos("train", "everything")


def test_color_matrix_parts():
    np.testing.assert_allclose(color_matrix((0, 1, 2), 0.0, 1.0, 1.0), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(color_matrix((2, 0, 1), 0.0, 1.0, 1.0), np.eye(3)[[2, 0, 1]])
    grey = np.full(3, 0.4)
    for hue, sat in [(0.7, 1.3), (-2.0, 0.2)]:
        m = color_matrix((1, 2, 0), hue, sat, 1.1)
        np.testing.assert_allclose(m @ grey, 1.1 * grey, atol=1e-12)  # grey stays grey
    # a hue rotation keeps the distance from grey (saturation 1) and 120 degrees cycles RGB
    red = np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(color_matrix((0, 1, 2), 2 * np.pi / 3, 1.0, 1.0) @ red,
                               [0.0, 1.0, 0.0], atol=1e-12)  # fmt: skip
    # saturation 0 maps every colour to its grey
    np.testing.assert_allclose(color_matrix((0, 1, 2), 0.3, 0.0, 1.0) @ red, np.full(3, 1 / 3))


def test_colored_patch_is_the_recoloured_image_downscaled():
    scale, size = 4, 32
    img = modcrop(_photo(), scale)
    m = color_matrix((2, 1, 0), 0.5, 1.4, 1.3)  # clips: the order of clip and resize matters
    full = apply_color(img, m)
    assert full.max() == 1.0
    lr_full = bicubic_lr(full, scale)
    for top, left in [(0, 0), (20, 36), (img.shape[0] - size, img.shape[1] - size)]:
        hr, lr = colored_patch(img, top, left, size, scale, m)
        np.testing.assert_array_equal(hr, full[top : top + size, left : left + size])
        ref = lr_full[top // 4 : (top + size) // 4, left // 4 : (left + size) // 4]
        assert np.abs(lr - ref).max() < 1e-6


def test_patch_dataset_color_is_seeded_and_changes_colours():
    from irn.data import NamedImage

    items = [NamedImage("a", image=_photo(seed=1)), NamedImage("b", image=_photo(seed=2))]
    plain = PatchDataset(items, 32, 4, seed=3)
    col = PatchDataset(items, 32, 4, seed=3, color=ColorAugment(p=1.0))
    col2 = PatchDataset(items, 32, 4, seed=3, color=ColorAugment(p=1.0))
    changed = 0
    for k in range(6):
        a, b = col[k], col2[k]
        assert np.array_equal(a["hr"].numpy(), b["hr"].numpy())
        assert a["hr"].min() >= 0 and a["hr"].max() <= 1 and a["lr"].shape == (3, 8, 8)
        changed += not np.allclose(a["hr"].numpy(), plain[k]["hr"].numpy())
    assert changed >= 5


def test_color_augment_ranges():
    aug = ColorAugment(p=1.0, hue_deg=0.0, saturation=(1.0, 1.0), brightness=(1.0, 1.0))
    rng = np.random.default_rng(0)
    for _ in range(10):
        m = aug.draw(rng)
        assert sorted(np.round(m.sum(0), 9)) == [1, 1, 1] and set(np.round(m.ravel(), 9)) <= {0, 1}
    assert ColorAugment(p=0.0).draw(rng) is None
