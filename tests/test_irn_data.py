import numpy as np
import pytest
import torch

from irn.data import (
    NamedImage,
    PatchDataset,
    StepSampler,
    augment,
    bicubic_lr,
    load_folder,
    lr_patch_from_region,
    memory_bytes,
    modcrop,
    sample_photos,
)


def _photo(h=70, w=90, seed=0):
    rng = np.random.default_rng(seed)
    # smooth-ish content plus noise so the kernel tails matter
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(yy / 5.0), np.cos(xx / 7.0), np.sin((xx + yy) / 9.0)], -1)
    return ((base + 1) / 2 * 0.8 + 0.2 * rng.random((h, w, 3))).astype(np.float32)


@pytest.mark.parametrize("scale", [2, 4])
def test_lr_patch_equals_full_image_downscale(scale):
    hr = modcrop(_photo(), scale)
    full = bicubic_lr(hr, scale)
    p = 8 * scale
    worst = 0.0
    # interior, top-left corner, bottom-right corner, edges
    for top in sorted({0, scale, 5 * scale, hr.shape[0] - p}):
        for left in sorted({0, 3 * scale, hr.shape[1] - p}):
            lr = lr_patch_from_region(hr, top, left, p, scale)
            ref = full[top // scale : (top + p) // scale, left // scale : (left + p) // scale]
            worst = max(worst, float(np.abs(lr - ref).max()))
    assert worst < 1e-6, worst
    # cropping the patch first (the authors' way) is measurably different near the edges
    naive = bicubic_lr(hr[5 * scale : 5 * scale + p, 3 * scale : 3 * scale + p], scale)
    ref = full[5 : 5 + 8, 3 : 3 + 8]
    assert np.abs(naive - ref).max() > 1e-3


def test_augment_commutes_with_downscale():
    hr = modcrop(_photo(64, 64), 4)
    lr = bicubic_lr(hr, 4)
    for flags in [(True, False, False), (False, True, False), (False, False, True), (1, 1, 1)]:
        hr_a, lr_a = augment([hr, lr], flags)
        assert np.abs(bicubic_lr(hr_a, 4) - lr_a).max() < 1e-5


def test_samples_are_stateless_and_seeded():
    images = [NamedImage("a", image=_photo(seed=1)), NamedImage("b", image=_photo(80, 64, 2))]
    ds = PatchDataset(images, patch_size=32, scale=4, seed=10)
    a, b = ds[17], ds[17]
    assert a["hr"].shape == (3, 32, 32) and a["lr"].shape == (3, 8, 8)
    assert a["hr"].dtype == torch.float32
    assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
    assert not torch.equal(ds[17]["hr"], ds[18]["hr"])
    other = PatchDataset(images, patch_size=32, scale=4, seed=11)
    assert not torch.equal(other[17]["hr"], a["hr"])
    # every epoch visits each image once
    seen = [ds._image_index(k) for k in range(6)]
    assert sorted(seen[:2]) == [0, 1] and sorted(seen[2:4]) == [0, 1]


def test_step_sampler_resumes_and_splits_over_ranks():
    full = list(StepSampler(4, start_step=0, total_steps=5))
    assert full == list(range(20))
    assert list(StepSampler(4, start_step=3, total_steps=5)) == full[12:]
    ranks = [list(StepSampler(4, 0, 2, rank=r, world_size=2)) for r in range(2)]
    assert ranks == [[0, 1, 4, 5], [2, 3, 6, 7]]
    with pytest.raises(ValueError, match="--batch-size 3 must be divisible"):
        StepSampler(3, world_size=2)


def test_small_images_are_skipped_with_a_warning():
    images = [
        NamedImage("big", image=_photo(70, 90)),
        NamedImage("tiny.png", image=_photo(20, 30)),
    ]
    with pytest.warns(UserWarning, match=r"tiny.png: 20x28 is smaller than the 32x32"):
        ds = PatchDataset(images, patch_size=32, scale=4)
    assert [i.name for i in ds.images] == ["big"]
    with pytest.raises(ValueError, match=r"use --patch-size 20 or smaller"), pytest.warns():
        PatchDataset(images[1:], patch_size=32, scale=4)
    with pytest.raises(ValueError, match=r"--patch-size 30 must be a multiple of --scale 4"):
        PatchDataset(images, patch_size=30, scale=4)


def test_folder_errors_name_the_flag_and_folder(tmp_path):
    with pytest.raises(ValueError, match=r"--data: folder .*nope does not exist"):
        load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--val-data: no images found under .*empty"):
        load_folder(tmp_path / "empty", what="--val-data")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"broken.png"):
        load_folder(bad)


def test_folder_reads_nested_images_lazily(tmp_path):
    from common.images import save_image

    (tmp_path / "sub").mkdir()
    save_image(tmp_path / "sub" / "x.png", _photo(40, 48))
    save_image(tmp_path / "y.png", _photo(36, 44))
    items = load_folder(tmp_path)
    assert [i.size for i in items] == [(40, 48), (36, 44)]
    assert all(i.image is None for i in items)
    ds = PatchDataset(items, patch_size=32, scale=4)
    assert ds[0]["hr"].shape == (3, 32, 32)


def test_cached_8bit_images_give_the_same_patches_as_decoding_per_patch(tmp_path):
    """--cache keeps the file's uint8 samples (3 bytes a pixel, not float32's 12) and converts
    only the patch and its LR region: the samples equal those of decoding the file each time
    and of float images, bit for bit."""
    from common.images import load_image, save_image

    save_image(tmp_path / "x.png", _photo(40, 52))
    save_image(tmp_path / "y.png", _photo(44, 48, seed=3))
    lazy = load_folder(tmp_path)
    cached = load_folder(tmp_path, decode=True)
    floats = [NamedImage(i.name, image=load_image(i.path)) for i in lazy]
    assert all(i.image.dtype == np.uint8 for i in cached)
    assert memory_bytes(cached) == 40 * 52 * 3 + 44 * 48 * 3
    assert [i.size for i in cached] == [i.size for i in lazy]
    sets = [
        PatchDataset(items, patch_size=16, scale=4, seed=7) for items in (lazy, cached, floats)
    ]
    for k in range(6):
        a, b, c = (ds[k] for ds in sets)
        for key in ("hr", "lr"):
            assert a[key].dtype == torch.float32
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    np.testing.assert_array_equal(cached[0].load(), floats[0].image)


def test_sample_photos_split():
    val = sample_photos("val")
    assert [v.name for v in val] == ["skimage:chelsea", "skimage:stereo_motorcycle_right"]
    assert val[0].image.shape == (300, 451, 3) and val[0].image.dtype == np.float32
    assert len(sample_photos("train")) == 6
