"""``evaluate.py`` latent options (``--z zero``, ``--z-from``) and ``--lr-source bicubic``
(``rescale.py up``'s latent options: ``test_rescale.py``).

Every expectation is rebuilt here from the model itself (``forward`` / ``inverse``) and the
MATLAB-style ``imresize``, so a flag that is ignored or wired to the wrong tensor fails.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flow_checks import perturb_
from latent_support import inverse_u8, lr_and_z, to_tensor
from tests_support import smooth_image

import evaluate
from common.checkpoint import make_checkpoint, save_checkpoint
from common.images import load_image, save_image
from common.imresize import imresize
from common.metrics import image_metrics, modcrop, quantize_to_uint8
from irn.model import IRN, IRNConfig

SCALE = 2


def tiny_model() -> IRN:
    """A small x2 IRN, the same at every call, perturbed away from the identity."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        irn = IRN(IRNConfig(scale=SCALE, blocks_per_level=1, gc=8))
    return perturb_(irn, std=0.05, seed=2).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    model = tiny_model()
    path = tmp_path_factory.mktemp("ckpt") / "tiny_x2.pt"
    config = {"model": dataclasses.asdict(model.config)}
    save_checkpoint(path, make_checkpoint(model=model, config=config, step=1, include_rng=False))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """``one/a.png`` (64x80, evaluated), ``b.png`` (same size, another image), ``odd.png``
    (41x53, not a multiple of the scale) and ``small.png`` (another size)."""
    root = tmp_path_factory.mktemp("latent")
    save_image(root / "one" / "a.png", smooth_image(64, 80, seed=1))
    save_image(root / "b.png", smooth_image(64, 80, seed=2))
    save_image(root / "odd.png", smooth_image(41, 53, seed=3))
    save_image(root / "small.png", smooth_image(48, 80, seed=4))
    return root


