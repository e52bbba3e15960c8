"""Proofs for common/fused.py: the fused flat flow is the layer-by-layer composition, exactly."""

from __future__ import annotations

import pytest
import torch
from flow_checks import assert_all_proofs, perturb_
from torch import nn

from common.actnorm import ActNorm
from common.conv1x1 import ChannelPermutation, InvConv1x1
from common.coupling import AdditiveCoupling, AffineCoupling
from common.fused import FusedFlatFlow
from common.sequential import FlowSequential
from common.subnets import mlp_subnet
from common.utils import check_finite

C, K = 6, 3


def _layers(mixing: str, scale_fn: str = "sigmoid", hidden_layers: int = 1, split=None):
    """K float64 steps ActNorm -> mixing -> AffineCoupling(MLP), not yet initialised."""
    layers: list[nn.Module] = []
    for _ in range(K):
        mix = ChannelPermutation(C) if mixing == "shuffle" else InvConv1x1(C, mixing == "lu")
        subnet = mlp_subnet(5, hidden_layers, zero_init=True)
        layers += [
            ActNorm(C),
            mix,
            AffineCoupling(C, subnet, split=split, scale_fn=scale_fn, clamp=1.5),
        ]
    return FlowSequential(*layers).double()


def _pair(mixing="shuffle", scale_fn="sigmoid", hidden_layers=1, split=None, seed=0):
    """(layer-by-layer flow, fused flow) with the same values: initialised on data, every
    parameter perturbed (so no Jacobian is trivial), in training mode."""
    torch.manual_seed(seed)
    ref = _layers(mixing, scale_fn, hidden_layers, split)
    ref(torch.randn(32, C) * 2 + 1)  # data-dependent ActNorm init
    perturb_(ref, std=0.3, seed=seed)
    return ref, FusedFlatFlow.from_layers(list(ref))


def _grads(flow: nn.Module, x: torch.Tensor) -> tuple:
    """Outputs and the gradients of a fixed random functional of (y, logdet)."""
    x = x.detach().requires_grad_(True)
    y, logdet = flow(x)
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    loss = (y * weight).sum() + (logdet * torch.arange(1.0, 1 + len(logdet))).sum()
    params = [p for p in flow.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *params])
    return y, logdet, grads[0], dict(zip([id(p) for p in params], grads[1:], strict=True))


