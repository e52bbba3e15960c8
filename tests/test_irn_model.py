"""The IRN network and the authors' checkpoint layout (irn/model.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flow_checks import per_sample_jacobian_logdet, perturb_

from common.downsampling import ConvDownsampling
from common.haar import HaarDownsampling
from irn import IRN, IRNConfig, load_authors_checkpoint, to_authors_state_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent


def load_fixture(scale: int) -> dict:
    return torch.load(FIXTURES / f"irn_reference_x{scale}_small.pt", weights_only=True)


def tiny(scale: int, blocks: int = 2, gc: int = 4, seed: int = 0, std: float = 0.1) -> IRN:
    """A small IRN with random non-zero weights (no coupling is the identity)."""
    return perturb_(IRN(IRNConfig(scale=scale, blocks_per_level=blocks, gc=gc)), std, seed)


# -- the authors' reference outputs ---------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_matches_the_authors_forward_and_inverse(scale):
    ref = load_fixture(scale)
    assert ref["scale"] == scale
    model = load_authors_checkpoint(ref["state_dict"])
    assert not model.training
    assert model.config.scale == scale
    assert model.config.blocks_per_level == ref["blocks_per_level"]
    with torch.no_grad():
        y, logdet = model(ref["input_hr"])
        y_ref = ref["forward_out"]
        assert y.shape == y_ref.shape and logdet.shape == (2,)
        fwd_err = (y - y_ref).abs().max().item()
        x, _ = model.inverse(torch.cat([y_ref[:, :3], ref["z"]], dim=1))
        x_ref = ref["inverse_out"]
        inv_err = (x - x_ref).abs().max().item()
    print(
        f"x{scale}: forward max|diff| {fwd_err:.3g} (max|out| {y_ref.abs().max():.3g}), "
        f"inverse max|diff| {inv_err:.3g} (max|out| {x_ref.abs().max():.3g})"
    )
    assert fwd_err <= 1e-5 * y_ref.abs().max().item()
    assert inv_err <= 1e-5 * x_ref.abs().max().item()


def test_loads_from_a_path_and_via_the_model_and_module_prefix(tmp_path):
    ref = load_fixture(2)
    sd = ref["state_dict"]
    # the fixture file holds the weights under "state_dict"
    from_file = load_authors_checkpoint(FIXTURES / "irn_reference_x2_small.pt")
    dp = {f"module.{k}": v for k, v in sd.items()}
    path = tmp_path / "dp.pth"
    torch.save({"model": dp}, path)
    from_dp = load_authors_checkpoint(str(path))
    for model in (from_file, from_dp):
        with torch.no_grad():
            assert torch.allclose(model(ref["input_hr"])[0], ref["forward_out"], atol=1e-5)


def test_authors_state_dict_round_trip():
    sd = load_fixture(4)["state_dict"]
    model = load_authors_checkpoint(sd)
    back = to_authors_state_dict(model)
    assert list(back) == list(sd)
    for key, value in sd.items():
        assert torch.equal(back[key], value), key
    # and a fresh model -> authors' layout -> loader gives the same function
    fresh = tiny(2, blocks=1, gc=32, std=0.02)
    again = load_authors_checkpoint(to_authors_state_dict(fresh))
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], again(x)[0])


def test_our_state_dict_keys_are_the_authors_minus_haar():
    model = IRN(IRNConfig(scale=4, blocks_per_level=1, gc=4))
    keys = list(model.state_dict())
    assert keys[0] == "operations.1.F.conv1.weight"
    assert not any("haar" in k for k in keys)
    authors = to_authors_state_dict(model)
    assert [k for k in authors if not k.endswith("haar_weights")] == keys
    assert [k for k in authors if k.endswith("haar_weights")] == [
        "operations.0.haar_weights",
        "operations.2.haar_weights",
    ]
    x3 = IRN(IRNConfig(scale=3, blocks_per_level=1, gc=4))
    assert next(iter(x3.state_dict())) == "operations.0.weight"
    with pytest.raises(ValueError, match="x3"):
        to_authors_state_dict(x3)
    with pytest.raises(ValueError, match="clamp"):
        to_authors_state_dict(IRN(IRNConfig(scale=2, blocks_per_level=1, gc=4, clamp=2.0)))


# -- the loader refuses what it cannot reproduce ------------------------------------------------


def test_loader_refuses_a_random_dict():
    with pytest.raises(ValueError, match="not a state_dict"):
        load_authors_checkpoint({"foo": 1, "bar": "baz"})
    with pytest.raises(ValueError, match=r"unexpected key.*'weight'"):
        load_authors_checkpoint({"weight": torch.zeros(3), "bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="empty"):
        load_authors_checkpoint({})


def test_loader_refuses_a_missing_key():
    sd = dict(load_fixture(2)["state_dict"])
    del sd["operations.2.G.conv3.bias"]
    with pytest.raises(ValueError, match=r"missing key.*operations\.2\.G\.conv3\.bias"):
        load_authors_checkpoint(sd)
    sd = dict(load_fixture(4)["state_dict"])
    del sd["operations.3.haar_weights"]
    with pytest.raises(ValueError, match=r"operation\(s\) \[3\]"):
        load_authors_checkpoint(sd)


def test_loader_refuses_a_glow_checkpoint():
    glow = {
        "flows.0.actnorm.loc": torch.zeros(1, 4, 1, 1),
        "flows.0.actnorm.scale": torch.ones(1, 4, 1, 1),
        "flows.0.actnorm.initialized": torch.tensor(1, dtype=torch.uint8),
        "flows.0.invconv.weight": torch.eye(4),
        "flows.0.coupling.net.0.weight": torch.zeros(8, 2, 3, 3),
    }
    with pytest.raises(ValueError, match=r"not an IRN checkpoint.*flows\.0\.actnorm"):
        load_authors_checkpoint({"model": glow, "config": {"hidden": 8}, "step": 3})


def test_loader_refuses_a_corrupt_and_a_missing_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match=r"corrupt\.pth: cannot be read"):
        load_authors_checkpoint(path)
    missing = tmp_path / "nope.pth"
    with pytest.raises(ValueError, match=r"nope\.pth: no such checkpoint file"):
        load_authors_checkpoint(missing)
    with pytest.raises(ValueError, match="file path or a state_dict"):
        load_authors_checkpoint(42)


def test_loader_refuses_a_modified_haar_kernel_wrong_shapes_and_nan():
    base = load_fixture(2)["state_dict"]
    sd = dict(base)
    sd["operations.0.haar_weights"] = sd["operations.0.haar_weights"] * 0.5
    with pytest.raises(ValueError, match="not the canonical Haar kernel"):
        load_authors_checkpoint(sd)
    sd = dict(base)
    sd["operations.1.F.conv2.weight"] = torch.zeros(32, 40, 3, 3)
    with pytest.raises(ValueError, match=r"wrong shape.*operations\.1\.F\.conv2\.weight"):
        load_authors_checkpoint(sd)
    sd = dict(base)
    sd["operations.2.H.conv5.bias"] = torch.full((9,), float("nan"))
    with pytest.raises(ValueError, match=r"NaN.*operations\.2\.H\.conv5\.bias"):
        load_authors_checkpoint(sd)
    ours = IRN(IRNConfig(scale=2, blocks_per_level=1, gc=4)).state_dict()
    with pytest.raises(ValueError, match="no operations.{i}.haar_weights"):
        load_authors_checkpoint(ours)


# -- invertibility --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, size", [(2, 8), (3, 6), (4, 8)])
def test_float64_round_trip_with_random_weights(double, scale, size):
    model = tiny(scale)
    x = torch.rand(2, 3, size, size)
    y, logdet = model(x)
    assert y.shape == (2, 3 * scale**2, size // scale, size // scale)
    x_rec, logdet_inv = model.inverse(y)
    assert (x_rec - x).abs().max() <= 1e-10
    assert torch.allclose(logdet + logdet_inv, torch.zeros(2), atol=1e-10)
    # the weights really are non-trivial: the output is not just the downsampling
    lr_box = torch.nn.functional.avg_pool2d(x, scale)
    assert (y[:, :3] - lr_box).abs().max() > 1e-3


@pytest.mark.parametrize("scale, size", [(2, 4), (3, 3)])
def test_model_logdet_equals_jacobian_slogdet(double, scale, size):
    model = tiny(scale, blocks=1)
    x = torch.rand(2, 3, size, size)
    expected = per_sample_jacobian_logdet(lambda t: model(t)[0], x)
    assert torch.allclose(model(x)[1], expected, atol=1e-8)


def test_x8_builds_and_inverts_in_float32():
    model = IRN(IRNConfig(scale=8))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 11_119_248
    assert sum(isinstance(op, HaarDownsampling) for op in model.operations) == 3
    perturb_(model, std=0.01)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        y, _ = model(x)
        x_rec, _ = model.inverse(y)
    assert y.shape == (1, 192, 2, 2)
    assert (x_rec - x).abs().max() < 1e-4


# -- rescaling helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_downscale_upscale_shapes(scale):
    model = tiny(scale, blocks=1)
    hr = torch.rand(2, 3, 12, 12)
    lr = model.downscale(hr)
    assert lr.shape == (2, 3, 12 // scale, 12 // scale) and lr.dtype == torch.float32
    assert torch.equal(lr * 255, (lr * 255).round()) and lr.min() >= 0 and lr.max() <= 1
    assert model.z_channels == 3 * (scale**2 - 1)
    assert model.z_shape(lr) == (2, model.z_channels, 12 // scale, 12 // scale)
    lr_raw, z = model.encode(hr)
    assert lr_raw.shape == lr.shape and tuple(z.shape) == model.z_shape(lr)
    with torch.no_grad():
        sr = model.upscale(lr)
    assert sr.shape == hr.shape
    # given the exact (lr, z) the upscaling is the exact inverse
    with torch.no_grad():
        assert (model.upscale(lr_raw, z) - hr).abs().max() < 1e-4


def test_temperature_zero_gives_z_zero_and_is_deterministic():
    model = tiny(4, blocks=1)
    lr = torch.rand(1, 3, 4, 4)
    with torch.no_grad():
        a = model.upscale(lr, temperature=0.0)
        b = model.upscale(lr, temperature=0.0)
        c = model.upscale(lr, z=torch.zeros(model.z_shape(lr)))
        s1 = model.upscale(lr, generator=torch.Generator().manual_seed(3))
        s2 = model.upscale(lr, generator=torch.Generator().manual_seed(3))
        s3 = model.upscale(lr, temperature=0.5, generator=torch.Generator().manual_seed(3))
        z = 0.5 * torch.randn(model.z_shape(lr), generator=torch.Generator().manual_seed(3))
        s4 = model.upscale(lr, z=z)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(s1, s2) and not torch.equal(s1, a)
    assert torch.equal(s3, s4)


def test_straight_through_estimator_passes_gradients():
    model = tiny(2, blocks=1)
    hr = torch.rand(1, 3, 8, 8, requires_grad=True)
    model.downscale(hr).square().sum().backward()
    g_ste = hr.grad.clone()
    assert torch.isfinite(g_ste).all() and g_ste.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    # d quant / d y = 1: the gradient is that of the unquantised LR at the same upstream value
    hr.grad = None
    lr_raw, _ = model.encode(hr)
    upstream = 2 * model.downscale(hr).detach()
    lr_raw.backward(upstream)
    assert torch.allclose(hr.grad, g_ste, atol=1e-6)


def test_runs_under_bf16_autocast_with_float32_logdet():
    model = tiny(2, blocks=1)
    hr = torch.rand(1, 3, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, logdet = model(hr)
        lr = model.downscale(hr)
    assert logdet.dtype == torch.float32 and lr.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_shape_errors_name_the_model_scale_and_shape():
    model = tiny(4, blocks=1)
    with pytest.raises(ValueError, match=r"IRN\(x4\).*multiples of the scale 4.*\(2, 3, 10, 12\)"):
        model(torch.rand(2, 3, 10, 12))
    with pytest.raises(ValueError, match=r"IRN\(x4\).*\[B, 3, H, W\].*\(2, 4, 8, 8\)"):
        model(torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"IRN\(x4\).*\[B, 48, H, W\].*\(2, 12, 2, 2\)"):
        model.inverse(torch.rand(2, 12, 2, 2))
    lr = torch.rand(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"z must have shape \(1, 45, 2, 2\)"):
        model.upscale(lr, z=torch.zeros(1, 45, 3, 3))
    with pytest.raises(ValueError, match="temperature"):
        model.upscale(lr, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        model.upscale(lr, z=torch.zeros(1, 45, 2, 2), temperature=0.5)
    x3 = tiny(3, blocks=1)
    with pytest.raises(ValueError, match=r"IRN\(x3\).*scale 3.*\(1, 3, 8, 9\)"):
        x3(torch.rand(1, 3, 8, 9))


# -- configuration and size -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"scale": 5}, "scale"),
        ({"scale": True}, "scale"),
        ({"blocks_per_level": 0}, "blocks_per_level"),
        ({"clamp": 0.0}, "clamp"),
        ({"clamp_tightness": -1.0}, "clamp_tightness"),
        ({"clamp": float("nan")}, "clamp"),
        ({"subnet": "resnet"}, "subnet"),
        ({"gc": 0}, "gc"),
        ({"init": "orthogonal"}, "init"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=rf"IRNConfig: {field} must"):
        IRNConfig(**kwargs)


def test_config_defaults_follow_the_authors():
    assert IRNConfig().scale == 4
    assert IRNConfig(scale=2).blocks_per_level == 8
    assert IRNConfig(scale=8).blocks_per_level == 8
    assert IRNConfig(scale=3).blocks_per_level == 12
    assert IRNConfig(scale=3, blocks_per_level=2).blocks_per_level == 2
    cfg = IRNConfig()
    got = (cfg.clamp, cfg.clamp_tightness, cfg.subnet, cfg.gc, cfg.init, cfg.in_channels)
    assert got == (1.0, 1.0, "dbnet", 32, "xavier", 3)
    x3 = IRN(IRNConfig(scale=3, gc=4))
    assert isinstance(x3.operations[0], ConvDownsampling) and len(x3.operations) == 13


@pytest.mark.parametrize("scale, count", [(2, 1_667_952), (4, 4_355_136)])
def test_parameter_counts(scale, count):
    model = IRN(IRNConfig(scale=scale))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    assert sum(p.numel() for p in model.parameters()) == count  # Haar has no parameters


def test_parameter_count_from_the_command_line():
    code = (
        "from irn import IRN, IRNConfig; "
        "print(sum(p.numel() for p in IRN(IRNConfig(scale=4)).parameters() if p.requires_grad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4355136"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"clamp": 0.0}, r"IRNConfig: clamp must be a finite number > 0, got 0\.0"),
        ({"clamp_tightness": float("nan")}, "IRNConfig: clamp_tightness must be a finite number"),
        ({"gc": True}, "IRNConfig: gc must be an int >= 1, got True"),
        ({"init": "orthogonal"}, "IRNConfig: init must be 'xavier' or 'kaiming'"),
        ({"scale": 5}, "IRNConfig: scale must be one of 2, 3, 4, 8"),
    ],
)
def test_bad_config_fields_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        IRNConfig(**fields)
