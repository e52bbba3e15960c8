"""The learnable x3 downsampling (common/downsampling.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from flow_checks import assert_all_proofs, perturb_

from common.downsampling import ConvDownsampling, dct_basis
from common.haar import HaarDownsampling


def test_proofs_with_a_perturbed_matrix(double):
    layer = perturb_(ConvDownsampling(2), std=0.1)
    x = torch.randn(2, 2, 6, 6)
    assert_all_proofs(layer, x)


def test_proofs_at_init(double):
    assert_all_proofs(ConvDownsampling(1), torch.randn(2, 1, 3, 6))


def test_init_first_outputs_are_the_box_average_and_logdet_is_closed_form(double):
    layer = ConvDownsampling(3)
    x = torch.rand(2, 3, 9, 12)
    y, logdet = layer(x)
    assert y.shape == (2, 27, 3, 4)
    assert torch.allclose(y[:, :3], F.avg_pool2d(x, 3), atol=1e-14)
    m = layer.weight.detach()
    assert torch.allclose(m[0], torch.full((9,), 1 / 9))
    assert torch.allclose(m @ m.T, torch.eye(9) / 9, atol=1e-14)
    expected = -3 * 9 * 12 * math.log(3.0)  # -C*H*W*log 3
    assert torch.allclose(logdet, torch.full((2,), expected), atol=1e-10)


def test_dct_basis_is_orthonormal():
    for n in (2, 3, 5):
        d = dct_basis(n)
        assert torch.allclose(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-14)


def test_factor_two_init_is_the_haar_transform(double):
    x = torch.randn(2, 3, 4, 6)
    y, logdet = ConvDownsampling(3, factor=2)(x)
    y_haar, logdet_haar = HaarDownsampling(3)(x)
    assert torch.allclose(y, y_haar, atol=1e-14)
    assert torch.allclose(logdet, logdet_haar, atol=1e-10)


def test_matrix_is_learnable_and_logdet_has_a_gradient():
    layer = ConvDownsampling(3)
    y, logdet = layer(torch.rand(1, 3, 6, 6))
    (y.square().sum() + logdet.sum()).backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    assert layer.weight.grad.abs().sum() > 0
    assert list(dict(layer.named_parameters())) == ["weight"]


def test_runs_in_float32_under_autocast():
    layer = perturb_(ConvDownsampling(3), std=0.05)
    x = torch.rand(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, logdet = layer(x)
        x_rec, _ = layer.inverse(y)
    assert y.dtype == torch.float32 and logdet.dtype == torch.float32
    assert (x_rec - x).abs().max() < 1e-5


def test_size_not_divisible_by_three_is_refused():
    layer = ConvDownsampling(3)
    with pytest.raises(ValueError, match=r"divisible by 3.*\(1, 3, 7, 9\)"):
        layer(torch.rand(1, 3, 7, 9))
    with pytest.raises(ValueError, match=r"divisible by 3.*\(1, 3, 9, 8\)"):
        layer(torch.rand(1, 3, 9, 8))


def test_wrong_channels_and_bad_arguments_are_refused():
    layer = ConvDownsampling(3)
    with pytest.raises(ValueError, match="ConvDownsampling: expected 3 channels"):
        layer(torch.rand(1, 4, 6, 6))
    with pytest.raises(ValueError, match="ConvDownsampling.inverse: expected 27 channels"):
        layer.inverse(torch.rand(1, 12, 2, 2))
    with pytest.raises(ValueError, match="ConvDownsampling"):
        layer(torch.rand(3, 6, 6))
    with pytest.raises(ValueError, match="factor"):
        ConvDownsampling(3, factor=1)
    with pytest.raises(ValueError, match="channels"):
        ConvDownsampling(0)
