"""Multi-scale IRN through the tools: train_irn.py (the checkpoint records the option, resume,
wrong flags named, micro-batches), evaluate.py (draws, temperature, tiles, JPEG) and rescale.py
(--z zero, --z-from)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from flow_checks import perturb_
from tests_support import tiny_images

import evaluate
import irn.evaluation as ev
import rescale
import train_irn
from common.checkpoint import make_checkpoint, save_checkpoint
from common.images import load_image, save_image
from irn.checkpoints import load_irn, to_authors_state_dict
from irn.data import sample_photos
from irn.model import IRN, IRNConfig

TINY = ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "4", "--patch-size", "16"]
MULTI = ["--multiscale", "--split-channels", "3", "--split-prior", "learned"]


def tiny_multiscale() -> IRN:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cfg = IRNConfig(
            blocks_per_level=1, gc=4, multiscale=True, split_channels=3, split_prior="learned"
        )
        model = IRN(cfg)
    return perturb_(model, std=0.02, seed=1).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = tiny_multiscale()
    path = tmp_path_factory.mktemp("ckpt") / "multi.pt"
    config = {"model": dataclasses.asdict(model.config)}
    save_checkpoint(path, make_checkpoint(model=model, config=config, step=3, include_rng=False))
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    save_image(root / "a.png", sample_photos("val")[0].image[100:164, 150:230])
    return root


def train(tmp_path, *extra):
    train_dir, val_dir = tiny_images(tmp_path)
    argv = [*TINY, "--data", str(train_dir), "--val-data", str(val_dir), "--threads", "1"]
    return train_irn.main([*argv, "--val-every", "100", "--log-every", "1", *extra])


def test_training_records_resumes_and_names_a_wrong_flag(tmp_path):
    out = tmp_path / "run"
    first = train(tmp_path, *MULTI, "--iters", "2", "--save-every", "2", "--out", str(out))
    stored = torch.load(out / "last.pt", weights_only=True)["config"]["model"]
    assert stored["multiscale"] and stored["split_channels"] == 3
    assert stored["split_prior"] == "learned"
    model, _ = load_irn(out / "last.pt")
    assert model.config == first["model"].config
    rest = train(tmp_path, *MULTI, "--iters", "3", "--out", str(out), "--resume", "auto")
    assert rest["step"] == 3
    with pytest.raises(SystemExit, match="split_channels: checkpoint 3, flags 6"):
        train(tmp_path, "--multiscale", "--split-channels", "6", "--split-prior", "learned",
              "--iters", "4", "--out", str(out), "--resume", "auto")  # fmt: skip
    with pytest.raises(ValueError, match="multi-scale"):
        to_authors_state_dict(model)


def test_learned_prior_term_is_in_the_distribution_loss():
    model = tiny_multiscale().train()
    hr = torch.rand(2, 3, 16, 16)
    cfg = train_irn.IRNTrainConfig()
    noise = train_irn.sample_noise(model, hr, cfg, torch.Generator().manual_seed(0))
    losses = train_irn.compute_losses(model, hr, torch.rand(2, 3, 4, 4), cfg, noise, 16.0)
    y, _ = model(hr)
    prior = model.operations[-1]
    _, log_std = prior.mean_log_std(y[:, : prior.split])
    expected = ((y[:, 3:] ** 2).sum() + 2 * (log_std + prior.log_std_bound).sum()) / 2
    assert abs(log_std.sum().item()) > 0
    torch.testing.assert_close(losses["distr"], expected)


def test_micro_batches_and_memory_saving_give_the_same_update(tmp_path):
    flags = [*MULTI, "--iters", "2"]
    whole = train(tmp_path / "a", *flags, "--out", str(tmp_path / "a" / "run"))
    other = train(
        tmp_path / "b", *flags, "--micro-batch", "2", "--memory-saving",
        "--out", str(tmp_path / "b" / "run"),
    )  # fmt: skip
    for a, b in zip(whole["history"], other["history"], strict=True):
        for k in ("total", "guide", "recon", "distr"):
            assert math.isclose(a[k], b[k], rel_tol=2e-5), (k, a[k], b[k])


def test_evaluate_draws_tiles_and_jpeg(ckpt, photo, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    argv = ["--checkpoint", ckpt, "--data", photo, "--draws", 2, "--temperature", 0.8]
    assert evaluate.main([str(a) for a in [*argv, "--json", out_json]]) == 0
    row = json.loads(out_json.read_text())["datasets"][0]["images"][0]
    direct = ev.evaluate_rescaling(
        tiny_multiscale(), load_image(photo / "a.png"), draws=2, temperature=0.8
    )
    assert row["psnr_y"] == pytest.approx(direct["psnr_y"], abs=1e-9)
    tiled = tmp_path / "t.json"
    flags = ["--tile", 32, "--tile-overlap", 16, "--jpeg-quality", 90, "--json", tiled]
    assert evaluate.main([str(a) for a in [*argv, *flags]]) == 0
    tiled_row = json.loads(tiled.read_text())["datasets"][0]["images"][0]
    assert tiled_row["tile"] == 32 and math.isfinite(tiled_row["psnr_y"])
    capsys.readouterr()


def test_rescale_z_zero_and_z_from(ckpt, photo, tmp_path, capsys):
    model = tiny_multiscale()
    src = photo / "a.png"
    lr_png = tmp_path / "lr.png"
    assert rescale.main(["down", str(src), str(lr_png), "--checkpoint", str(ckpt)]) == 0
    lr = torch.from_numpy(load_image(lr_png)).permute(2, 0, 1)[None].float()
    hr = torch.from_numpy(load_image(src)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        z_own = model(hr)[0][:, 3:]
        expected = {
            "zero.png": model.upscale(lr, temperature=0),
            "from.png": model.upscale(lr, z_own),
        }
    for name, flags in (("zero.png", ["--z", "zero"]), ("from.png", ["--z-from", str(src)])):
        dst = tmp_path / name
        argv = ["up", str(lr_png), str(dst), "--checkpoint", str(ckpt), *flags]
        assert rescale.main(argv) == 0
        want = (expected[name][0].permute(1, 2, 0).clamp(0, 1) * 255).round().numpy()
        got = np.asarray(load_image(dst)) * 255
        assert np.abs(got - want).max() <= 1.0
    tiled = tmp_path / "tiled.png"
    argv = ["up", str(lr_png), str(tiled), "--checkpoint", str(ckpt), "--z-from", str(src)]
    assert rescale.main([*argv, "--tile", "32", "--tile-overlap", "16"]) == 0
    diff = np.abs(load_image(tiled) - load_image(tmp_path / "from.png")).max() * 255
    assert diff <= 1.0
    capsys.readouterr()


def test_bench_configurations():
    from bench import bench_irn

    opts = bench_irn.parse_config("amp+multiscale+learned")
    assert opts["amp"] and opts["multiscale"] and opts["learned"]
    assert bench_irn.plain_counterpart("amp+multiscale+learned") == "amp"
    assert bench_irn.plain_counterpart("multiscale") == "fp32"
    assert bench_irn.plain_counterpart("amp") is None
    with pytest.raises(ValueError, match="needs 'multiscale'"):
        bench_irn.parse_config("learned")
