"""``irn.tiling``: tile grids, padding, tile-by-tile rescaling equal to the untiled one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flow_checks import perturb_

from irn.evaluation import evaluate_rescaling
from irn.model import IRN, IRNConfig
from irn.tiling import (
    MIN_TILE,
    choose_tile,
    downscale_tiled,
    pad_to_multiple,
    parse_tile,
    sample_z,
    tile_spans,
    tiles,
    upscale_tiled,
)


@pytest.fixture(scope="module")
def model() -> IRN:
    # Receptive field of one coupling per level: 10 px at 1/2 size, 10 LR px at 1/4 size,
    # i.e. about 13 LR pixels: an overlap of 16 covers it.
    irn = IRN(IRNConfig(scale=4, blocks_per_level=1, gc=4))
    return perturb_(irn, std=0.05, seed=3).eval()


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A natural-ish image: random low-frequency colour blobs plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=gen)
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")
    return (img + 0.03 * torch.rand(1, 3, h, w, generator=gen)).clamp(0, 1)


def test_tile_spans_cover_and_align():
    for length, tile, align in [(100, 32, 4), (96, 32, 4), (7, 3, 1), (4, 100, 4), (52, 40, 4)]:
        spans = tile_spans(length, tile, align)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(a == b for (_, a), (b, _) in zip(spans[:-1], spans[1:], strict=True))
        assert all(a % align == 0 and b % align == 0 for a, b in spans)
        assert all(b - a <= -(-tile // align) * align for a, b in spans)
        sizes = [b - a for a, b in spans]
        assert max(sizes) - min(sizes) <= align  # near-equal, no sliver
    assert tile_spans(100, 32, 4) == [(0, 24), (24, 48), (48, 76), (76, 100)]
    with pytest.raises(ValueError, match="divisible"):
        tile_spans(10, 4, 4)


def test_tiles_regions_are_clipped_context():
    boxes = list(tiles(10, 20, 8, 3))
    assert len(boxes) == 2 * 3
    for (t, b, left, right), (r0, r1, c0, c1) in boxes:
        assert (r0, c0) == (max(0, t - 3), max(0, left - 3))
        assert (r1, c1) == (min(10, b + 3), min(20, right + 3))
    assert list(tiles(5, 6, None, 3)) == [((0, 5, 0, 6), (0, 5, 0, 6))]


def test_parse_tile():
    assert parse_tile(None) is None and parse_tile("none") is None and parse_tile("0") is None
    assert parse_tile("auto") == "auto" and parse_tile("256") == 256 and parse_tile(64) == 64
    for bad in ("big", "-4", str(MIN_TILE - 1), 1.5):
        with pytest.raises(ValueError, match="tile"):
            parse_tile(bad)


def test_pad_to_multiple_reflects_bottom_right():
    img = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    padded, size = pad_to_multiple(img, 4)
    assert size == (5, 7) and padded.shape == (8, 8, 3)
    np.testing.assert_array_equal(padded[:5, :7], img)
    np.testing.assert_array_equal(padded[5], img[3, list(range(7)) + [5]])  # row 5 = row 3
    np.testing.assert_array_equal(padded[:5, 7], img[:, 5])  # column 7 = column 5
    same, _ = pad_to_multiple(img[:4, :4], 4)
    assert same.shape == (4, 4, 3)
    thin, _ = pad_to_multiple(img[:1, :3], 4)  # 1-pixel side: edge replication
    assert thin.shape == (4, 4, 3) and np.all(thin[:, :3] == img[0, :3])


def test_choose_tile():
    t1 = choose_tile(1.0, 4, 16)
    t2 = choose_tile(2.0, 4, 16)
    assert t1 % 4 == 0 and t2 % 4 == 0 and MIN_TILE <= t1 < t2
    # 1.5 GB for tiles and ~ 600 B/px: a padded tile of ~1580 px, minus 2 * 64 px of context
    assert 1400 <= t2 <= 1500
    # a big image leaves less room for the tile
    assert choose_tile(2.0, 4, 16, image_hw=(3000, 5000)) < t2
    assert choose_tile(0.1, 4, 16) == MIN_TILE  # never below the minimum
    with pytest.raises(ValueError, match="budget"):
        choose_tile(0, 4)


def test_sample_z_matches_upscale(model):
    lr = torch.rand(1, 3, 6, 5)
    z = sample_z(model, lr.shape, 0.7, torch.Generator().manual_seed(5))
    with torch.no_grad():
        direct = model.upscale(lr, temperature=0.7, generator=torch.Generator().manual_seed(5))
        assert torch.equal(model.upscale(lr, z=z), direct)
    assert torch.equal(sample_z(model, lr.shape, 0.0), torch.zeros(1, 45, 6, 5))


def test_untiled_path_is_the_model(model):
    hr = smooth_image(48, 40)
    with torch.no_grad():
        assert torch.equal(downscale_tiled(model, hr), model.downscale(hr))
        lr = model.downscale(hr)
        z = sample_z(model, lr.shape, 1.0, torch.Generator().manual_seed(0))
        assert torch.equal(upscale_tiled(model, lr, z), model.upscale(lr, z=z))


def test_tiled_equals_untiled(model):
    hr = smooth_image(96, 120, seed=1)
    lr_full = downscale_tiled(model, hr)
    z = sample_z(model, lr_full.shape, 1.0, torch.Generator().manual_seed(0))
    hr_full = upscale_tiled(model, lr_full, z)
    calls = []
    # 32 px HR tiles = 8 LR px: 3 x 4 tiles, each with 16 LR px of context (> receptive field)
    lr_tiled = downscale_tiled(model, hr, 32, 16, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (12, 12)  # 24 LR rows / 8 = 3 tiles, 30 LR cols / 8 -> 4 tiles
    assert torch.equal(lr_tiled, lr_full)
    hr_tiled = upscale_tiled(model, lr_full, z, 32, 16)
    assert (hr_tiled - hr_full).abs().max().item() < 1e-5
    u8 = upscale_tiled(model, lr_full, z, 32, 16, to_uint8=True)
    assert u8.dtype == torch.uint8
    full_u8 = (hr_full.clamp(0, 1) * 255).round().to(torch.uint8)
    assert (u8.int() - full_u8.int()).abs().max().item() <= 1
    # without context the tile borders show: the test above is not vacuous
    hr_no_context = upscale_tiled(model, lr_full, z, 32, 0)
    assert (hr_no_context - hr_full).abs().max().item() > 1e-3


def test_evaluate_rescaling_tiled_equals_untiled(model):
    hr = smooth_image(72, 88, seed=2)[0].permute(1, 2, 0).numpy()
    kwargs = {"draws": 2, "temperature": 0.8, "seed": 4, "return_images": True}
    untiled = evaluate_rescaling(model, hr, **kwargs)
    tiled = evaluate_rescaling(model, hr, tile=32, tile_overlap=16, **kwargs)
    assert np.array_equal(tiled["lr"], untiled["lr"])
    assert np.abs(tiled["hr_rec"].astype(int) - untiled["hr_rec"].astype(int)).max() <= 1
    for key in ("psnr_y", "psnr_rgb", "lr_psnr_y"):
        assert tiled[key] == pytest.approx(untiled[key], abs=1e-3)
    assert untiled["draws"] == 2 and len(untiled["draw_psnr_y"]) == 2
    assert untiled["draw_psnr_y"][0] != untiled["draw_psnr_y"][1]  # two different z


def test_errors(model):
    with pytest.raises(ValueError, match="multiple of the scale"):
        downscale_tiled(model, torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="multiple of the scale 4"):
        downscale_tiled(model, torch.rand(1, 3, 32, 32), tile=34)
    with pytest.raises(ValueError, match="overlap"):
        downscale_tiled(model, torch.rand(1, 3, 32, 32), tile=32, overlap=-1)
    with pytest.raises(ValueError, match="z must have shape"):
        upscale_tiled(model, torch.rand(1, 3, 8, 8), torch.rand(1, 45, 8, 7))