VARIANTS = [
    dict(mixing="shuffle"),
    dict(mixing="shuffle", scale_fn="exp", hidden_layers=2),
    dict(mixing="shuffle", split=2),
    dict(mixing="lu"),
    dict(mixing="lu", scale_fn="exp"),
    dict(mixing="plain", hidden_layers=2),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_equals_the_unfused_composition_with_every_gradient(double, variant):
    """Same parameters -> the same y, log-det, input gradient and parameter gradients (1e-12)."""
    ref, fused = _pair(**variant)
    x = torch.randn(5, C, generator=torch.Generator().manual_seed(3))
    y, logdet, grad_x, grads = _grads(fused, x)
    y_ref, logdet_ref, grad_x_ref, grads_ref = _grads(ref, x)
    assert type(y.grad_fn).__name__ == "_FlatFlowFunctionBackward"  # the fused path ran
    close = dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(y, y_ref, **close)
    torch.testing.assert_close(logdet, logdet_ref, **close)
    torch.testing.assert_close(grad_x, grad_x_ref, **close)
    # map the stacked [K, ...] gradients back to the layers' parameters
    layers = list(ref)
    norms, mixes, couplings = layers[0::3], layers[1::3], layers[2::3]
    for k in range(K):
        pairs = [
            (fused.actnorm_bias, norms[k].bias),
            (fused.actnorm_log_scale, norms[k].log_scale),
        ]
        linears = [m for m in couplings[k].NN if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears):
            pairs += [(fused.weights[i], lin.weight), (fused.biases[i], lin.bias)]
        for stacked, param in pairs:
            torch.testing.assert_close(grads[id(stacked)][k], grads_ref[id(param)], **close)
        for mine, theirs in zip(fused.mixing[k].parameters(), mixes[k].parameters(), strict=True):
            torch.testing.assert_close(grads[id(mine)], grads_ref[id(theirs)], **close)
    # the inverse too
    x_ref, ld_ref = ref.inverse(y_ref.detach())
    x_back, ld_back = fused.inverse(y.detach())
    torch.testing.assert_close(x_back, x_ref, **close)
    torch.testing.assert_close(ld_back, ld_ref, **close)


@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[3], VARIANTS[5]])
def test_proofs(double, variant):
    """Round trip, log-det against the autograd Jacobian, gradcheck (forward and inverse)."""
    _, fused = _pair(**variant)
    assert_all_proofs(fused, torch.randn(3, C, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("mixing", ["shuffle", "lu"])
def test_data_dependent_init_matches_the_layers(double, mixing):
    """The first training-mode forward initialises every ActNorm from its own input, step by
    step, with the values the layer-by-layer flow computes (Glow sec. 3.1)."""
    torch.manual_seed(0)
    ref = _layers(mixing, hidden_layers=1)
    perturb_(ref, std=0.3)  # non-trivial couplings, so later steps see transformed inputs
    for layer in list(ref)[0::3]:
        layer.bias.data.zero_()
        layer.log_scale.data.zero_()
    fused = FusedFlatFlow.from_layers(list(ref))
    assert not bool(fused.initialized)
    x = torch.rand(64, C, generator=torch.Generator().manual_seed(2)) * 3
    fused.eval()
    fused(x)
    assert not bool(fused.initialized)  # only training mode initialises, as ActNorm
    fused.train()
    y, logdet = fused(x)
    y_ref, logdet_ref = ref.train()(x)
    assert bool(fused.initialized)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet, logdet_ref, atol=1e-12, rtol=0)
    for k, norm in enumerate(list(ref)[0::3]):
        torch.testing.assert_close(fused.actnorm_bias[k], norm.bias, atol=1e-12, rtol=0)
        torch.testing.assert_close(fused.actnorm_log_scale[k], norm.log_scale, atol=1e-12, rtol=0)


def test_conversions_and_state_dicts(double):
    ref, fused = _pair("lu", hidden_layers=2)
    x = torch.randn(4, C)
    # to_layers gives back the same values and map
    again = fused.to_layers()
    for name, value in ref.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    torch.testing.assert_close(again(x)[0], fused(x)[0], atol=1e-12, rtol=0)
    # a layer-by-layer state dict loads into a fused flow (restacked); its own round-trips
    torch.manual_seed(123)
    _, other = _pair("lu", hidden_layers=2, seed=1)
    other.load_state_dict(ref.state_dict())
    for name, value in fused.state_dict().items():
        assert torch.equal(other.state_dict()[name], value), name
    other.load_state_dict(fused.state_dict())
    assert sorted(fused.state_dict()) == sorted(
        ["actnorm_bias", "actnorm_log_scale", "initialized"]
        + [f"mixing.{k}.{b}" for k in range(K) for b in ref[1].state_dict()]
        + [f"{kind}.{i}" for kind in ("weights", "biases") for i in range(3)]
    )


def test_stacked_parameters_are_fewer_tensors_of_the_same_size():
    ref = _layers("shuffle").float()
    fused = FusedFlatFlow.from_layers(list(ref))
    assert len(list(ref.parameters())) == K * 6 and len(list(fused.parameters())) == 6
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in ref.parameters())
    assert fused.weights[0].shape == (K, 5, 3) and fused.biases[1].shape == (K, 6)
    assert "steps=3" in repr(fused) and "ChannelPermutation" in repr(fused)


@pytest.mark.parametrize(
    "layers, message",
    [
        (lambda: [ActNorm(C), ChannelPermutation(C)], "3 layers per step"),
        (lambda: [ChannelPermutation(C), ActNorm(C), ActNorm(C)], "expected ActNorm"),
        (
            lambda: [ActNorm(C), ChannelPermutation(C), AdditiveCoupling(C, mlp_subnet(4, 1))],
            "expected AffineCoupling",
        ),
        (
            lambda: [
                ActNorm(C),
                ChannelPermutation(C),
                AffineCoupling(C, lambda i, o: nn.Sequential(nn.Linear(i, o), nn.Tanh())),
            ],
            "subnet is not Linear",
        ),
        (lambda: [*_layers("shuffle")[:3], *_layers("lu")[:3]], "differs from step 0"),
    ],
)
def test_from_layers_rejects_other_structures(layers, message):
    with pytest.raises(ValueError, match=message):
        FusedFlatFlow.from_layers(layers())


def test_input_errors_name_the_layer():
    _, fused = _pair()
    fused = fused.float()
    with pytest.raises(ValueError, match=r"FusedFlatFlow: expected 6 channels"):
        fused(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"FusedFlatFlow.inverse: expected a \[B, 6\] tensor"):
        fused.inverse(torch.zeros(2, 6, 1, 1))
    with pytest.raises(ValueError, match="dtype"):
        fused(torch.zeros(2, 6, dtype=torch.float64))
    with check_finite(), pytest.raises(ValueError, match="NaN"):
        fused(torch.full((2, 6), float("nan")))


def test_autocast_runs_in_the_input_precision():
    _, fused = _pair()
    fused = fused.float()
    x = torch.randn(4, C)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, logdet = fused(x)
    assert y.dtype == torch.float32 and logdet.dtype == torch.float32
    torch.testing.assert_close(y, fused(x)[0], atol=0, rtol=0)


def test_first_order_only():
    _, fused = _pair()
    x = torch.randn(2, C, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(fused(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.sum().backward()
