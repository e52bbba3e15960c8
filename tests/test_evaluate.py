"""``evaluate.py`` (run in-process through ``main(argv)``) and ``irn/evaluation.py``.

``rescale.py`` (and the ``evaluate.py downscale|upscale`` alias) is tested in ``test_rescale.py``,
``evaluate_color.py`` in ``test_evaluate_color.py``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flow_checks import perturb_

import evaluate
import irn.evaluation as ev
from common.checkpoint import make_checkpoint, save_checkpoint
from common.images import load_image, save_image
from common.imresize import imresize
from common.metrics import image_metrics, modcrop, quantize_to_uint8
from irn.data import sample_photos
from irn.model import IRN, IRNConfig

METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
LR_METRICS = tuple(f"lr_{k}" for k in METRICS)


def tiny_model(scale: int = 4) -> IRN:
    """The same small IRN with non-zero weights at every call (seeded init and perturbation)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        irn = IRN(IRNConfig(scale=scale, blocks_per_level=1, gc=4))
    return perturb_(irn, std=0.02, seed=1).eval()


@pytest.fixture(scope="module")
def ours_ckpt(tmp_path_factory) -> Path:
    """Our training-checkpoint format for a tiny perturbed IRN x4."""
    model = tiny_model()
    config = {"seed": 10, "model": dataclasses.asdict(model.config)}
    path = tmp_path_factory.mktemp("ckpt") / "tiny_x4.pt"
    save_checkpoint(path, make_checkpoint(model=model, config=config, step=7, include_rng=False))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two small crops of the sample photos as PNG files, one with sizes not a multiple of 4."""
    root = tmp_path_factory.mktemp("photos")
    val = sample_photos("val")
    save_image(root / "a.png", val[0].image[100:164, 150:230])
    save_image(root / "sub" / "b.png", val[1].image[200:253, 300:371])  # 53 x 71
    return root


def run(argv: list[str], capsys) -> tuple[str, str]:
    assert evaluate.main([str(a) for a in argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def fail(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        evaluate.main([str(a) for a in argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def by_name(document: dict) -> dict[str, dict]:
    return {r["name"]: r for d in document["datasets"] for r in d["images"]}


# ---------------------------------------------------------------------------------------------
# Bicubic baseline pinned to the reference metric functions
# ---------------------------------------------------------------------------------------------


def reference_bicubic(path: Path, scale: int) -> dict[str, float]:
    hr = modcrop(load_image(path), scale).astype(np.float64)
    up = imresize(imresize(hr, scale=1.0 / scale), scale=float(scale))
    return image_metrics(quantize_to_uint8(hr), quantize_to_uint8(up), crop_border=scale)


def test_bicubic_equals_reference_metrics(photos, tmp_path, capsys):
    out_json = tmp_path / "bic.json"
    out, _ = run(
        ["--method", "bicubic", "--scale", 4, "--data", photos, "--json", out_json], capsys
    )
    assert "Bicubic & Bicubic x4" in out and "mean (2 images)" in out
    rows = by_name(json.loads(out_json.read_text()))
    assert set(rows) == {"a.png", "sub/b.png"}
    for name, row in rows.items():
        ref = reference_bicubic(photos / name, 4)
        for key in METRICS:
            assert row[key] == pytest.approx(ref[key], abs=1e-4), (name, key)
        assert row["lr_psnr_y"] is None  # LR' is the bicubic LR itself
    assert rows["sub/b.png"]["size"] == [53, 71]
    assert rows["sub/b.png"]["evaluated_size"] == [52, 68]


def test_bicubic_on_sample_validation_photos(capsys, tmp_path):
    out_json = tmp_path / "val.json"
    argv = ["--method", "bicubic", "--scale", 4, "--json", out_json, "--sample-set", "classic"]
    out, _ = run(argv, capsys)
    assert out.splitlines()[0].startswith("No --data given: evaluating on the built-in")
    assert "classic set (skimage:chelsea, skimage:stereo_motorcycle_right)" in out
    mean = json.loads(out_json.read_text())["datasets"][0]["mean"]
    assert round(mean["psnr_y"], 2) == 28.39
    assert round(mean["ssim_y"], 4) == 0.7794
    assert mean["psnr_y"] == pytest.approx(28.3937, abs=1e-4)


def test_default_sample_set_is_what_training_validates_on(capsys, tmp_path):
    from irn.data import validation_pairs
    from train_irn import bicubic_metrics

    out_json = tmp_path / "val.json"
    out, _ = run(["--method", "bicubic", "--scale", 4, "--json", out_json], capsys)
    assert "broad set" in out and "sklearn:china" in out
    doc = json.loads(out_json.read_text())["datasets"][0]
    assert len(doc["images"]) == 3
    trained = bicubic_metrics(validation_pairs(sample_photos("val", "broad"), 4), 4)
    assert doc["mean"]["psnr_y"] == pytest.approx(trained["psnr_y"], abs=1e-9)
    assert doc["mean"]["ssim_y"] == pytest.approx(trained["ssim_y"], abs=1e-9)


# ---------------------------------------------------------------------------------------------
# IRN checkpoints: ours and the authors'
# ---------------------------------------------------------------------------------------------


def test_ours_checkpoint_and_json_schema(ours_ckpt, photos, tmp_path, capsys):
    out_json = tmp_path / "ours.json"
    argv = ["--checkpoint", ours_ckpt, "--data", photos, "--scale", 4, "--draws", 2]
    out, err = run([*argv, "--seed", 3, "--temperature", 0.9, "--json", out_json], capsys)
    assert "ours checkpoint, step 7" in out
    assert "images step 2/2" in err  # the progress logger (plain lines when not a TTY)
    doc = json.loads(out_json.read_text())
    assert set(doc) == {"settings", "datasets", "seconds"}
    settings = doc["settings"]
    assert settings["checkpoint"] == str(ours_ckpt) and settings["checkpoint_kind"] == "ours"
    assert settings["checkpoint_step"] == 7 and settings["model_config"]["gc"] == 4
    assert (settings["draws"], settings["seed"], settings["temperature"]) == (2, 3, 0.9)
    assert settings["scale"] == 4 and settings["method"] == "irn" and settings["tile"] is None
    [dataset] = doc["datasets"]
    assert dataset["name"] == photos.name and dataset["num_images"] == 2
    assert set(dataset["mean"]) >= {*METRICS, *LR_METRICS}
    model = tiny_model()
    for row in dataset["images"]:
        assert set(row) >= {"name", "path", "size", "evaluated_size", "draws", "draw_psnr_y"}
        assert row["draws"] == 2 and len(row["draw_psnr_y"]) == 2
        direct = ev.evaluate_rescaling(
            model, load_image(photos / row["name"]), draws=2, seed=3, temperature=0.9
        )
        for key in (*METRICS, *LR_METRICS):
            assert row[key] == pytest.approx(direct[key], abs=1e-9), key
    means = [np.mean([r[k] for r in dataset["images"]]) for k in METRICS]
    assert means == pytest.approx([dataset["mean"][k] for k in METRICS])


def test_authors_checkpoint(fixtures_dir, photos, tmp_path, capsys):
    out_json = tmp_path / "authors.json"
    ckpt = fixtures_dir / "irn_reference_x2_small.pt"
    data = tmp_path / "one"
    save_image(data / "c.png", load_image(photos / "a.png")[:40, :48])
    argv = ["--checkpoint", ckpt, "--data", data, "--draws", 1, "--json", out_json]
    out, _ = run(argv, capsys)  # --scale omitted: the checkpoint's
    assert "IRN x2" in out and "authors checkpoint" in out
    doc = json.loads(out_json.read_text())
    assert doc["settings"]["checkpoint_kind"] == "authors" and doc["settings"]["scale"] == 2
    row = doc["datasets"][0]["images"][0]
    from irn.checkpoints import load_authors_checkpoint

    direct = ev.evaluate_rescaling(
        load_authors_checkpoint(ckpt), load_image(data / "c.png"), draws=1
    )
    assert row["psnr_y"] == pytest.approx(direct["psnr_y"], abs=1e-9)
    assert row["lr_ssim_rgb"] == pytest.approx(direct["lr_ssim_rgb"], abs=1e-9)


def test_layouts_tiles_jpeg_and_saved_images(ours_ckpt, photos, tmp_path, capsys):
    # Set5-style: HR next to LR_bicubic -> only HR is evaluated; two --data -> two datasets
    set5 = tmp_path / "Set5"
    save_image(set5 / "HR" / "x.png", load_image(photos / "a.png"))
    save_image(set5 / "LR_bicubic" / "X4" / "x.png", load_image(photos / "a.png")[:16, :20])
    out_json = tmp_path / "layout.json"
    saved = tmp_path / "saved"
    argv = ["--checkpoint", ours_ckpt, "--data", set5, photos, "--draws", 1]
    argv += ["--tile", 32, "--tile-overlap", 16, "--jpeg-quality", 90]
    argv += ["--save-images", saved, "--json", out_json, "--figure-crop", 32]
    out, _ = run(argv, capsys)
    assert "Summary (means per dataset)" in out
    doc = json.loads(out_json.read_text())
    assert [d["name"] for d in doc["datasets"]] == ["Set5", photos.name]
    assert [r["name"] for r in doc["datasets"][0]["images"]] == ["HR/x.png"]
    assert doc["datasets"][0]["images"][0]["tile"] == 32
    for suffix in ("_LR.png", "_HR.png", "_compare.png"):
        assert (saved / "Set5" / "HR" / f"x{suffix}").is_file()
        assert (saved / photos.name / "sub" / f"b{suffix}").is_file()
    figure = load_image(saved / "Set5" / "HR" / "x_compare.png")
    assert figure.shape[0] > 192 and figure.shape[1] > 4 * 192  # 4 labelled panels
    assert load_image(saved / "Set5" / "HR" / "x_LR.png").shape == (16, 20, 3)
    # JPEG applies: the tiled + JPEG LR differs from the bicubic LR more than without JPEG
    plain = ev.evaluate_rescaling(tiny_model(), load_image(photos / "a.png"), draws=1)
    jpeg_row = by_name(doc)["a.png"]
    assert jpeg_row["lr_psnr_y"] < plain["lr_psnr_y"]


# ---------------------------------------------------------------------------------------------
# Errors: clear messages naming the flag or the file
# ---------------------------------------------------------------------------------------------


def test_error_messages(ours_ckpt, photos, tmp_path, capsys):
    err = fail(["--checkpoint", ours_ckpt, "--data", tmp_path / "missing"], capsys)
    assert "--data: folder" in err and "missing" in err and "does not exist" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG but not really")
    err = fail(["--checkpoint", ours_ckpt, "--data", bad], capsys)
    assert "broken.png" in err
    err = fail(["--checkpoint", ours_ckpt, "--data", photos, "--scale", 2], capsys)
    assert "--scale 2 does not match the checkpoint's scale 4" in err
    err = fail(["--checkpoint", tmp_path / "nope.pt", "--data", photos], capsys)
    assert "--checkpoint" in err and "nope.pt" in err
    err = fail(["--data", photos], capsys)
    assert "--checkpoint" in err and "required" in err
    err = fail(["--method", "bicubic", "--data", photos], capsys)
    assert "--scale" in err
    err = fail(["--method", "bicubic", "--scale", 4, "--draws", 3], capsys)
    assert "--draws" in err
    err = fail(["--checkpoint", ours_ckpt, "--tile", 34], capsys)
    assert "--tile 34 must be a multiple of the scale 4" in err
    err = fail(["--checkpoint", ours_ckpt, "--tile", "huge"], capsys)
    assert "--tile" in err
    err = fail(["--checkpoint", ours_ckpt, "--tile", 16], capsys)
    assert "--tile: tile must be at least 32" in err


# ---------------------------------------------------------------------------------------------
# Bounded-memory pieces of irn/evaluation.py equal the whole-image computations
# ---------------------------------------------------------------------------------------------


def test_banded_metrics_and_resize_equal_direct():
    rng = np.random.default_rng(0)
    img = rng.random((67, 45, 3))
    a = quantize_to_uint8(img)
    b = quantize_to_uint8(np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1))
    direct = image_metrics(a, b, crop_border=4)
    banded = ev.image_metrics_lowmem(a, b, 4, band_pixels=45 * 5, banded=True)
    for key in METRICS:
        assert banded[key] == pytest.approx(direct[key], rel=1e-12, abs=1e-12)
    hr = img[:64, :44]
    for up, factor in ((False, 0.25), (True, 4.0)):
        expected = imresize(hr, scale=factor)
        got = ev.bicubic_resize(hr, 4, up=up, band_pixels=10, banded=True)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_lowmem_evaluation_equals_direct(monkeypatch, photos):
    hr = load_image(photos / "a.png")
    model = tiny_model()
    direct = ev.evaluate_rescaling(model, hr, draws=1)
    direct_bic = ev.bicubic_baseline(hr, 4, jpeg_quality=80)
    monkeypatch.setattr(ev, "LOWMEM_PIXELS", 0)
    monkeypatch.setattr(ev, "BAND_PIXELS", 500)
    banded = ev.evaluate_rescaling(model, hr, draws=1)
    banded_bic = ev.bicubic_baseline(hr, 4, jpeg_quality=80)
    for key in (*METRICS, *LR_METRICS):
        assert banded[key] == pytest.approx(direct[key], abs=1e-9)
    for key in METRICS:
        assert banded_bic[key] == pytest.approx(direct_bic[key], abs=1e-9)


def test_tile_auto_follows_the_memory_budget(ours_ckpt, photos, tmp_path, capsys):
    out_json = tmp_path / "auto.json"
    argv = ["--checkpoint", ours_ckpt, "--data", photos, "--draws", 1, "--tile", "auto"]
    run([*argv, "--json", out_json], capsys)  # 2 GB: one tile covers these small images
    assert {r["tile"] for r in by_name(json.loads(out_json.read_text())).values()} == {None}
    out, err = run([*argv, "--memory-budget", 0.5001, "--json", out_json], capsys)
    rows = by_name(json.loads(out_json.read_text()))
    assert {r["tile"] for r in rows.values()} == {32}  # the minimum tile
    assert "a.png: 6 tiles of <= 32px, 64px HR context" in err


def test_images_too_small_are_skipped_and_listed(ours_ckpt, photos, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    save_image(mixed / "ok.png", load_image(photos / "a.png"))
    save_image(mixed / "tiny.png", np.zeros((5, 7, 3), np.uint8))
    out_json = tmp_path / "mixed.json"
    _, err = run(["--checkpoint", ours_ckpt, "--data", mixed, "--draws", "1", "--json", out_json],
                 capsys)  # fmt: skip
    assert "skipping tiny.png: 7x5 is too small for x4" in err
    (ds,) = json.loads(out_json.read_text())["datasets"]
    assert [r["name"] for r in ds["images"]] == ["ok.png"] and ds["num_images"] == 1
    assert ds["skipped"] == [{"name": "tiny.png", "reason": ds["skipped"][0]["reason"]}]
    assert ds["skipped"][0]["reason"].startswith("7x5 is too small for x4")
    assert ds["mean"]["psnr_y"] == pytest.approx(ds["images"][0]["psnr_y"])
