"""--lambda-range: the hinge on the LR output outside [0, 1] (irn/losses.py range_loss)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from flow_checks import perturb_

import train_irn
from irn.losses import range_loss
from irn.model import IRN, IRNConfig


def test_range_loss_values_and_gradient():
    y = torch.tensor([[[[-0.5, 0.0, 0.3], [1.0, 1.25, 2.0]]]], dtype=torch.float64)
    y = torch.cat([y, torch.full_like(y, 0.5)]).requires_grad_(True)  # batch 2, the second inside
    loss = range_loss(y)
    assert loss.item() == pytest.approx((0.5 + 0.25 + 1.0) / 2)
    (g,) = torch.autograd.grad(loss, y)
    want = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64) / 2
    torch.testing.assert_close(g[0, 0], want)
    assert g[1].abs().sum() == 0
    assert range_loss(torch.rand(3, 3, 8, 8)).item() == 0.0


def _losses(lambda_range: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = perturb_(IRN(IRNConfig(scale=2, blocks_per_level=1, gc=4)), 0.05, seed)
    gen = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, 8, 8, generator=gen) * 1.6 - 0.3  # LR leaves [0, 1]
    lr = torch.rand(2, 3, 4, 4, generator=gen)
    cfg = dataclasses.replace(train_irn.IRNTrainConfig(), lambda_range=lambda_range)
    noise = train_irn.sample_noise(model, hr, cfg, torch.Generator().manual_seed(2))
    return train_irn.compute_losses(model, hr, lr, cfg, noise, 4.0)


def test_compute_losses_adds_the_weighted_range_term():
    off, on = _losses(0.0), _losses(3.0)
    assert "range" not in off  # off by default: the paper's objective
    assert on["range"].item() > 0
    torch.testing.assert_close(on["total"], off["total"] + 3.0 * on["range"])


def test_lambda_range_checked():
    from irn.training import TrainConfig

    with pytest.raises(Exception, match="lambda_range|lambda-range"):
        TrainConfig(lambda_range=-1.0)
    assert TrainConfig().lambda_range == 0.0
