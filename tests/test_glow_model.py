"""Proofs for glow/model.py: the whole Glow against a brute-force change of variables."""

from __future__ import annotations

import math

import pytest
import torch
from flow_checks import (
    assert_all_proofs,
    assert_gradcheck,
    assert_roundtrip,
    per_sample_jacobian_logdet,
    perturb_,
)

from common.config import ConfigError
from common.fused import FusedFlatFlow
from common.subnets import mlp_subnet
from glow.model import ChannelPermutation, Glow, GlowConfig, standard_normal_log_prob

FLAT_TINY = dict(architecture="flat", in_channels=1, image_size=2, steps=2, hidden=8)
MULTI_TINY = dict(
    architecture="multiscale", in_channels=1, image_size=4, levels=2, steps=1, hidden=4
)


def _tiny(seed: int = 0, **overrides) -> Glow:
    """A tiny float64 model, ActNorm initialised on data, every parameter perturbed, eval mode."""
    torch.manual_seed(seed)
    model = Glow(GlowConfig(**overrides)).double()
    c, h, w = model.input_shape
    model.initialize(torch.rand(16, c, h, w))
    perturb_(model, std=0.2, seed=seed)
    return model.eval()


def _inputs(model: Glow, batch: int = 3, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *model.input_shape, generator=gen, dtype=torch.float64)


