"""The dissertation's training options (its sec. 3.4): each one changes what it should.

Every test computes the expected objective by hand from the model's own forward/inverse and
compares it with ``train_irn.compute_losses`` (or the training loop) under that option; the
options are also checked to make a difference, so a flag that were silently ignored would fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests_support import tiny_images

import train_irn
from common.actnorm import ActNorm
from common.coupling import EnhancedAffineCoupling
from common.images import jpeg_roundtrip
from irn import training as irn_training
from irn.checkpoints import to_authors_state_dict
from irn.model import IRN, IRNConfig

B = 2


def perturbed_model(**overrides) -> IRN:
    torch.manual_seed(0)
    model = IRN(IRNConfig(scale=2, blocks_per_level=2, gc=4, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(B, 3, 8, 8, generator=g), torch.rand(B, 3, 4, 4, generator=g)


def losses_with(model, **fields):
    hr, lr_ref = batch()
    cfg = train_irn.IRNTrainConfig(**fields)
    gen = torch.Generator().manual_seed(5)
    noise = train_irn.sample_noise(model, hr, cfg, gen)
    return train_irn.compute_losses(model, hr, lr_ref, cfg, noise, 4.0)


def z_like(model, hr, seed=5):
    y, _ = model(hr)
    return torch.randn(y[:, 3:].shape, generator=torch.Generator().manual_seed(seed))


def quant(x):
    return (x.clamp(0, 1) * 255).round() / 255


def luma(x):
    return (16.0 + 65.481 * x[:, 0] + 128.553 * x[:, 1] + 24.966 * x[:, 2]) / 255.0


def charb(d):
    return torch.sqrt(d * d + 1e-6).sum() / B


def test_y_channel_usage_uses_luma_losses():
    model = perturbed_model()
    hr, lr_ref = batch()
    y, _ = model(hr)
    x_rec, _ = model.inverse(torch.cat([quant(y[:, :3]), z_like(model, hr)], 1))
    guide_rgb = ((y[:, :3] - lr_ref) ** 2).sum() / B
    guide_y = ((luma(y[:, :3]) - luma(lr_ref)) ** 2).sum() / B
    recon_rgb, recon_y = charb(x_rec - hr), charb(luma(x_rec) - luma(hr))
    full = losses_with(model, y_channel_usage=1.0)
    assert torch.allclose(full["guide"], guide_y, rtol=1e-5)
    assert torch.allclose(full["recon"], recon_y, rtol=1e-5)
    half = losses_with(model, y_channel_usage=0.5)
    assert torch.allclose(half["guide"], 0.5 * guide_rgb + 0.5 * guide_y, rtol=1e-5)
    assert torch.allclose(half["recon"], 0.5 * recon_rgb + 0.5 * recon_y, rtol=1e-5)
    assert not torch.allclose(guide_rgb, guide_y, rtol=1e-2)


@pytest.mark.parametrize(
    ("guide", "recon"), [("l1", "l2"), ("charbonnier", "l1"), ("l2", "charbonnier")]
)
def test_loss_kinds(guide, recon):
    model = perturbed_model()
    hr, lr_ref = batch()
    y, _ = model(hr)
    x_rec, _ = model.inverse(torch.cat([quant(y[:, :3]), z_like(model, hr)], 1))
    rho = {
        "l1": lambda d: d.abs().sum() / B,
        "l2": lambda d: (d * d).sum() / B,
        "charbonnier": charb,
    }
    got = losses_with(model, guide_loss=guide, recon_loss=recon)
    assert torch.allclose(got["guide"], rho[guide](y[:, :3] - lr_ref), rtol=1e-5)
    assert torch.allclose(got["recon"], rho[recon](x_rec - hr), rtol=1e-5)


def test_zero_sample_upscales_with_z_zero_and_draws_nothing():
    model = perturbed_model()
    hr, lr_ref = batch()
    y, _ = model(hr)
    x0, _ = model.inverse(torch.cat([quant(y[:, :3]), torch.zeros_like(y[:, 3:])], 1))
    cfg = train_irn.IRNTrainConfig(zero_sample=True)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    noise = train_irn.sample_noise(model, hr, cfg, gen)
    assert noise.z is None
    got = train_irn.compute_losses(model, hr, lr_ref, cfg, noise, 4.0)
    assert torch.allclose(got["recon"], charb(x0 - hr), rtol=1e-5)
    assert torch.equal(gen.get_state(), state)
    assert not torch.allclose(losses_with(model)["recon"], got["recon"], rtol=1e-3)


def test_gaussian_scale_scales_the_sampled_z():
    model = perturbed_model()
    hr, _ = batch()
    y, _ = model(hr)
    x_rec, _ = model.inverse(torch.cat([quant(y[:, :3]), 0.25 * z_like(model, hr)], 1))
    got = losses_with(model, gaussian_scale=0.25)
    assert torch.allclose(got["recon"], charb(x_rec - hr), rtol=1e-5)


def test_sr_mode_upscales_the_bicubic_lr():
    model = perturbed_model()
    hr, lr_ref = batch()
    x_rec, _ = model.inverse(torch.cat([lr_ref, z_like(model, hr)], 1))
    got = losses_with(model, sr_mode=True)
    assert torch.allclose(got["recon"], charb(x_rec - hr), rtol=1e-5)
    # the reconstruction no longer depends on the model's LR: its gradient reaches the
    # parameters only through the inverse, so the guidance term is unchanged
    assert torch.allclose(got["guide"], losses_with(model)["guide"])


def test_quantised_loss_options_use_8bit_images_with_straight_through_gradients():
    model = perturbed_model()
    hr, lr_ref = batch()
    y, _ = model(hr)
    lr_q = quant(y[:, :3])
    x_rec, _ = model.inverse(torch.cat([lr_q, z_like(model, hr)], 1))
    got = losses_with(model, quantize_guide_loss=True, quantize_recon_loss=True)
    assert torch.allclose(got["guide"], ((lr_q - lr_ref) ** 2).sum() / B, rtol=1e-5)
    assert torch.allclose(got["recon"], charb(quant(x_rec) - hr), rtol=1e-5)
    model.zero_grad()
    got["guide"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().max() > 0 for g in grads)


def test_jpeg_in_the_loop_compresses_and_passes_gradients_straight_through():
    g = torch.Generator().manual_seed(0)
    lr = quant(torch.rand(3, 3, 16, 16, generator=g)).requires_grad_(True)
    cfg = train_irn.IRNTrainConfig(jpeg_quality_range=(50, 60))
    noise = train_irn.draw_noise(
        (3, 9, 4, 4), cfg, torch.Generator(), np.random.default_rng(7), lr.device
    )
    out = train_irn.jpeg_ste(lr, noise.qualities)
    qualities = np.random.default_rng(7).integers(50, 61, size=3)
    for i in range(3):
        expected = jpeg_roundtrip(lr[i].detach(), int(qualities[i]))
        assert torch.allclose(out[i].detach(), expected)
    assert not torch.allclose(out.detach(), lr.detach())
    w = torch.randn(lr.shape, generator=g)
    (out * w).sum().backward()
    assert torch.equal(lr.grad, w)


def test_jpeg_quality_range_reaches_the_reconstruction():
    model = perturbed_model()
    plain = losses_with(model)
    jpeg = losses_with(model, jpeg_quality_range=(10, 10))
    assert torch.allclose(plain["guide"], jpeg["guide"])
    assert not torch.allclose(plain["recon"], jpeg["recon"], rtol=1e-3)


def test_clip_value_bounds_every_gradient_entry():
    model = perturbed_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = losses_with(model)
    cfg = train_irn.IRNTrainConfig(clip_value=1e-3, grad_clip=0)
    irn_training.backward_and_step(losses["total"], model, opt, scaler, cfg)  # (norm, skipped)
    biggest = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    assert biggest == pytest.approx(1e-3)
    model.zero_grad()
    losses_with(model)["total"].backward()
    unclipped = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    assert unclipped > 1e-2


def test_clamp_tightness_flag_reaches_every_coupling(tmp_path):
    model_cfg, _ = train_irn.parse_args(["--clamp-tightness", "2", "--iters", "1"])
    model = IRN(model_cfg)
    couplings = [m for m in model.modules() if isinstance(m, EnhancedAffineCoupling)]
    assert couplings and all(c.clamp_tightness == 2.0 for c in couplings)


def test_loss_flip_schedule_phases():
    w = [irn_training.loss_weights(s, 16.0, 1.0, 3, 10.0) for s in range(10)]
    assert w[:3] == [(16.0, 1.0)] * 3
    assert w[3:6] == [(16.0, 0.1)] * 3
    assert w[6:9] == [(1.6, 1.0)] * 3
    assert w[9] == (16.0, 1.0)
    assert irn_training.loss_weights(123, 16.0, 1.0, None, 10.0) == (16.0, 1.0)


def test_loss_flip_schedule_weights_the_training_objective(tmp_path):
    train_dir, val_dir = tiny_images(tmp_path)
    argv = ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "2", "--patch-size", "16"]
    argv += ["--data", str(train_dir), "--val-data", str(val_dir), "--out", str(tmp_path / "r")]
    argv += ["--iters", "3", "--val-every", "100", "--no-tensorboard"]
    argv += ["--loss-flip-period", "1", "--loss-flip-scale", "4"]
    torch.manual_seed(0)
    out = train_irn.main(argv)
    weights = [(16.0, 1.0), (16.0, 0.25), (4.0, 1.0)]
    for rec, (lg, lr) in zip(out["history"], weights, strict=True):
        expected = lg * rec["guide"] + lr * rec["recon"] + rec["distr"]
        assert math.isclose(rec["total"], expected, rel_tol=1e-5)


def test_actnorm_follows_every_coupling_and_initialises_from_data(tmp_path):
    model = IRN(IRNConfig(scale=2, blocks_per_level=2, gc=4, actnorm=True))
    ops = list(model.operations)
    for i, op in enumerate(ops):
        if isinstance(op, EnhancedAffineCoupling):
            assert isinstance(ops[i + 1], ActNorm)
    norms = [op for op in ops if isinstance(op, ActNorm)]
    assert len(norms) == 2 and not any(bool(n.initialized) for n in norms)
    hr, _ = batch()
    model.train()
    y, logdet = model(hr)
    assert all(bool(n.initialized) for n in norms)
    # after the data-dependent init the last ActNorm's output is standardised per channel
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(12), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(12), atol=1e-4)
    x, logdet_inv = model.inverse(y)
    assert torch.allclose(x, hr, atol=1e-5)
    assert torch.allclose(logdet + logdet_inv, torch.zeros(B), atol=1e-3)
    with pytest.raises(ValueError, match="ActNorm"):
        to_authors_state_dict(model)
    # the flag builds it from the command line, and the checkpoint carries it
    model_cfg, _ = train_irn.parse_args(["--actnorm", "--iters", "1"])
    assert model_cfg.actnorm
    assert not train_irn.parse_args(["--iters", "1"])[0].actnorm


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--loss-flip-period", "0"], "loss-flip-period"),
        (["--loss-flip-scale", "0"], "loss-flip-scale"),
        (["--y-channel-usage", "1.5"], "y-channel-usage"),
        (["--jpeg-quality-range", "90", "10"], "jpeg-quality-range"),
    ],
)
def test_bad_option_values_name_the_flag(flags, field, capsys):
    with pytest.raises(SystemExit):
        train_irn.parse_args([*flags, "--iters", "1"])
    assert field in capsys.readouterr().err
