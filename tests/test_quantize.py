"""8-bit quantisation with the straight-through estimator (common/quantize.py)."""

from __future__ import annotations

import pytest
import torch

from common.quantize import quantize_ste


def test_values_on_the_8bit_grid():
    x = torch.tensor([-0.7, 0.0, 0.3 / 255, 0.7 / 255, 100.2 / 255, 100.8 / 255, 1.0, 1.9])
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, 100.0, 101.0, 255.0, 255.0]) / 255
    assert torch.equal(quantize_ste(x), expected)


def test_random_values_round_to_nearest_level_and_are_idempotent():
    x = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    q = quantize_ste(x)
    levels = q * 255
    assert torch.equal(levels, levels.round())
    assert q.min() >= 0 and q.max() <= 1
    assert (q - x.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-7
    assert torch.equal(quantize_ste(q), q)


def test_gradient_is_passed_straight_through_everywhere():
    # d/dx = 1 also outside [0, 1], where the clamp is active (as the authors' Quant).
    x = torch.tensor([-2.0, -0.1, 0.2, 0.5, 0.9, 1.3, 5.0], requires_grad=True)
    quantize_ste(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    upstream = torch.linspace(-3, 3, 7)
    x.grad = None
    quantize_ste(x).backward(upstream)
    assert torch.equal(x.grad, upstream)


def test_bf16_input_under_autocast_returns_float32_on_the_grid():
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    x = x.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = quantize_ste(x)
    assert q.dtype == torch.float32  # documented: k/255 is not representable in bf16
    assert torch.equal(q * 255, (q * 255).round())
    assert torch.equal(q, quantize_ste(x.detach().float()))
    q.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert torch.equal(x.grad, torch.ones_like(x))


def test_float64_stays_float64():
    x = torch.rand(10, dtype=torch.float64)
    assert quantize_ste(x).dtype == torch.float64


def test_rejects_integer_tensors_and_non_tensors():
    with pytest.raises(ValueError, match="floating-point"):
        quantize_ste(torch.arange(5))
    with pytest.raises(ValueError, match="torch.Tensor"):
        quantize_ste([0.1, 0.2])