VARIANTS = [
    dict(FLAT_TINY, permutation="invconv_lu"),
    dict(FLAT_TINY, permutation="invconv", scale_fn="exp"),
    dict(FLAT_TINY, permutation="shuffle", subnet_layers=2),
    dict(MULTI_TINY, permutation="invconv_lu"),
    dict(MULTI_TINY, permutation="shuffle", scale_fn="exp", clamp=1.5, kernel_size=1),
    dict(MULTI_TINY, in_channels=2, image_size=2, levels=1, permutation="invconv"),
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_log_prob_equals_brute_force_change_of_variables(double, overrides):
    """log p(x) == log N(z; 0, I) + log|det J| with J the full autograd Jacobian of x -> z."""
    model = _tiny(**overrides)
    x = _inputs(model)
    z, logdet = model(x)
    assert z.shape == (3, model.num_dims) and logdet.shape == (3,)
    jac_logdet = per_sample_jacobian_logdet(lambda t: model(t)[0], x)
    expected = standard_normal_log_prob(z) + jac_logdet
    torch.testing.assert_close(model.log_prob(x), expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(logdet, jac_logdet, atol=1e-8, rtol=0)
    gauss = -0.5 * (z * z).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
    torch.testing.assert_close(standard_normal_log_prob(z), gauss)


@pytest.mark.parametrize("overrides", VARIANTS)
def test_round_trip_and_inverse_logdet(double, overrides):
    model = _tiny(**overrides)
    x = _inputs(model)
    assert_roundtrip(model, x, atol=1e-10)
    z, _ = model(x)
    _, logdet_inv = model.inverse(z)
    jac_inv = per_sample_jacobian_logdet(lambda t: model.inverse(t)[0], z.detach())
    torch.testing.assert_close(logdet_inv, jac_inv, atol=1e-8, rtol=0)


@pytest.mark.parametrize("overrides", [VARIANTS[0], VARIANTS[3]])
def test_gradcheck(double, overrides):
    model = _tiny(**overrides)
    assert_gradcheck(model, _inputs(model, batch=2))


def test_flat_input_accepted_and_matches_image_input(double):
    model = _tiny(**MULTI_TINY)
    x = _inputs(model)
    z_img, ld_img = model(x)
    z_flat, ld_flat = model(x.reshape(3, -1))
    assert torch.equal(z_img, z_flat) and torch.equal(ld_img, ld_flat)
    assert model.inverse(z_img)[0].shape == (3, 1, 4, 4)


@pytest.mark.parametrize("overrides", [FLAT_TINY, MULTI_TINY])
def test_sample_then_invert_returns_the_latent(double, overrides):
    model = _tiny(**overrides)
    z = model.sample_latent(5, temperature=0.7, generator=torch.Generator().manual_seed(3))
    x, _ = model.inverse(z)
    z_back, _ = model(x)
    torch.testing.assert_close(z_back, z, atol=1e-10, rtol=0)
    # sample() is inverse(sample_latent()) with the same generator draws
    again = model.sample(5, temperature=0.7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, x, atol=0, rtol=0)
    assert again.shape == (5, *model.input_shape)


def test_sample_temperature_scales_the_latent():
    model = Glow(GlowConfig(**FLAT_TINY))
    z = model.sample_latent(50_000, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert abs(z.std().item() - 0.7) < 0.01
    assert torch.equal(model.sample_latent(4, temperature=0.0), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)
    with pytest.raises(ValueError, match="n must be"):
        model.sample(0)


def test_digits_multiscale_shapes():
    model = Glow(GlowConfig(architecture="multiscale"))
    assert model.latent_shapes == [(2, 4, 4), (4, 2, 2), (16, 1, 1)]
    x = torch.rand(4, 1, 8, 8)
    z, logdet = model(x)
    assert z.shape == (4, 64) and logdet.shape == (4,)
    assert model.sample(3).shape == (3, 1, 8, 8)


def test_flat_shuffle_matches_freia_parameter_count():
    """8 steps, 512-unit subnets: 8 * (ActNorm 128 + 32*512+512 + 512*64+64) = 398,848, the
    trainable parameter count of FrEIA's AllInOneBlock x 8 with the same subnets; the fused flat
    flow stores them stacked in 6 tensors (48 layer by layer)."""
    model = Glow(GlowConfig())
    assert model.config.permutation == "shuffle"
    assert isinstance(model.flow, FusedFlatFlow)
    params = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == 398_848 and len(params) == 6
    layers = [p for p in model.flow.to_layers().parameters() if p.requires_grad]
    assert sum(p.numel() for p in layers) == 398_848 and len(layers) == 48


def test_flat_model_equals_its_layer_by_layer_flow(double):
    """The fused flat flow is the same map as the ActNorm / permutation / coupling layers built
    with the same seed (same initial values), and a layer-by-layer state dict (the flat
    checkpoint layout before the fused flow) loads into it."""
    overrides = dict(FLAT_TINY, subnet_layers=2)
    for permutation in ("shuffle", "invconv_lu"):
        model = _tiny(permutation=permutation, **overrides)
        layers = model.flow.to_layers()
        x = _inputs(model).reshape(3, -1)
        z, logdet = model(x)
        z_ref, logdet_ref = layers(x)
        torch.testing.assert_close(z, z_ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(logdet, logdet_ref, atol=1e-12, rtol=0)
        torch.manual_seed(99)
        clone = Glow(GlowConfig(permutation=permutation, **overrides)).double().eval()
        old_layout = {f"flow.{k}": v for k, v in layers.state_dict().items()}
        clone.load_state_dict(old_layout)
        torch.testing.assert_close(clone(x)[0], z, atol=0, rtol=0)
        # and the seed gives the same initial values as the layer-by-layer construction
        torch.manual_seed(5)
        fresh = Glow(GlowConfig(permutation=permutation, **overrides))
        torch.manual_seed(5)
        built = fresh._steps(fresh.num_dims, mlp_subnet(8, 2))
        for name, value in FusedFlatFlow.from_layers(built).state_dict().items():
            assert torch.equal(value, fresh.flow.state_dict()[name]), name


def test_initialize_is_data_dependent_actnorm():
    torch.manual_seed(0)
    model = Glow(GlowConfig(permutation="shuffle"))
    x = torch.rand(256, 1, 8, 8) * 0.5 + 0.2
    model.eval()
    model.initialize(x)
    assert not model.training
    first = model.flow.to_layers()[0]
    assert type(first).__name__ == "ActNorm" and bool(first.initialized)
    y, _ = first(x.reshape(256, 64))
    torch.testing.assert_close(y.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(64), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(permutation="shuffle"),
        dict(permutation="invconv_lu"),
        dict(architecture="multiscale", steps=2),
    ],
)
def test_state_dict_rebuilds_the_same_density(overrides):
    torch.manual_seed(0)
    model = Glow(GlowConfig(**overrides))
    x = torch.rand(8, 1, 8, 8)
    model.initialize(x)
    perturb_(model, std=0.05)
    torch.manual_seed(123)  # a different permutation/rotation unless the buffers are loaded
    clone = Glow(GlowConfig(**overrides))
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.eval().log_prob(x), model.eval().log_prob(x))


def test_channel_permutation_proofs(double):
    layer = ChannelPermutation(5, generator=torch.Generator().manual_seed(0))
    assert sorted(layer.perm.tolist()) == list(range(5)) and layer.perm.tolist() != list(range(5))
    assert_all_proofs(layer, torch.randn(2, 5))
    assert_all_proofs(layer, torch.randn(2, 5, 2, 2))
    with pytest.raises(ValueError, match="ChannelPermutation: expected 5 channels"):
        layer(torch.zeros(2, 4))


def test_config_defaults_resolve_per_architecture():
    flat = GlowConfig()
    assert (flat.hidden, flat.subnet_layers, flat.levels, flat.kernel_size) == (512, 1, None, None)
    # the dissertation's flat step permutes; the paper's multi-scale Glow uses the LU 1x1 conv
    assert flat.permutation == "shuffle"
    multi = GlowConfig(architecture="multiscale")
    assert (multi.hidden, multi.levels, multi.kernel_size, multi.subnet_layers) == (64, 3, 3, None)
    assert multi.permutation == "invconv_lu"
    assert GlowConfig(permutation="invconv").permutation == "invconv"
    assert GlowConfig(scale_fn="exp").clamp == 2.0 and GlowConfig().clamp is None
    # a resolved config rebuilds unchanged (checkpoints store the resolved values)
    from dataclasses import asdict

    assert GlowConfig(**asdict(multi)) == multi


@pytest.mark.parametrize(
    "kwargs, field, message",
    [
        (dict(architecture="conv"), "architecture", "flat"),
        (dict(permutation="reverse"), "permutation", "shuffle"),
        (dict(scale_fn="tanh"), "scale_fn", "sigmoid"),
        (dict(steps=0), "steps", ">= 1"),
        (dict(hidden=0), "hidden", ">= 1"),
        (dict(levels=2), "levels", "multiscale"),
        (dict(kernel_size=3), "kernel_size", "multiscale"),
        (dict(architecture="multiscale", subnet_layers=2), "subnet_layers", "flat"),
        (dict(clamp=1.0), "clamp", "exp"),
        (dict(scale_fn="exp", clamp=0.0), "clamp", "> 0"),
        (dict(architecture="multiscale", levels=4), "levels", "divisible"),
        (dict(architecture="multiscale", kernel_size=2), "kernel_size", "odd"),
        (dict(image_size=1), "image_size", "at least 2"),
    ],
)
def test_config_errors(kwargs, field, message):
    with pytest.raises(ConfigError, match=message) as info:
        GlowConfig(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_shape_errors():
    model = Glow(GlowConfig(**FLAT_TINY))
    with pytest.raises(ValueError, match=r"Glow.forward: expected shape"):
        model(torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"Glow.inverse: expected shape"):
        model.inverse(torch.zeros(2, 5))


def test_zero_init_makes_couplings_start_as_a_fixed_scaling():
    """Zero-initialised subnets: (h_s, t) = 0, so y2 = x2 * sigmoid(2) for every input."""
    x = torch.rand(4, 64)
    expected = torch.cat([x[:, :32], x[:, 32:] * torch.sigmoid(torch.tensor(2.0))], dim=1)
    for zero_init in (True, False):
        torch.manual_seed(0)
        model = Glow(GlowConfig(permutation="shuffle", steps=2, zero_init=zero_init)).eval()
        coupling = model.flow.to_layers()[2]
        assert type(coupling).__name__ == "AffineCoupling"
        y, _ = coupling(x)
        assert torch.allclose(y, expected, atol=1e-6) == zero_init
