"""``rescale.py down|up`` (run in-process through ``main(argv)``): files, folders, latent
options, per-file errors, and the ``evaluate.py downscale|upscale`` alias.

Every expectation is rebuilt here from the model itself (``downscale`` / ``forward`` /
``inverse``), so a flag that is ignored or wired to the wrong tensor fails.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from flow_checks import perturb_
from latent_support import inverse_u8, lr_and_z, read_u8, to_tensor, to_u8
from PIL import Image
from tests_support import smooth_image

import evaluate
import rescale
from common.checkpoint import make_checkpoint, save_checkpoint
from common.images import load_image, save_image
from common.metrics import image_metrics, quantize_to_uint8
from irn.model import IRN, IRNConfig


def tiny_model(scale: int) -> IRN:
    """A small IRN, the same at every call, perturbed away from the identity."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        irn = IRN(IRNConfig(scale=scale, blocks_per_level=1, gc=4 if scale == 4 else 8))
    return perturb_(irn, std=0.02 if scale == 4 else 0.05, seed=1 if scale == 4 else 2).eval()


def save_tiny(path: Path, scale: int) -> Path:
    model = tiny_model(scale)
    config = {"model": dataclasses.asdict(model.config)}
    save_checkpoint(path, make_checkpoint(model=model, config=config, step=7, include_rng=False))
    return path


