"""Multi-scale IRN (irn/multiscale.py): the float64 proofs for both priors, shapes, the learned
prior's loss term, memory-saving backprop and the configuration errors."""

from __future__ import annotations

import pytest
import torch
from flow_checks import assert_all_proofs, assert_gradcheck, assert_roundtrip, perturb_

from common.split import SplitPrior
from irn.model import IRN, IRNConfig
from irn.multiscale import (
    LEARNED_LOG_STD_BOUND,
    OnActive,
    ParkedHaar,
    active_channels,
    latent_logscale_penalty,
    split_sizes,
)


def tiny(scale=4, prior="normal", split=None, seed=0, actnorm=False) -> IRN:
    cfg = IRNConfig(
        scale=scale,
        blocks_per_level=2,
        gc=4,
        multiscale=True,
        split_channels=split,
        split_prior=prior,
        actnorm=actnorm,
    )
    return perturb_(IRN(cfg), 0.1, seed)


@pytest.mark.parametrize(
    "scale,split,prior,shape",
    [
        (4, 3, "normal", (2, 3, 4, 4)),
        (4, None, "learned", (2, 3, 4, 4)),
        (8, None, "normal", (1, 3, 8, 8)),
        (8, 3, "learned", (1, 3, 8, 8)),
    ],
)
def test_whole_network_proofs_float64(double, scale, split, prior, shape):
    """Round trip, log-det = slogdet of the autograd Jacobian per sample, gradcheck."""
    model = tiny(scale, prior, split)
    assert_all_proofs(model, torch.rand(shape))


def test_layers_proofs_float64(double):
    x = torch.randn(2, 5, 4, 4)
    assert_all_proofs(ParkedHaar(3, 2), x)
    net = tiny(4, "normal", 6)
    wrapped = next(op for op in net.operations if isinstance(op, OnActive))
    assert_all_proofs(wrapped, torch.randn(2, wrapped.active + wrapped.parked, 2, 2))


def test_shapes_and_interface_match_plain_irn():
    for scale in (4, 8):
        plain, multi = IRN(IRNConfig(scale=scale)), tiny(scale)
        x = torch.rand(1, 3, 16, 16)
        with torch.no_grad():
            assert multi(x)[0].shape == plain(x)[0].shape
            lr = multi.downscale(x)
            assert multi.upscale(lr, temperature=0).shape == x.shape
        assert multi.z_channels == plain.z_channels


def test_split_sizes_and_parameters():
    assert split_sizes(IRNConfig(scale=4, multiscale=True)) == [6]
    assert split_sizes(IRNConfig(scale=8, multiscale=True)) == [6, 12]
    assert split_sizes(IRNConfig(scale=8, multiscale=True, split_channels=3)) == [3, 3]
    assert active_channels(IRNConfig(scale=4, multiscale=True, split_channels=3)) == 36
    plain = sum(p.numel() for p in IRN(IRNConfig(scale=4)).parameters())
    multi = sum(p.numel() for p in IRN(IRNConfig(scale=4, multiscale=True)).parameters())
    assert multi < plain


def test_parked_channels_are_the_level_latents(double):
    """With the normal prior the parked part of y is the squeezed level-1 output, untouched."""
    model = tiny(4, "normal", 3)
    x = torch.rand(1, 3, 8, 8)
    level1 = model.operations[:3]  # Haar + 2 couplings
    h, _ = level1(x)
    y, _ = model(x)
    parked = torch.nn.functional.pixel_unshuffle(h[:, 9:], 2)
    assert torch.equal(y[:, 36:], parked)


def test_learned_prior_penalty_is_twice_the_nll_scale(double):
    """sum eps^2 + penalty = 2 * (-log N(z; mu, sigma)) - const for the parked part."""
    model = tiny(4, "learned", 3)
    prior = model.operations[-1]
    assert isinstance(prior, SplitPrior)
    x = torch.rand(2, 3, 8, 8)
    before, _ = model.operations[:-1](x)
    y, _ = model(x)
    mean, log_std = prior.mean_log_std(before[:, :36])
    assert log_std.abs().max() > 0  # perturbed: not the identity
    z = before[:, 36:]
    nll = (((z - mean) / log_std.exp()) ** 2 / 2 + log_std).sum() / 2
    eps = y[:, 36:]
    got = (eps**2).sum() / 2 + latent_logscale_penalty(model, y)
    const = 2 * prior.log_std_bound * log_std[0].numel()  # 2 b per element, mean over the batch
    torch.testing.assert_close(got, 2 * nll + const)
    assert latent_logscale_penalty(tiny(4, "normal"), y).item() == 0.0


def test_learned_prior_scale_is_bounded_and_stays_exact(double):
    """A prior driven to sigma -> 0 stops at e^-b: the penalty stays >= 0, the map exact."""
    model = tiny(4, "learned", 3)
    prior = model.operations[-1]
    c2 = prior.channels - prior.split
    with torch.no_grad():
        prior.prior.bias[c2:] = -1e4  # raw log sigma far below any bound
    x = torch.rand(2, 3, 8, 8)
    y, logdet = model(x)
    _, log_std = prior.mean_log_std(y[:, : prior.split])
    b = LEARNED_LOG_STD_BOUND
    assert log_std.min().item() >= -b and log_std.min().item() < -b + 1e-6
    penalty = latent_logscale_penalty(model, y)
    assert torch.isfinite(penalty) and 0 <= penalty.item() < 1e-3
    x_back, logdet_inv = model.inverse(y)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(logdet + logdet_inv, torch.zeros_like(logdet), rtol=0, atol=1e-9)


def test_temperature_zero_gives_the_conditional_mean(double):
    model = tiny(4, "learned", 3)
    lr = torch.rand(1, 3, 2, 2)
    z = torch.zeros(1, 45, 2, 2)
    with torch.no_grad():
        y = torch.cat([lr, z], 1)
        hr = model.upscale(lr, temperature=0)
        x, _ = model.inverse(y)
    torch.testing.assert_close(hr, x)


@pytest.mark.parametrize("prior", ["normal", "learned"])
def test_memory_saving_gradients_match(double, prior):
    model = tiny(4, prior, 3)
    x = torch.rand(2, 3, 8, 8)
    grads = []
    for saving in (False, True):
        model.zero_grad()
        model.memory_saving = saving
        y, logdet = model(x)
        rec, _ = model.inverse(y * 0.9)
        (y.square().sum() + logdet.sum() + rec.sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_actnorm_option_builds_and_inverts(double):
    model = tiny(4, "normal", 3, actnorm=True)
    assert_roundtrip(model, torch.rand(2, 3, 8, 8))
    assert_gradcheck(model.operations[-1], torch.rand(1, 48, 2, 2))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"scale": 2, "multiscale": True}, "at least two Haar levels"),
        ({"scale": 3, "multiscale": True}, "x3 has one learnable"),
        ({"scale": 4, "split_channels": 3}, "split_channels applies only with multiscale"),
        ({"scale": 4, "split_prior": "learned"}, "split_prior applies only with multiscale"),
        ({"scale": 4, "multiscale": True, "split_channels": 10}, r"must be in \[1, 9\]"),
        ({"scale": 4, "multiscale": True, "split_channels": 0}, r"must be in \[1, 9\]"),
        ({"scale": 4, "multiscale": True, "split_prior": "laplace"}, "split_prior must be"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IRNConfig(**kwargs)


def test_default_config_is_unchanged():
    cfg = IRNConfig()
    assert not cfg.multiscale and cfg.split_channels is None and cfg.split_prior is None
    assert IRNConfig(multiscale=True).split_prior == "normal"