def run(argv: list, capsys) -> str:
    assert evaluate.main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def fail(argv: list, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        evaluate.main([str(a) for a in argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def evaluate_saving(ckpt: Path, data: Path, out: Path, extra: list, capsys) -> tuple[dict, str]:
    """Evaluate ``data`` (one image, a.png) and return (its JSON row with settings, stdout);
    the HR' it wrote is ``row["hr_rec"]`` (uint8)."""
    argv = ["--checkpoint", ckpt, "--data", data, "--json", out / "r.json"]
    stdout = run([*argv, "--save-images", out, "--figure-crop", 32, *extra], capsys)
    doc = json.loads((out / "r.json").read_text())
    [row] = doc["datasets"][0]["images"]
    row["settings"] = doc["settings"]
    row["hr_rec"] = np.asarray(load_image(row["files"][1]) * 255 + 0.5, dtype=np.uint8)
    return row, stdout


# ---------------------------------------------------------------------------------------------
# --z zero
# ---------------------------------------------------------------------------------------------


def test_z_zero_ignores_the_seed_and_is_the_zero_latent_inverse(ckpt, images, tmp_path, capsys):
    model = tiny_model()
    hr = load_image(images / "one" / "a.png")
    lr_q, z = lr_and_z(model, hr)
    expected = inverse_u8(model, lr_q, torch.zeros_like(z))
    rows = []
    for seed, flags in ((1, ["--z", "zero"]), (2, ["--z", "zero"]), (3, ["--temperature", 0])):
        out = tmp_path / f"run{seed}"
        row, stdout = evaluate_saving(ckpt, images / "one", out, [*flags, "--seed", seed], capsys)
        assert "z = 0 (mean upscaling" in stdout and "1 draw" in stdout
        np.testing.assert_array_equal(row["hr_rec"], expected)
        assert row["draws"] == 1 and len(row["draw_psnr_y"]) == 1  # --draws 5 is pointless
        settings = row["settings"]
        assert settings["z"] == "zero" and settings["z_source"] == "zero"
        assert settings["temperature"] == 0  # --z zero and --temperature 0 are one setting
        assert settings["draws_per_image"] == 1 and settings["z_from"] is None
        rows.append(row)
    assert rows[0]["psnr_y"] == rows[1]["psnr_y"] == rows[2]["psnr_y"]
    # a sampled z gives another image: the check above is not vacuous
    sampled, _ = evaluate_saving(ckpt, images / "one", tmp_path / "s", ["--draws", 1], capsys)
    assert not np.array_equal(sampled["hr_rec"], expected)


# ---------------------------------------------------------------------------------------------
# --z-from: latent transfer
# ---------------------------------------------------------------------------------------------


def test_z_from_is_the_inverse_with_the_images_latent(ckpt, images, tmp_path, capsys):
    model = tiny_model()
    hr = load_image(images / "one" / "a.png")
    lr_q, z_own = lr_and_z(model, hr)
    _, z_other = lr_and_z(model, load_image(images / "b.png"))

    own, stdout = evaluate_saving(
        ckpt, images / "one", tmp_path / "own", ["--z-from", images / "one" / "a.png"], capsys
    )
    assert "z transferred from --z-from" in stdout and "a.png" in stdout
    np.testing.assert_array_equal(own["hr_rec"], inverse_u8(model, lr_q, z_own))
    assert own["draws"] == 1
    settings = own["settings"]
    assert settings["z_from"] == str(images / "one" / "a.png")
    assert settings["z_source"] == "transfer" and settings["z"] == "sample"
    assert settings["z_from_size"] == [64, 80] and settings["z_from_lr_size"] == [32, 40]

    other, _ = evaluate_saving(
        ckpt, images / "one", tmp_path / "other", ["--z-from", images / "b.png"], capsys
    )
    np.testing.assert_array_equal(other["hr_rec"], inverse_u8(model, lr_q, z_other))
    sampled, _ = evaluate_saving(
        ckpt, images / "one", tmp_path / "sampled", ["--draws", 1, "--seed", 5], capsys
    )
    # The image's own latent restores what LR' lost; a random or a foreign z does not.
    assert own["psnr_y"] > sampled["psnr_y"] + 5, (own["psnr_y"], sampled["psnr_y"])
    assert own["psnr_y"] > other["psnr_y"] + 5, (own["psnr_y"], other["psnr_y"])


def test_tiled_z_from_equals_untiled(ckpt, images, tmp_path, capsys):
    src = ["--z-from", images / "b.png"]
    untiled, _ = evaluate_saving(ckpt, images / "one", tmp_path / "u", src, capsys)
    # 32 px HR tiles at x2 = 16 LR px: 2 x 3 tiles, 16 LR px of context (> receptive field);
    # both the latent of b.png and the upscaling of a.png run tiled
    tiled, _ = evaluate_saving(
        ckpt, images / "one", tmp_path / "t", [*src, "--tile", 32, "--tile-overlap", 16], capsys
    )
    assert tiled["tile"] == 32 and untiled["tile"] is None
    diff = np.abs(tiled["hr_rec"].astype(int) - untiled["hr_rec"].astype(int))
    assert diff.max() <= 1
    for key in ("psnr_y", "psnr_rgb", "lr_psnr_y"):
        assert tiled[key] == pytest.approx(untiled[key], abs=1e-3)
    # without context the tile borders show: the comparison above is not vacuous
    no_context, _ = evaluate_saving(
        ckpt, images / "one", tmp_path / "n", [*src, "--tile", 32, "--tile-overlap", 0], capsys
    )
    assert np.abs(no_context["hr_rec"].astype(int) - untiled["hr_rec"].astype(int)).max() > 1


def test_z_from_errors_name_the_files_and_sizes(ckpt, images, tmp_path, capsys):
    # evaluation: an image whose LR has another size than the --z-from image's
    data = tmp_path / "mixed"
    save_image(data / "a.png", load_image(images / "one" / "a.png"))
    save_image(data / "z.png", load_image(images / "small.png"))
    err = fail(["--checkpoint", ckpt, "--data", data, "--z-from", images / "b.png"], capsys)
    assert "--z-from" in err and "b.png" in err and str(data / "z.png") in err
    assert "x2 LR 40x32" in err and "LR is 40x24" in err and "Traceback" not in err
    # flags that contradict each other, a --z-from file that is missing or broken: the shared
    # checks of irn/cli.py, tested through rescale.py up in test_rescale.py; one here
    argv = ["--checkpoint", ckpt, "--data", images / "one"]
    err = fail([*argv, "--z-from", images / "b.png", "--z", "zero"], capsys)
    assert "--z-from" in err and "--z zero" in err
    err = fail(["--method", "bicubic", "--scale", 2, "--lr-source", "bicubic"], capsys)
    assert "--lr-source" in err and "--method bicubic" in err
    err = fail(["--method", "bicubic", "--scale", 2, "--z-from", images / "b.png"], capsys)
    assert "--z-from" in err


# ---------------------------------------------------------------------------------------------
# --lr-source bicubic: super-resolution of the bicubic LR
# ---------------------------------------------------------------------------------------------


def test_lr_source_bicubic_upscales_the_8bit_bicubic_lr(ckpt, images, tmp_path, capsys):
    model = tiny_model()
    hr = load_image(images / "one" / "a.png")
    seed = 3
    row, stdout = evaluate_saving(
        ckpt,
        images / "one",
        tmp_path / "sr",
        ["--lr-source", "bicubic", "--draws", 1, "--seed", seed],
        capsys,
    )
    assert "--lr-source bicubic" in stdout and "no LR' metrics" in stdout
    lr_u8 = quantize_to_uint8(imresize(modcrop(hr, SCALE).astype(np.float64), scale=1 / SCALE))
    lr = to_tensor(lr_u8.astype(np.float32) / 255)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(model.z_shape(lr.shape), generator=gen)
    expected = inverse_u8(model, lr, z)
    np.testing.assert_array_equal(row["hr_rec"], expected)
    ref = image_metrics(quantize_to_uint8(hr), expected, crop_border=SCALE)
    assert row["psnr_y"] == pytest.approx(ref["psnr_y"], abs=1e-9)
    assert all(row[k] is None for k in ("lr_psnr_y", "lr_ssim_y", "lr_psnr_rgb", "lr_ssim_rgb"))
    saved_lr = np.asarray(load_image(row["files"][0]) * 255 + 0.5, dtype=np.uint8)
    np.testing.assert_array_equal(saved_lr, lr_u8)
    settings = row["settings"]
    assert settings["lr_source"] == "bicubic" and settings["lr_metrics"] is False
    # the default (LR' of the model) with the same z is another image
    irn, _ = evaluate_saving(
        ckpt, images / "one", tmp_path / "irn", ["--draws", 1, "--seed", seed], capsys
    )
    assert not np.array_equal(irn["hr_rec"], expected) and irn["lr_psnr_y"] is not None
    assert irn["settings"]["lr_source"] == "irn" and irn["settings"]["lr_metrics"] is True
