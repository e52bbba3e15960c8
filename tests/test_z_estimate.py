"""``--z estimate``: z estimated from the LR (irn/tiling.py estimate_z) in the library,
evaluate.py, rescale.py and bench/heldout.py."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flow_checks import tiny_irn_x4 as tiny_x4

import evaluate
import rescale
from common.checkpoint import make_checkpoint, save_checkpoint
from common.images import load_image, save_image
from irn.evaluation import evaluate_rescaling
from irn.tiling import bicubic_region, estimate_z, latent_tiled, local_mean, tiles

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import heldout  # noqa: E402


def photo(h=48, w=64, seed=0) -> np.ndarray:
    """A flat colour with a faint gradient and grain: where z = 0 loses z's offset."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.array([0.8, 0.6, 0.3]) + 0.03 * (yy + xx)[..., None]
    return np.clip(base + 0.002 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)


def test_local_mean_box_global_and_identity():
    z = torch.randn(1, 5, 9, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(local_mean(z, 1), z)
    glob = local_mean(z, 0)
    torch.testing.assert_close(glob, z.mean((2, 3), keepdim=True).expand_as(z))
    box = local_mean(z, 3)
    assert box.shape == z.shape
    torch.testing.assert_close(box[0, :, 4, 5], z[0, :, 3:6, 4:7].mean((1, 2)))  # interior
    # at the corner the edge row and column are replicated
    corner = torch.stack([z[0, :, 0, 0]] * 4 + [z[0, :, 0, 1]] * 2 + [z[0, :, 1, 0]] * 2
                         + [z[0, :, 1, 1]]).mean(0)  # fmt: skip
    torch.testing.assert_close(box[0, :, 0, 0], corner)
    const = torch.full((1, 2, 6, 6), 0.25)
    torch.testing.assert_close(local_mean(const, 4), const)
    with pytest.raises(ValueError, match="window"):
        local_mean(z, -1)


def test_estimate_is_the_local_mean_latent_of_the_bicubic_upscale():
    model = tiny_x4()
    lr = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(1))
    up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    with torch.no_grad():
        want = local_mean(model.encode(up.clamp(0, 1))[1], 5)
    got = estimate_z(model, lr, window=5)
    assert got.shape == tuple(model.z_shape(lr.shape))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    tiled = estimate_z(model, lr, window=5, tile=32, overlap=4)  # the forward pass in tiles
    assert (tiled - want).abs().max() < 1e-3 * want.abs().max() + 1e-6
    z_up = latent_tiled(model, up.clamp(0, 1))
    torch.testing.assert_close(estimate_z(model, lr, window=0), local_mean(z_up, 0))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_region_is_the_crop_of_the_whole_upscale(scale):
    lr = torch.rand(1, 3, 11, 14, generator=torch.Generator().manual_seed(scale))
    whole = torch.nn.functional.interpolate(
        lr, scale_factor=scale, mode="bicubic", align_corners=False
    ).clamp(0, 1)
    boxes = [box for _, box in tiles(11, 14, 4, 1)] + [(0, 11, 0, 14), (5, 6, 7, 8)]
    for r0, r1, c0, c1 in boxes:  # borders, one-pixel margins, the whole image, a single pixel
        got = bicubic_region(lr, (r0, r1, c0, c1), scale)
        want = whole[:, :, r0 * scale : r1 * scale, c0 * scale : c1 * scale]
        # float32 source coordinates (1/3 is inexact) round differently in the crop: ~1e-6
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_estimate_z_never_upscales_the_whole_image(monkeypatch):
    """Tiled, the bicubic upscale is made per padded tile (the only whole-image tensor is z),
    and the result is that of the same tiles cut from the whole upscale."""
    model = tiny_x4()
    lr = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(2))
    up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    want = local_mean(latent_tiled(model, up.clamp(0, 1), tile=64, overlap=4), 5)
    sizes, interpolate = [], torch.nn.functional.interpolate

    def recording(x, *args, **kwargs):
        out = interpolate(x, *args, **kwargs)
        sizes.append(out.shape[2] * out.shape[3])
        return out

    monkeypatch.setattr(torch.nn.functional, "interpolate", recording)
    got = estimate_z(model, lr, window=5, tile=64, overlap=4)
    largest_tile = (64 + 2 * 4 * 4 + 2 * 2 * 4) ** 2  # tile, context, bicubic margin (HR pixels)
    assert len(sizes) == len(list(tiles(40, 48, 16, 4))) == 9
    assert max(sizes) <= largest_tile < 40 * 48 * 16
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_estimate_beats_zero_on_a_flat_photo():
    model = tiny_x4()
    hr = photo()
    zero = evaluate_rescaling(model, hr, temperature=0)
    est = evaluate_rescaling(model, hr, z_estimate=7)
    assert est["draws"] == 1 and zero["draws"] == 1
    assert est["lr_psnr_y"] == zero["lr_psnr_y"]  # the same LR'
    assert est["psnr_y"] > zero["psnr_y"] + 3
    with pytest.raises(ValueError, match="z_estimate"):
        evaluate_rescaling(model, hr, z_estimate=7, temperature=0.5)
    with pytest.raises(ValueError, match="window"):
        evaluate_rescaling(model, hr, z_estimate=-2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    model = tiny_x4()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    config = {"seed": 10, "model": dataclasses.asdict(model.config)}
    save_checkpoint(path, make_checkpoint(model=model, config=config, step=3, include_rng=False))
    return path


def test_evaluate_cli_estimate(ckpt, tmp_path, capsys):
    save_image(tmp_path / "d" / "flat.png", photo())
    out_json = tmp_path / "e.json"
    argv = ["--checkpoint", ckpt, "--data", tmp_path / "d", "--json", out_json]
    assert evaluate.main([str(a) for a in [*argv, "--z", "estimate", "--z-window", 5]]) == 0
    out = capsys.readouterr().out
    assert "z estimated from LR' (local mean over 5 LR pixels): 1 draw" in out
    doc = json.loads(out_json.read_text())
    assert doc["settings"]["z_source"] == "estimate" and doc["settings"]["z_window"] == 5
    row = doc["datasets"][0]["images"][0]
    lib = evaluate_rescaling(tiny_x4(), load_image(tmp_path / "d" / "flat.png"), z_estimate=5)
    assert row["psnr_y"] == pytest.approx(lib["psnr_y"], abs=1e-9)
    bads = [(["--temperature", "0.5"], "--temperature"), (["--z-window", "-1"], "--z-window"),
            (["--z-from", tmp_path / "d" / "flat.png"], "--z-from")]  # fmt: skip
    for bad, msg in bads:
        with pytest.raises(SystemExit) as exc:
            evaluate.main([str(a) for a in [*argv, "--z", "estimate", *bad]])
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err


def test_rescale_up_estimate_equals_the_library(ckpt, tmp_path, capsys):
    src = tmp_path / "flat.png"
    save_image(src, photo())
    base = ["--checkpoint", str(ckpt)]
    assert rescale.main(["down", str(src), str(tmp_path / "lr.png"), *base]) in (0, None)
    up = ["up", str(tmp_path / "lr.png"), str(tmp_path / "hr.png"), *base, "--z", "estimate"]
    assert rescale.main([*up, "--tile", "32"]) in (0, None)
    assert "z estimated from the LR, window 7" in capsys.readouterr().out
    model = tiny_x4()
    lr = torch.from_numpy(load_image(tmp_path / "lr.png").transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        want = model.upscale(lr, z=estimate_z(model, lr, 7))
    want = torch.round(want.clamp(0, 1) * 255)[0].permute(1, 2, 0).numpy()
    got = np.round(load_image(tmp_path / "hr.png") * 255)
    assert np.abs(got - want).max() <= 1  # tiles: at most a rounding flip


def test_heldout_measure_with_estimate():
    model = tiny_x4()
    photos = [("flat", photo(64, 64))]
    ref = {}
    zero = heldout.measure(model, photos, 0.0, 1, False, ref)
    est = heldout.measure(model, photos, 1.0, 1, False, ref, z_estimate=7)
    assert est[0]["bicubic"] == zero[0]["bicubic"] and est[0]["diff"] > zero[0]["diff"] + 3


def _zero_and_normal_checkpoints(tmp_path):
    model = tiny_x4()
    paths = {}
    for g in (0.0, 1.0):
        paths[g] = tmp_path / f"g{g}.pt"
        config = {"seed": 1, "gaussian_scale": g, "model": dataclasses.asdict(model.config)}
        save_checkpoint(
            paths[g], make_checkpoint(model=model, config=config, step=3, include_rng=False)
        )
    return paths


def _z_setting(ckpt, data, extra, tmp_path, capsys):
    out_json = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(ckpt), *data, *extra, "--json", str(out_json)]) == 0
    settings = json.loads(out_json.read_text())["settings"]
    return settings["z"], capsys.readouterr().out


