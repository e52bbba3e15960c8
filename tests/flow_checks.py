"""The three proofs every invertible layer must pass (docs/method.md sec. 1).

1. round trip: ``inverse(forward(x)) == x`` and ``logdet_fwd + logdet_inv == 0``;
2. the per-sample log-det equals ``slogdet`` of the autograd Jacobian, in both directions;
3. ``torch.autograd.gradcheck`` on forward and inverse (outputs and log-det).
"""

from __future__ import annotations

import torch
from torch import nn


def perturb_(module: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Add Gaussian noise to every parameter so no Jacobian is trivially the identity.

    Zero-initialised last layers (IRN, Glow) would otherwise make every coupling the identity and
    every log-det test pass for the wrong reason.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            p.add_(std * noise)
    return module


def assert_roundtrip(layer: nn.Module, x: torch.Tensor, atol: float = 1e-10) -> float:
    y, logdet = layer(x)
    assert logdet.shape == (x.shape[0],), f"logdet shape {tuple(logdet.shape)}"
    x_rec, logdet_inv = layer.inverse(y)
    err = (x_rec - x).abs().max().item()
    assert err <= atol, f"{type(layer).__name__}: round-trip error {err:.3g} > {atol}"
    assert torch.allclose(logdet + logdet_inv, torch.zeros_like(logdet), atol=atol)
    # and the other way round: forward(inverse(y)) == y
    y2, _ = layer(x_rec)
    assert (y2 - y).abs().max().item() <= atol * 10
    return err


def per_sample_jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """``log|det J_b|`` for each sample ``b`` of a batched map ``fn``, via autograd."""
    jac = torch.autograd.functional.jacobian(fn, x)
    batch = x.shape[0]
    d_in = x[0].numel()
    jac = jac.reshape(batch, -1, batch, d_in)
    out = []
    for b in range(batch):
        block = jac[b, :, b, :]
        assert block.shape[0] == block.shape[1], "map must preserve dimension"
        out.append(torch.linalg.slogdet(block)[1])
    return torch.stack(out)


def assert_jacobian_logdet(layer: nn.Module, x: torch.Tensor, atol: float = 1e-8) -> None:
    y, logdet = layer(x)
    expected = per_sample_jacobian_logdet(lambda t: layer(t)[0], x)
    assert torch.allclose(logdet, expected, atol=atol), (logdet, expected)
    _, logdet_inv = layer.inverse(y)
    expected_inv = per_sample_jacobian_logdet(lambda t: layer.inverse(t)[0], y.detach())
    assert torch.allclose(logdet_inv, expected_inv, atol=atol), (logdet_inv, expected_inv)


def assert_gradcheck(layer: nn.Module, x: torch.Tensor) -> None:
    x = x.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,), eps=1e-6, atol=1e-6)
    y = layer(x)[0].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: layer.inverse(t), (y,), eps=1e-6, atol=1e-6)


def assert_all_proofs(layer: nn.Module, x: torch.Tensor) -> None:
    assert_roundtrip(layer, x)
    assert_jacobian_logdet(layer, x)
    assert_gradcheck(layer, x)


def every_layer_flow(seed: int = 0, clamped_coupling: bool = False) -> nn.Module:
    """Every layer of the core in one perturbed flow, ``[B, 2, 8, 8] -> [B, 32, 2, 2]``;
    ``clamped_coupling`` adds an enhanced coupling with a non-default clamp (memory saving's
    fast path)."""
    from common import (
        ActNorm,
        AdditiveCoupling,
        AffineCoupling,
        EnhancedAffineCoupling,
        FlowSequential,
        HaarDownsampling,
        InvConv1x1,
        Squeeze,
        conv_subnet,
        dense_block,
    )

    conv = conv_subnet(hidden=6, zero_init=False)
    torch.manual_seed(seed)
    layers = [
        ActNorm(2),
        InvConv1x1(2, lu=True),
        AffineCoupling(2, conv),
        HaarDownsampling(2),
        EnhancedAffineCoupling(8, 2, dense_block(gc=4)),
        InvConv1x1(8, lu=False),
        AdditiveCoupling(8, conv),
    ]
    if clamped_coupling:
        layers.append(
            EnhancedAffineCoupling(8, 3, dense_block(gc=4), clamp=1.5, clamp_tightness=2.0)
        )
    flow = FlowSequential(*layers, Squeeze(), AffineCoupling(32, conv, scale_fn="exp"))
    flow(torch.randn(4, 2, 8, 8))  # ActNorm data-dependent init
    return perturb_(flow, std=0.05, seed=seed)


def tiny_irn_x4(std: float = 0.05, seed: int = 1) -> nn.Module:
    """A small x4 IRN (one coupling per level, gc 4), the same at every call, perturbed away
    from the identity and in eval mode."""
    from irn.model import IRN, IRNConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        irn = IRN(IRNConfig(scale=4, blocks_per_level=1, gc=4))
    return perturb_(irn, std=std, seed=seed).eval()
