import pytest
import torch
from flow_checks import assert_all_proofs, perturb_

from common import (
    AdditiveCoupling,
    AffineCoupling,
    EnhancedAffineCoupling,
    conv_subnet,
    dense_block,
    mlp_subnet,
    soft_clamp,
)

pytestmark = pytest.mark.usefixtures("double")

CONV = conv_subnet(hidden=6, zero_init=False)


def _layers():
    torch.manual_seed(0)
    return {
        "affine_sigmoid": AffineCoupling(4, CONV),
        "affine_exp": AffineCoupling(4, CONV, split=1, scale_fn="exp", clamp=1.5),
        "additive": AdditiveCoupling(4, CONV, split=3),
        "enhanced_dense": perturb_(EnhancedAffineCoupling(4, 1, dense_block(gc=4)), std=0.3),
        "enhanced_tight": perturb_(
            EnhancedAffineCoupling(5, 2, CONV, clamp=2.0, clamp_tightness=2.0), std=0.3
        ),
    }


@pytest.mark.parametrize("name", list(_layers()))
def test_proofs(name):
    layer = _layers()[name]
    channels = layer.channels
    assert_all_proofs(layer, torch.randn(2, channels, 4, 4))


@pytest.mark.parametrize("cls", [AffineCoupling, AdditiveCoupling])
def test_flat_variant_proofs(cls):
    torch.manual_seed(1)
    layer = cls(6, mlp_subnet(hidden=8, zero_init=False))
    assert_all_proofs(layer, torch.randn(3, 6))


def test_enhanced_coupling_equations():
    """Forward against docs/method.md sec. 2.5 written out by hand."""
    torch.manual_seed(2)
    layer = perturb_(EnhancedAffineCoupling(4, 1, CONV, clamp=1.3, clamp_tightness=1.7), std=0.3)
    x = torch.randn(2, 4, 4, 4)
    x1, x2 = x[:, :1], x[:, 1:]
    y1 = x1 + layer.F(x2)
    s = 1.3 * (2 * torch.sigmoid(1.7 * layer.H(y1)) - 1)
    y2 = x2 * torch.exp(s) + layer.G(y1)
    y, logdet = layer(x)
    assert torch.allclose(y, torch.cat([y1, y2], 1), atol=1e-12)
    assert torch.allclose(logdet, s.sum(dim=(1, 2, 3)), atol=1e-12)
    assert (layer.F.__class__, layer.F[0].in_channels, layer.G[0].in_channels) == (
        torch.nn.Sequential,
        3,
        1,
    )


def test_affine_sigmoid_equations():
    torch.manual_seed(3)
    layer = AffineCoupling(4, CONV)
    x = torch.randn(2, 4, 3, 3)
    h = layer.NN(x[:, :2])
    g = torch.sigmoid(h[:, :2] + 2)
    y, logdet = layer(x)
    assert torch.allclose(y[:, 2:], x[:, 2:] * g + h[:, 2:])
    assert torch.allclose(y[:, :2], x[:, :2])
    assert torch.allclose(logdet, g.log().sum(dim=(1, 2, 3)))


def test_clamp_tightness_changes_the_slope():
    u = torch.linspace(-3, 3, 13)
    loose, tight = soft_clamp(u, 1.0, 1.0), soft_clamp(u, 1.0, 2.0)
    assert torch.allclose(loose, 2 * torch.sigmoid(u) - 1)
    assert torch.allclose(tight, 2 * torch.sigmoid(2 * u) - 1)
    # twice as steep at the origin, same bounds
    slope = torch.autograd.functional.jacobian(lambda v: soft_clamp(v, 1.0, 2.0), torch.zeros(1))
    assert slope.item() == pytest.approx(1.0)  # d/du (2 sigmoid(2u) - 1) at 0 = 2 * 2 / 4
    assert (tight.abs() < 1).all()


def test_zero_initialised_enhanced_coupling_is_identity():
    layer = EnhancedAffineCoupling(12, 3, dense_block(gc=8))
    x = torch.randn(2, 12, 4, 4)
    y, logdet = layer(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(2))


def test_bad_split_and_channels_are_clear_errors():
    msg = r"EnhancedAffineCoupling: split must be an int in \[1, 3\]"
    with pytest.raises(ValueError, match=msg):
        EnhancedAffineCoupling(4, 4, CONV)
    with pytest.raises(ValueError, match=r"AffineCoupling: split must be"):
        AffineCoupling(4, CONV, split=0)
    layer = EnhancedAffineCoupling(4, 1, CONV)
    with pytest.raises(ValueError, match=r"EnhancedAffineCoupling: expected 4 channels"):
        layer(torch.randn(1, 5, 4, 4))


def test_autocast_keeps_coupling_arithmetic_in_float32():
    layer = perturb_(EnhancedAffineCoupling(4, 1, CONV).float(), std=0.3)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.F(x[:, 1:]).dtype == torch.bfloat16  # the subnet does run in bf16
        y, logdet = layer(x)
        x_rec, logdet_inv = layer.inverse(y)
    assert y.dtype == torch.float32 and logdet.dtype == torch.float32
    assert x_rec.dtype == torch.float32
    assert (logdet + logdet_inv).abs().max().item() == 0.0  # same s both ways
    # y1 is exact; x2 is recovered to float32 rounding; F then sees x2 in bf16
    assert (x_rec - x).abs().max().item() < 5e-2