def test_z_auto_estimates_for_a_zero_trained_checkpoint_and_notes_a_sampled_z(tmp_path, capsys):
    paths = _zero_and_normal_checkpoints(tmp_path)
    save_image(tmp_path / "d" / "flat.png", photo())
    data = ["--data", str(tmp_path / "d"), "--draws", "1"]
    z, out = _z_setting(paths[0.0], data, [], tmp_path, capsys)
    assert z == "estimate" and "--z auto: z estimated" in out
    for extra, expected in ((["--z", "estimate"], "estimate"), (["--z", "zero"], "zero")):
        z, out = _z_setting(paths[0.0], data, extra, tmp_path, capsys)
        assert z == expected and "--gaussian-scale 0" not in out
    for extra in (["--z", "sample"], ["--temperature", "0.8"]):
        z, out = _z_setting(paths[0.0], data, extra, tmp_path, capsys)
        assert z == "sample" and "note: " in out and "trained with --gaussian-scale 0" in out
    z, out = _z_setting(paths[1.0], data, [], tmp_path, capsys)
    assert z == "sample" and "--gaussian-scale 0" not in out
    rescale.main(["down", str(tmp_path / "d" / "flat.png"), str(tmp_path / "lr.png"),
                  "--checkpoint", str(paths[0.0])])  # fmt: skip
    rescale.main(["up", str(tmp_path / "lr.png"), str(tmp_path / "hr.png"),
                  "--checkpoint", str(paths[0.0])])  # fmt: skip
    out = capsys.readouterr().out
    assert "--z auto: z estimated" in out and "z estimated from the LR, window 7" in out


