"""Tests for common/images.py: reading/writing at the RGB boundary."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from common.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    jpeg_roundtrip,
    list_images,
    load_image,
    load_image_tensor,
    save_image,
)


@pytest.fixture()
def rgb_u8() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)


def test_png_8bit_roundtrip_is_exact_and_rgb(tmp_path, rgb_u8):
    path = save_image(tmp_path / "sub" / "dir" / "a.png", rgb_u8)  # parents are created
    assert path.exists()
    img = load_image(path)
    assert img.dtype == np.float32 and img.shape == (13, 17, 3)
    np.testing.assert_array_equal(np.round(img * 255).astype(np.uint8), rgb_u8)
    # channel order on disk is what other tools see as RGB
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb_u8)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temp left over


def test_save_float_quantises_like_quantize_to_uint8(tmp_path):
    x = np.array([[[-0.1, 0.5 / 255, 1.5 / 255], [0.2, 1.0, 3.0]]], dtype=np.float64)
    back = load_image(save_image(tmp_path / "f.png", x))
    np.testing.assert_array_equal(np.round(back * 255), [[[0, 0, 2], [51, 255, 255]]])
    # torch CHW float input
    t = torch.from_numpy(x).permute(2, 0, 1)
    np.testing.assert_array_equal(load_image(save_image(tmp_path / "t.png", t)), back)
    with pytest.raises(ValueError, match="NaN"):
        save_image(tmp_path / "nan.png", np.full((2, 2, 3), np.nan))
    with pytest.raises(ValueError, match="extension"):
        save_image(tmp_path / "x.xyz", x)


def test_save_overwrites_atomically(tmp_path, rgb_u8):
    path = tmp_path / "a.png"
    save_image(path, np.zeros_like(rgb_u8))
    save_image(path, rgb_u8)
    np.testing.assert_array_equal(np.round(load_image(path) * 255), rgb_u8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_png_16bit_keeps_precision(tmp_path):
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), rgb16[..., ::-1])  # BGR on disk
    img = load_image(path)
    assert img.dtype == np.float32
    np.testing.assert_array_equal(np.round(img.astype(np.float64) * 65535), rgb16)
    assert np.abs(img - rgb16 / 65535.0).max() < 0.5 / 65535
    # 8-bit quantisation would lose this: values differing in the low byte are kept apart
    assert len(np.unique(np.round(img * 65535))) > 256


def test_grayscale_replicated(tmp_path):
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    Image.fromarray(gray).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (5, 6, 3)
    for c in range(3):
        np.testing.assert_allclose(img[..., c], gray / 255.0, atol=1e-7)
    g16 = np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000 + 7
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    np.testing.assert_array_equal(np.round(load_image(tmp_path / "g16.png")[..., 2] * 65535), g16)
    # gray saving round-trips too
    saved = load_image(save_image(tmp_path / "s.png", gray))
    np.testing.assert_array_equal(saved[..., 1], img[..., 1])


def test_rgba_warns_and_drops_alpha(tmp_path, rgb_u8):
    alpha = np.full(rgb_u8.shape[:2] + (1,), 10, dtype=np.uint8)
    path = tmp_path / "with_alpha.png"
    Image.fromarray(np.concatenate([rgb_u8, alpha], axis=2)).save(path)
    with pytest.warns(UserWarning, match="with_alpha.png"):
        img = load_image(path)
    assert img.shape == (13, 17, 3)
    np.testing.assert_array_equal(np.round(img * 255).astype(np.uint8), rgb_u8)


def test_palette_bmp_tiff_webp(tmp_path, rgb_u8):
    pal = Image.fromarray(rgb_u8).convert("P")
    pal.save(tmp_path / "pal.png")
    expected = np.asarray(pal.convert("RGB"))
    np.testing.assert_array_equal(np.round(load_image(tmp_path / "pal.png") * 255), expected)
    for ext in (".bmp", ".tif", ".webp"):
        path = tmp_path / f"x{ext}"
        if ext == ".webp":
            Image.fromarray(rgb_u8).save(path, lossless=True)
        else:
            Image.fromarray(rgb_u8).save(path)
        np.testing.assert_array_equal(np.round(load_image(path) * 255), rgb_u8, err_msg=ext)
    t = load_image_tensor(tmp_path / "x.bmp")
    assert t.shape == (3, 13, 17) and t.dtype == torch.float32
    np.testing.assert_array_equal(np.round(t.permute(1, 2, 0).numpy() * 255), rgb_u8)


def test_jpeg_save_and_load(tmp_path):
    # a smooth image so JPEG's error is small and predictable
    yy, xx = np.mgrid[0:32, 0:48]
    img = np.stack([xx / 47.0, yy / 31.0, (xx + yy) / 78.0], axis=2)
    hi = load_image(save_image(tmp_path / "hi.jpg", img, quality=95))
    lo = load_image(save_image(tmp_path / "lo.JPEG", img, quality=5))
    err_hi, err_lo = np.abs(hi - img).mean(), np.abs(lo - img).mean()
    assert err_hi < 0.01
    assert err_lo > 2 * err_hi
    assert np.asarray(Image.open(tmp_path / "hi.jpg")).shape == (32, 48, 3)
    with pytest.raises(ValueError, match="quality"):
        save_image(tmp_path / "bad.jpg", img, quality=101)


def test_jpeg_roundtrip_in_memory(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.random((24, 24, 3)).astype(np.float32)
    u8 = (img * 255).round().astype(np.uint8)
    out_u8 = jpeg_roundtrip(u8, 50)
    assert out_u8.dtype == np.uint8 and out_u8.shape == u8.shape
    # same bytes as writing a file with the same quality and reading it back
    on_disk = load_image(save_image(tmp_path / "q50.jpg", u8, quality=50))
    np.testing.assert_array_equal(out_u8, np.round(on_disk * 255).astype(np.uint8))
    out_f = jpeg_roundtrip(img, 50)
    assert out_f.dtype == np.float32
    np.testing.assert_allclose(out_f, out_u8 / 255.0, atol=1e-7)
    assert 0.02 < np.abs(out_f - img).mean() < 0.3  # noise image: JPEG changes it clearly
    # torch batch path equals per-image numpy path and keeps dtype
    t = torch.from_numpy(img).permute(2, 0, 1)
    tb = jpeg_roundtrip(torch.stack([t, t.flip(-1)]).double(), 50)
    assert tb.dtype == torch.float64 and tb.shape == (2, 3, 24, 24)
    np.testing.assert_allclose(tb[0].permute(1, 2, 0).numpy(), out_f, atol=1e-6)
    assert (
        np.abs(jpeg_roundtrip(u8, 100).astype(int) - u8).mean()
        < np.abs(out_u8.astype(int) - u8).mean()
    )
    with pytest.raises(ValueError, match="quality"):
        jpeg_roundtrip(u8, -1)


def test_corrupt_file_raises_with_name(tmp_path):
    path = tmp_path / "broken_image.png"
    path.write_bytes(np.random.default_rng(3).bytes(200))
    with pytest.raises(ImageReadError, match="broken_image.png"):
        load_image(path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png"):
        load_image(empty)
    assert issubclass(ImageReadError, ValueError)


def test_missing_file_raises_with_name(tmp_path):
    with pytest.raises(ImageReadError, match="no_such_file.png"):
        load_image(tmp_path / "no_such_file.png")
    with pytest.raises(ImageReadError, match="a_folder"):
        (tmp_path / "a_folder").mkdir()
        load_image(tmp_path / "a_folder")


def test_list_images_recursive_sorted(tmp_path, rgb_u8):
    names = ["b/2.PNG", "a/1.png", "a/deep/er/3.jpg", "c.JpEg", "z.webp", "a/x.tif", "a/y.bmp"]
    for name in names:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "png").mkdir()  # a folder named like an extension is not a file
    found = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == sorted(
        names, key=lambda n: Path(n).parts
    )
    assert found == sorted(found)
    only_png = list_images(tmp_path, extensions=(".PNG",))
    assert only_png == [tmp_path / "a/1.png", tmp_path / "b/2.PNG"]
    assert set(IMAGE_EXTENSIONS) >= {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_list_images_follows_links_without_looping(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "i.png").write_bytes(b"")
    os.symlink(data, data / "sub" / "loop")  # a cycle
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(data, root / "linked")
    assert list_images(root) == [root / "linked" / "sub" / "i.png"]


def test_decode_image_keeps_the_stored_samples_and_to_float01_gives_load_image(tmp_path):
    from common.images import decode_image, to_float01

    rng = np.random.default_rng(2)
    rgb8 = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    rgb16 = rng.integers(0, 65536, (7, 5, 3), dtype=np.uint16)
    gray8 = rng.integers(0, 256, (7, 5), dtype=np.uint8)
    for name, arr in (("a.png", rgb8), ("b.png", rgb16), ("c.png", gray8)):
        path = tmp_path / name
        assert cv2.imwrite(str(path), arr[..., ::-1] if arr.ndim == 3 else arr)
        raw = decode_image(path)
        assert raw.dtype == arr.dtype and raw.shape == (7, 5, 3)
        expected = arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)
        np.testing.assert_array_equal(raw, expected)  # RGB order, no conversion
        np.testing.assert_array_equal(to_float01(raw), load_image(path))
    with pytest.raises(TypeError, match="int32"):
        to_float01(np.zeros((2, 2, 3), np.int32))
