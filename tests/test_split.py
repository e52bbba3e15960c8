"""Proofs for common/split.py: SplitPrior and LearnedGaussianPrior."""

from __future__ import annotations

import math

import pytest
import torch
from flow_checks import assert_all_proofs, perturb_

from common.split import LearnedGaussianPrior, SplitPrior, zero_conv
from common.subnets import mlp_subnet


def _normal_logpdf(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    var = std * std
    return -0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))


@pytest.mark.parametrize("split", [None, 1, 3])
def test_split_prior_proofs_conv(double, split):
    torch.manual_seed(0)
    layer = perturb_(SplitPrior(4, split=split), std=0.3)
    assert_all_proofs(layer, torch.randn(2, 4, 4, 4))


def test_bounded_split_prior_proofs_and_range(double):
    """log sigma = b tanh(raw / b): exact map, log-det of the clamped value, |log sigma| < b."""
    torch.manual_seed(2)
    layer = perturb_(SplitPrior(4, split=2, log_std_bound=0.5), std=3.0)  # raw well past b
    x = torch.randn(2, 4, 4, 4)
    assert_all_proofs(layer, x)
    raw = layer.prior(x[:, :2])[:, 2:]
    _, log_std = layer.mean_log_std(x[:, :2])
    torch.testing.assert_close(log_std, 0.5 * torch.tanh(raw / 0.5))
    assert raw.abs().max() > 1.0 and log_std.abs().max() <= 0.5  # tanh saturates to 1.0
    _, logdet = layer(x)
    torch.testing.assert_close(logdet, -log_std.sum(dim=(1, 2, 3)))


def test_split_prior_proofs_flat(double):
    torch.manual_seed(1)
    layer = perturb_(SplitPrior(6, prior_constructor=mlp_subnet(hidden=8, layers=1)), std=0.3)
    assert_all_proofs(layer, torch.randn(3, 6))


def test_split_prior_is_the_conditional_gaussian_log_likelihood(double):
    """log N(y2; 0, I) + logdet == log N(z; mu(h), sigma(h)^2) (Glow's learned split prior)."""
    torch.manual_seed(2)
    layer = perturb_(SplitPrior(4), std=0.3)
    x = torch.randn(3, 4, 2, 2)
    y, logdet = layer(x)
    mean, log_std = layer.mean_log_std(x[:, :2])
    expected = _normal_logpdf(x[:, 2:], mean, log_std.exp()).flatten(1).sum(1)
    got = _normal_logpdf(y[:, 2:], torch.zeros(()), torch.ones(())).flatten(1).sum(1) + logdet
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    assert torch.equal(y[:, :2], x[:, :2])  # the kept half passes through unchanged


def test_split_prior_starts_as_standard_normal():
    layer = SplitPrior(4)
    x = torch.randn(2, 4, 3, 3)
    y, logdet = layer(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(2))


def test_learned_prior_proofs(double):
    torch.manual_seed(3)
    layer = perturb_(LearnedGaussianPrior(3), std=0.5)
    assert_all_proofs(layer, torch.randn(2, 3, 2, 2))
    assert_all_proofs(layer, torch.randn(2, 3))


def test_learned_prior_is_the_gaussian_log_likelihood(double):
    torch.manual_seed(4)
    layer = perturb_(LearnedGaussianPrior(2), std=0.5)
    x = torch.randn(4, 2, 3, 3)
    y, logdet = layer(x)
    shape = (1, 2, 1, 1)
    expected = _normal_logpdf(x, layer.mean.view(shape), layer.log_std.exp().view(shape))
    got = _normal_logpdf(y, torch.zeros(()), torch.ones(())).flatten(1).sum(1) + logdet
    torch.testing.assert_close(got, expected.flatten(1).sum(1), atol=1e-10, rtol=0)


def test_temperature_sampling_scales_the_learned_std(double):
    """inverse(T * eps) ~ N(mu, (T sigma)^2): Glow's reduced-temperature sampling."""
    layer = LearnedGaussianPrior(1)
    with torch.no_grad():
        layer.mean.fill_(0.5)
        layer.log_std.fill_(math.log(2.0))
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(200_000, 1, generator=gen)
    x, _ = layer.inverse(0.7 * eps)
    assert abs(x.mean().item() - 0.5) < 0.02
    assert abs(x.std().item() - 1.4) < 0.02


def test_errors():
    with pytest.raises(ValueError, match="channels"):
        SplitPrior(1)
    with pytest.raises(ValueError, match="split"):
        SplitPrior(4, split=4)
    with pytest.raises(ValueError, match="log_std_bound must be > 0"):
        SplitPrior(4, log_std_bound=0.0)
    with pytest.raises(ValueError, match="kernel_size"):
        zero_conv(2)
    with pytest.raises(ValueError, match="channels"):
        LearnedGaussianPrior(0)
    with pytest.raises(ValueError, match="SplitPrior: expected 4 channels"):
        SplitPrior(4)(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="LearnedGaussianPrior.inverse: expected 2 channels"):
        LearnedGaussianPrior(2).inverse(torch.zeros(1, 3))