@pytest.fixture(scope="module")
def ckpt4(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny_x4.pt", 4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An x2 checkpoint (latent tests: a larger z per LR pixel)."""
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny_x2.pt", 2)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """``one/a.png`` (64x80), ``b.png`` (same size, another image), ``odd.png`` (41x53, not a
    multiple of the scale) and ``small.png`` (another size)."""
    root = tmp_path_factory.mktemp("latent")
    save_image(root / "one" / "a.png", smooth_image(64, 80, seed=1))
    save_image(root / "b.png", smooth_image(64, 80, seed=2))
    save_image(root / "odd.png", smooth_image(41, 53, seed=3))
    save_image(root / "small.png", smooth_image(48, 80, seed=4))
    return root


def run(argv: list, capsys, main=rescale.main) -> str:
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def fail(argv: list, capsys, main=rescale.main) -> str:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------------------------------
# One file: reflect padding, the PNG text chunks, --output-size, --tile, errors
# ---------------------------------------------------------------------------------------------


def test_down_up_round_trip_odd_size(ckpt4, tmp_path, capsys):
    rng = np.random.default_rng(0)
    photo = smooth_image(37, 53, seed=5) * 0.9 + 0.1 * rng.random((37, 53, 3))
    src = save_image(tmp_path / "in.png", photo.astype(np.float32))
    lr_path, hr_path = tmp_path / "lr.png", tmp_path / "hr.png"
    out = run(["down", src, lr_path, "--checkpoint", ckpt4], capsys)
    assert "reflect-padded at the bottom/right to 56x40" in out
    with Image.open(lr_path) as im:
        assert im.size == (14, 10) and im.mode == "RGB" and im.text["irn:original-size"] == "53x37"
        assert im.text["irn:scale"] == "4"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # atomic write
    out = run(["up", lr_path, hr_path, "--checkpoint", ckpt4, "--seed", 2], capsys)
    assert "cropping the 56x40 result to the original 53x37" in out
    assert load_image(hr_path).shape == (37, 53, 3)
    # what a user gets equals the library path on the padded image
    model = tiny_model(4)
    padded = np.pad(load_image(src), [(0, 3), (0, 3), (0, 0)], mode="reflect")
    with torch.no_grad():
        lr = model.downscale(torch.from_numpy(padded).permute(2, 0, 1)[None])
        expected_lr = to_u8(lr)
        np.testing.assert_array_equal(read_u8(lr_path), expected_lr)
        z = torch.randn(model.z_shape(lr.shape), generator=torch.Generator().manual_seed(2))
        expected_hr = inverse_u8(model, to_tensor(expected_lr / 255.0), z)[:37, :53]
    np.testing.assert_array_equal(read_u8(hr_path), expected_hr)
    # tiled and temperature 0, explicit output size
    tiled = tmp_path / "hr_tiled.png"
    argv = ["up", lr_path, tiled, "--checkpoint", ckpt4, "--temperature", 0]
    run([*argv, "--tile", 32, "--output-size", "50x36"], capsys)
    assert load_image(tiled).shape == (36, 50, 3)
    argv = ["up", lr_path, tiled, "--checkpoint", ckpt4, "--output-size", "57x9"]
    assert "--output-size 57x9: larger than" in fail(argv, capsys)
    err = fail(["up", lr_path, tmp_path / "hr.xyz", "--checkpoint", ckpt4], capsys)
    assert "output" in err and "hr.xyz: not an image file name" in err
    err = fail(["down", src, tmp_path / "lr.jpg", "--checkpoint", ckpt4], capsys)
    assert "lossless 8-bit .png" in err
    err = fail(["down", tmp_path / "none.png", lr_path, "--checkpoint", ckpt4], capsys)
    assert "none.png" in err
    err = fail(["down", src, lr_path, "--checkpoint", ckpt4, "--scale", 2], capsys)
    assert "--scale 2 does not match" in err
    err = fail(["down", src, lr_path, "--checkpoint", ckpt4, "--tile", 34], capsys)
    assert "--tile 34 must be a multiple of the scale 4" in err


def test_commands_and_help(capsys):
    for argv in ([], ["sideways"]):
        err = fail(argv, capsys)
        assert "rescale.py" in err and "down" in err and "up" in err
    with pytest.raises(SystemExit) as exc:
        rescale.main(["up", "-h"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--z-from", "--output-size", "--seed", "--temperature", "--tile", "--amp"):
        assert flag in help_text  # generated from UpscaleConfig
    assert "folder" in help_text


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def test_folders_keep_the_layout_and_equal_single_files(ckpt4, tmp_path, capsys, monkeypatch):
    photos = tmp_path / "photos"
    save_image(photos / "a.png", smooth_image(40, 48, seed=1))
    save_image(photos / "sub" / "b.jpg", smooth_image(37, 53, seed=2))
    loads = []
    real_load = rescale.cli.load_rescaling_model
    monkeypatch.setattr(
        rescale.cli, "load_rescaling_model", lambda *a: loads.append(1) or real_load(*a)
    )
    out = run(["down", photos, tmp_path / "lr", "--checkpoint", ckpt4], capsys)
    assert len(loads) == 1  # one model for the folder
    assert "[1/2] wrote" in out and "[2/2] wrote" in out
    assert sorted(p.relative_to(tmp_path / "lr").as_posix() for p in (tmp_path / "lr").rglob("*")
                  if p.is_file()) == ["a.png", "sub/b.png"]  # fmt: skip
    for name, rel in (("a.png", "a.png"), ("sub/b.jpg", "sub/b.png")):
        single = tmp_path / "single" / rel
        run(["down", photos / name, single, "--checkpoint", ckpt4], capsys)
        np.testing.assert_array_equal(read_u8(tmp_path / "lr" / rel), read_u8(single))
    with Image.open(tmp_path / "lr" / "sub" / "b.png") as im:
        assert im.text["irn:original-size"] == "53x37"
    loads.clear()
    out = run(["up", tmp_path / "lr", tmp_path / "hr", "--checkpoint", ckpt4, "--seed", 3], capsys)
    assert len(loads) == 1 and "[2/2] wrote" in out
    assert load_image(tmp_path / "hr" / "a.png").shape == (40, 48, 3)
    assert load_image(tmp_path / "hr" / "sub" / "b.png").shape == (37, 53, 3)  # cropped back
    run(["up", tmp_path / "lr" / "sub" / "b.png", tmp_path / "one.png", "--checkpoint", ckpt4,
         "--seed", 3], capsys)  # fmt: skip
    np.testing.assert_array_equal(
        read_u8(tmp_path / "hr/sub/b.png"), read_u8(tmp_path / "one.png")
    )
    # a single image into an existing folder: <folder>/<stem>.png
    run(["down", photos / "sub" / "b.jpg", tmp_path / "lr", "--checkpoint", ckpt4], capsys)
    assert (tmp_path / "lr" / "b.png").is_file()
    # OUT inside IN: the outputs of an earlier run are not inputs
    run(["down", photos, photos / "lr", "--checkpoint", ckpt4], capsys)
    out = run(["down", photos, photos / "lr", "--checkpoint", ckpt4], capsys)
    assert "[2/2]" in out and "[3/" not in out


def test_a_failing_file_is_named_and_the_others_still_run(ckpt, images, tmp_path, capsys):
    photos = tmp_path / "photos"
    save_image(photos / "a.png", load_image(images / "one" / "a.png"))
    (photos / "broken.png").write_bytes(b"\x89PNG but not really")
    save_image(photos / "c.png", load_image(images / "small.png"))
    assert (
        rescale.main(["down", str(photos), str(tmp_path / "lr"), "--checkpoint", str(ckpt)]) == 1
    )
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "Traceback" not in captured.err
    assert "1 of 3 image(s) failed" in captured.err
    assert (tmp_path / "lr" / "a.png").is_file() and (tmp_path / "lr" / "c.png").is_file()
    assert not (tmp_path / "lr" / "broken.png").exists()
    # up with --z-from: the LR of another size fails alone, naming its file
    lr_dir = tmp_path / "lr"
    (lr_dir / "zz.png").write_bytes(b"")  # an empty file fails as well, after c.png
    argv = ["up", lr_dir, tmp_path / "hr", "--checkpoint", ckpt, "--z-from", images / "b.png"]
    assert rescale.main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert (
        str(lr_dir / "c.png") in err and "latent transfer needs LR images of the same size" in err
    )
    assert "zz.png" in err and "2 of 3 image(s) failed" in err
    model = tiny_model(2)
    lr_q, _ = lr_and_z(model, load_image(images / "one" / "a.png"))
    _, z = lr_and_z(model, load_image(images / "b.png"))
    np.testing.assert_array_equal(read_u8(tmp_path / "hr" / "a.png"), inverse_u8(model, lr_q, z))


def test_folder_errors_before_any_work(ckpt4, tmp_path, capsys):
    photos = tmp_path / "photos"
    save_image(photos / "a.png", smooth_image(32, 32, seed=1))
    save_image(photos / "a.jpg", smooth_image(32, 32, seed=2))
    err = fail(["down", photos, tmp_path / "lr", "--checkpoint", ckpt4], capsys)
    assert "a.jpg" in err and "a.png" in err and "would both be written to" in err
    (tmp_path / "file.png").write_bytes(b"")
    err = fail(["down", photos, tmp_path / "file.png", "--checkpoint", ckpt4], capsys)
    assert "file.png: must be a folder" in err
    (tmp_path / "empty").mkdir()
    err = fail(["down", tmp_path / "empty", tmp_path / "lr", "--checkpoint", ckpt4], capsys)
    assert "no images found under" in err and "empty" in err
    assert not (tmp_path / "lr").exists()


# ---------------------------------------------------------------------------------------------
# Latent options of up: --z zero, --z-from, tiles
# ---------------------------------------------------------------------------------------------


def test_up_z_zero_ignores_the_seed_and_is_the_zero_latent_inverse(ckpt, images, tmp_path, capsys):
    model = tiny_model(2)
    lr_q, z = lr_and_z(model, load_image(images / "one" / "a.png"))
    expected = inverse_u8(model, lr_q, torch.zeros_like(z))
    lr_png = tmp_path / "lr.png"
    save_image(lr_png, to_u8(lr_q))
    results = []
    for k, flags in enumerate((["--z", "zero", "--seed", 1], ["--temperature", 0, "--seed", 9])):
        dst = tmp_path / f"up{k}.png"
        out = run(["up", lr_png, dst, "--checkpoint", ckpt, *flags], capsys)
        assert "z = 0" in out
        results.append(read_u8(dst))
    np.testing.assert_array_equal(results[0], expected)
    np.testing.assert_array_equal(results[1], expected)
    run(["up", lr_png, tmp_path / "s.png", "--checkpoint", ckpt, "--seed", 1], capsys)
    assert not np.array_equal(read_u8(tmp_path / "s.png"), expected)  # not vacuous


def test_up_z_from_the_original_photo(ckpt, images, tmp_path, capsys):
    """down an odd-sized photo, up with --z-from that photo: f^-1(LR_png, z(padded)) cropped
    back, much closer to the photo than with a sampled z."""
    model = tiny_model(2)
    photo = images / "odd.png"
    lr_png, hr_png, sampled_png = tmp_path / "lr.png", tmp_path / "hr.png", tmp_path / "s.png"
    run(["down", photo, lr_png, "--checkpoint", ckpt], capsys)
    out = run(["up", lr_png, hr_png, "--checkpoint", ckpt, "--z-from", photo], capsys)
    assert "z from" in out and "odd.png" in out
    padded = np.pad(load_image(photo), [(0, 1), (0, 1), (0, 0)], mode="reflect")
    _, z = lr_and_z(model, padded)
    expected = inverse_u8(model, to_tensor(load_image(lr_png)), z)[:41, :53]
    got = read_u8(hr_png)
    np.testing.assert_array_equal(got, expected)
    run(["up", lr_png, sampled_png, "--checkpoint", ckpt, "--seed", 1], capsys)
    reference = quantize_to_uint8(load_image(photo))
    psnr_own = image_metrics(reference, got, crop_border=2)["psnr_rgb"]
    psnr_sampled = image_metrics(reference, read_u8(sampled_png), crop_border=2)["psnr_rgb"]
    assert psnr_own > psnr_sampled + 5, (psnr_own, psnr_sampled)


def test_tiled_z_from_up_equals_untiled(ckpt, images, tmp_path, capsys):
    src = ["--z-from", images / "b.png"]
    lr_png = tmp_path / "lr.png"
    run(["down", images / "one" / "a.png", lr_png, "--checkpoint", ckpt], capsys)
    outs = []
    for name, flags in (("full.png", []), ("tiled.png", ["--tile", 32, "--tile-overlap", 16])):
        run(["up", lr_png, tmp_path / name, "--checkpoint", ckpt, *src, *flags], capsys)
        outs.append(read_u8(tmp_path / name).astype(int))
    assert np.abs(outs[0] - outs[1]).max() <= 1
    run(["up", lr_png, tmp_path / "n.png", "--checkpoint", ckpt, *src, "--tile", 32,
         "--tile-overlap", 0], capsys)  # fmt: skip
    assert np.abs(read_u8(tmp_path / "n.png").astype(int) - outs[0]).max() > 1  # not vacuous


def test_up_z_from_errors_name_the_files_and_sizes(ckpt, images, tmp_path, capsys):
    lr_png = tmp_path / "lr.png"
    save_image(lr_png, load_image(images / "small.png")[:20, :30])
    argv = ["up", lr_png, tmp_path / "o.png", "--checkpoint", ckpt]
    err = fail([*argv, "--z-from", images / "b.png"], capsys)
    assert "b.png" in err and str(lr_png) in err and "40x32" in err and "30x20" in err
    assert "60x40" in err  # the HR size that would fit
    err = fail([*argv, "--z-from", tmp_path / "missing.png"], capsys)
    assert "--z-from" in err and "missing.png" in err
    err = fail([*argv, "--z-from", images / "b.png", "--z", "zero"], capsys)
    assert "--z-from" in err and "--z zero" in err
    err = fail([*argv, "--z-from", images / "b.png", "--temperature", 0.5], capsys)
    assert "--temperature" in err and "--z-from" in err
    err = fail([*argv, "--z", "zero", "--temperature", 0.5], capsys)
    assert "--temperature" in err and "contradicts --z zero" in err
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    err = fail([*argv, "--z-from", bad], capsys)
    assert "--z-from" in err and "broken.png" in err
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------------------------------------
# evaluate.py downscale|upscale: the former commands forward here
# ---------------------------------------------------------------------------------------------


def test_evaluate_py_downscale_upscale_forward_to_rescale(ckpt4, images, tmp_path, capsys):
    photo = images / "odd.png"
    run(["down", photo, tmp_path / "new_lr.png", "--checkpoint", ckpt4], capsys)
    assert evaluate.main(["downscale", str(photo), str(tmp_path / "old_lr.png"),
                          "--checkpoint", str(ckpt4)]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "'evaluate.py downscale' is 'rescale.py down'" in captured.err
    assert "wrote" in captured.out
    np.testing.assert_array_equal(
        read_u8(tmp_path / "old_lr.png"), read_u8(tmp_path / "new_lr.png")
    )
    up = ["--checkpoint", ckpt4, "--seed", 4, "--tile", 32]
    run(["up", tmp_path / "new_lr.png", tmp_path / "new_hr.png", *up], capsys)
    run(["upscale", tmp_path / "new_lr.png", tmp_path / "old_hr.png", *up], capsys, evaluate.main)
    np.testing.assert_array_equal(
        read_u8(tmp_path / "old_hr.png"), read_u8(tmp_path / "new_hr.png")
    )
    # errors and help come from rescale.py
    err = fail(
        ["downscale", photo, tmp_path / "x.jpg", "--checkpoint", ckpt4], capsys, evaluate.main
    )
    assert "rescale.py down" in err and "lossless 8-bit .png" in err
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["upscale", "-h"])
    assert exc.value.code == 0 and "usage: rescale.py up" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        evaluate.main(["-h"])
    assert "rescale.py down IN OUT" in " ".join(capsys.readouterr().out.split())