def test_z_window_without_the_estimate_is_refused(tmp_path, capsys):
    paths = _zero_and_normal_checkpoints(tmp_path)
    save_image(tmp_path / "d" / "flat.png", photo())
    base = ["--checkpoint", str(paths[1.0]), "--data", str(tmp_path / "d")]
    for extra in (["--z", "zero"], ["--z", "sample"], ["--temperature", "0.5"]):
        with pytest.raises(SystemExit):
            evaluate.main([*base, *extra, "--z-window", "3"])
        assert "--z-window" in capsys.readouterr().err
    assert evaluate.main([*base, "--draws", "1", "--z-window", "3"]) == 0
    assert "--z-window is not used" in capsys.readouterr().out


def test_training_validates_a_zero_trained_run_with_the_estimate():
    import train_irn

    model = tiny_x4()
    pairs = [{"hr": photo(48, 64, seed)} for seed in (0, 1)]
    zero_cfg = dataclasses.replace(train_irn.IRNTrainConfig(), gaussian_scale=0.0)
    got = train_irn.validate(model, pairs, zero_cfg, "cpu", False)
    rows = [evaluate_rescaling(model, p["hr"], z_estimate=7) for p in pairs]
    assert got["psnr_y"] == pytest.approx(np.mean([r["psnr_y"] for r in rows]), abs=1e-9)
    at_zero = np.mean([evaluate_rescaling(model, p["hr"], temperature=0)["psnr_y"] for p in pairs])
    assert abs(got["psnr_y"] - at_zero) > 1.0  # the estimate, not z = 0
    square = {"hr": photo(48, 48)}  # the preview's crop is the whole of it
    preview = train_irn.preview_images(model, square, zero_cfg, "cpu", False)
    estimated = evaluate_rescaling(model, square["hr"], z_estimate=7, return_images=True)
    np.testing.assert_array_equal(preview["4_hr_irn"] * 255.0, estimated["hr_rec"])
    sampled_cfg = train_irn.IRNTrainConfig()
    assert train_irn.validation_latent(sampled_cfg)["temperature"] == 1.0
    # the words kept with best.pt: a sampled run's old checkpoints were measured the same way
    method = train_irn.validation_method
    assert method({"gaussian_scale": 0.5}, True) == method({"gaussian_scale": 0.5}) != method({})
    assert method({"gaussian_scale": 0.0}) == "z estimated from LR' (window 7)"
    assert method({"gaussian_scale": 0.0}, True) == "z = 0"
