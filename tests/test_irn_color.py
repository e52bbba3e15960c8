"""IRN-Color (irn/color.py): the invertible map, its init, its losses and its evaluation.

The layer maths is checked in float64 with perturbed weights (zero-initialised last convolutions
would make every coupling the identity). Training: ``test_train_irn_color.py``; evaluation of a
checkpoint: ``test_evaluate_color.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flow_checks import assert_gradcheck, assert_jacobian_logdet, assert_roundtrip, perturb_

from common.metrics import image_metrics, psnr, quantize_to_uint8
from common.quantize import quantize_ste
from irn.color import (
    COLOR_LAMBDA_GUIDE,
    IRNColor,
    IRNColorConfig,
    color_losses,
    evaluate_color,
    luminance_reference,
)

TINY = IRNColorConfig(couplings=2, gc=4)
# RGB -> YUV (BT.601) written out here independently of the module's constant.
YUV = [[0.299, 0.587, 0.114], [-0.147, -0.289, 0.436], [0.615, -0.515, -0.100]]


def tiny_model(seed: int = 0, perturbed: bool = True, **kwargs) -> IRNColor:
    torch.manual_seed(seed)
    model = IRNColor(IRNColorConfig(**{"couplings": 2, "gc": 4, **kwargs}))
    return perturb_(model, std=0.05, seed=seed) if perturbed else model


# ---------------------------------------------------------------------------------------------
# The invertible map
# ---------------------------------------------------------------------------------------------


def test_round_trip_jacobian_logdet_and_gradcheck(double):
    """inverse(forward(x)) == x, logdets cancel, logdet == slogdet of the autograd Jacobian per
    sample (both directions), gradcheck, with a perturbed colour matrix and couplings."""
    model = tiny_model()
    assert model.transform.weight.dtype == torch.float64
    x = torch.rand(2, 3, 3, 4)
    assert_roundtrip(model, x)
    assert_jacobian_logdet(model, x)
    assert_gradcheck(model, x[:1, :, :2, :3])  # finite differences: a smaller input suffices
    # the two samples' log-dets differ (the couplings' part is data-dependent)
    _, logdet = model(x)
    assert not torch.allclose(logdet[0], logdet[1])


def test_memory_saving_gives_the_same_values_and_gradients(double):
    x = torch.rand(2, 3, 5, 5)
    grads = []
    for saving in (False, True):
        model = tiny_model()
        model.memory_saving = saving
        losses = color_losses(model, x, z=torch.zeros(2, 2, 5, 5))
        losses["total"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


def test_init_is_rgb_to_yuv_so_the_gray_channel_is_the_bt601_luma(double):
    model = tiny_model(perturbed=False)
    assert torch.equal(model.transform.weight, torch.tensor(YUV))
    x = torch.rand(2, 3, 6, 5)
    y, logdet = model(x)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    assert torch.allclose(y[:, 0:1], 0.299 * r + 0.587 * g + 0.114 * b, atol=1e-15)
    assert torch.allclose(y[:, 0:1], luminance_reference(x), atol=1e-15)
    assert torch.allclose(y[:, 1:2], -0.147 * r - 0.289 * g + 0.436 * b, atol=1e-15)
    assert torch.allclose(y[:, 2:3], 0.615 * r - 0.515 * g - 0.100 * b, atol=1e-15)
    # log|det| at init is that of the 1x1 transform alone: H*W*log|det YUV|, exactly
    expected = 6 * 5 * torch.linalg.slogdet(torch.tensor(YUV))[1]
    assert torch.allclose(logdet, expected.expand(2), atol=1e-12)
    # gray pixels carry no chroma: (c, c, c) -> (c, 0, 0), and back with z = 0
    gray = torch.rand(1, 1, 4, 4).expand(1, 3, 4, 4)
    yg, _ = model(gray)
    assert yg[:, 1:].abs().max() < 1e-15
    back = model.colorize(yg[:, :1], temperature=0)
    assert torch.allclose(back, gray, atol=1e-12)


def test_luminance_reference_values_shapes_and_errors():
    primaries = torch.eye(3)[:, :, None, None]  # pure red, green, blue
    ref = luminance_reference(primaries)
    assert ref.shape == (3, 1, 1, 1)
    assert torch.allclose(ref.flatten(), torch.tensor([0.299, 0.587, 0.114]))
    assert torch.allclose(luminance_reference(torch.ones(1, 3, 2, 2)), torch.ones(1, 1, 2, 2))
    img = np.random.default_rng(0).random((5, 7, 3))
    as_numpy = luminance_reference(img)
    as_torch = luminance_reference(torch.from_numpy(img.transpose(2, 0, 1)))
    assert as_numpy.shape == (5, 7)
    assert np.allclose(as_numpy, as_torch[0].numpy())
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, H, W\]"):
        luminance_reference(torch.rand(1, 4, 2, 2))
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, 3\]"):
        luminance_reference(np.zeros((2, 2)))


def test_bad_inputs_and_configs_give_clear_errors():
    model = tiny_model(perturbed=False)
    with pytest.raises(ValueError, match=r"IRNColor: expected the RGB input of shape"):
        model(torch.rand(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"IRNColor: expected y = cat\(gray, z\)"):
        model.inverse(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match=r"colorize: expected gray of shape \[B, 1, H, W\]"):
        model.colorize(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"z must have shape \(1, 2, 4, 4\)"):
        model.colorize(torch.rand(1, 1, 4, 4), z=torch.rand(1, 2, 4, 5))
    with pytest.raises(ValueError, match=r"temperature=0.5 applies only to a sampled z"):
        model.colorize(torch.rand(1, 1, 4, 4), z=torch.rand(1, 2, 4, 4), temperature=0.5)
    for kwargs, match in (
        ({"couplings": 0}, "couplings must be an int >= 1"),
        ({"clamp": 0.0}, "clamp must be a finite number > 0"),
        ({"clamp_tightness": math.inf}, "clamp_tightness must be a finite number > 0"),
        ({"gc": 0}, "gc must be an int >= 1"),
        ({"init": "orthogonal"}, "init must be 'xavier' or 'kaiming'"),
        ({"learnable_transform": 1}, "learnable_transform must be a bool"),
    ):
        with pytest.raises(ValueError, match=match):
            IRNColorConfig(**kwargs)
    with pytest.raises(ValueError, match="guide_loss must be one of"):
        color_losses(model, torch.rand(1, 3, 4, 4), guide_loss="huber")


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def test_losses_are_the_weighted_paper_terms(double):
    model = tiny_model()
    x = torch.rand(2, 3, 6, 6)
    z = torch.randn(2, 2, 6, 6)
    got = color_losses(model, x, lambda_guide=2.0, lambda_recon=0.5, lambda_distr=0.25, z=z)
    y, _ = model(x)
    gray, z_f = y[:, :1], y[:, 1:]
    guide = ((gray - luminance_reference(x)) ** 2).sum() / 2
    gray_q = (gray.clamp(0, 1) * 255).round() / 255
    x_rec, _ = model.inverse(torch.cat([gray_q, z], 1))
    recon = torch.sqrt((x_rec - x) ** 2 + 1e-6).sum() / 2
    distr = (z_f**2).sum() / 2
    assert guide > 0 and distr > 0
    for key, value in (("guide", guide), ("recon", recon), ("distr", distr)):
        assert torch.allclose(got[key], value), key
    assert torch.allclose(got["total"], 2.0 * guide + 0.5 * recon + 0.25 * distr)
    # defaults: the authors' IRN-Color weights (3, 1, 1), and a sampled z from the generator
    default = color_losses(model, x, generator=torch.Generator().manual_seed(3))
    z3 = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(3))
    same = color_losses(model, x, lambda_guide=3.0, z=z3)
    assert COLOR_LAMBDA_GUIDE == 3.0
    assert torch.allclose(default["total"], same["total"])
    zero = color_losses(model, x, temperature=0)
    assert torch.allclose(
        zero["recon"], color_losses(model, x, z=torch.zeros(2, 2, 6, 6))["recon"]
    )


def test_guide_loss_is_zero_when_the_gray_equals_the_reference(double):
    model = tiny_model(perturbed=False)  # at init the gray channel is the BT.601 luma
    x = torch.rand(2, 3, 5, 5)
    losses = color_losses(model, x, z=torch.zeros(2, 2, 5, 5))
    assert losses["guide"].item() < 1e-25
    # a quantised guide compares Quant(gray) with the reference: no longer zero
    quant = color_losses(model, x, z=torch.zeros(2, 2, 5, 5), quantize_guide_loss=True)
    assert quant["guide"].item() > 0
    # and a perturbed model's gray departs from the luma
    assert color_losses(tiny_model(), x, z=torch.zeros(2, 2, 5, 5))["guide"].item() > 1e-6


def test_gradient_flows_straight_through_the_quantiser(double):
    """The reconstruction gradient reaches the gray branch through Quant unchanged (STE)."""
    x = torch.rand(2, 3, 5, 5)
    z = torch.randn(2, 2, 5, 5)

    def recon_grads(mode: str) -> torch.Tensor:
        model = tiny_model()
        if mode == "ours":
            loss = color_losses(model, x, z=z)["recon"]
        else:
            gray = model(x)[0][:, :1]
            q = torch.round(gray.clamp(0, 1) * 255) / 255
            # "ste": identity gradient written out; "blocked": no gradient through Quant
            gray_q = gray + (q - gray).detach() if mode == "ste" else q.detach()
            x_rec, _ = model.inverse(torch.cat([gray_q, z], 1))
            loss = torch.sqrt((x_rec - x) ** 2 + 1e-6).sum() / 2
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    ours, ste, blocked = recon_grads("ours"), recon_grads("ste"), recon_grads("blocked")
    assert torch.allclose(ours, ste, atol=1e-12)
    assert (ours - blocked).abs().max() > 1e-6
    # the quantiser itself: identity gradient, values on the 8-bit grid
    g = torch.rand(1, 1, 4, 4, requires_grad=True)
    quantize_ste(g * 3 - 1).sum().backward()
    assert torch.allclose(g.grad, torch.full_like(g, 3.0))


def test_fixed_transform_is_not_trained():
    x = torch.rand(2, 3, 8, 8)
    for learnable in (True, False):
        model = tiny_model(learnable_transform=learnable)
        before = model.transform.weight.detach().clone()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        color_losses(model, x, z=torch.zeros(2, 2, 8, 8))["total"].backward()
        opt.step()
        changed = not torch.equal(before, model.transform.weight.detach())
        assert changed == learnable


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def test_evaluate_color_metrics():
    rng = np.random.default_rng(1)
    img = rng.random((16, 20, 3)).astype(np.float32)
    # At init gray' = Quant(luma): identical to the 8-bit reference; with z = 0 the restored
    # colour is that gray copied to R, G, B (the inverse's first column is (1, 1, 1)), i.e.
    # exactly the no-colour baseline.
    row = evaluate_color(tiny_model(perturbed=False), [img], draws=2, seed=4)[0]
    assert math.isinf(row["gray_psnr"]) and row["gray_ssim"] == pytest.approx(1.0)
    assert row["psnr_rgb_z0"] == pytest.approx(row["nocolor_psnr_rgb"], abs=1e-9)
    assert row["ssim_rgb_z0"] == pytest.approx(row["nocolor_ssim_rgb"], abs=1e-9)
    assert row["draws"] == 2 and len(row["draw_psnr_rgb"]) == 2
    assert row["draw_psnr_rgb"][0] != row["draw_psnr_rgb"][1]
    assert row["psnr_rgb"] == pytest.approx(np.mean(row["draw_psnr_rgb"]))

    model = tiny_model()
    rows = evaluate_color(model, [img, img[:12, :14]], draws=2, seed=4, return_images=True)
    assert len(rows) == 2
    first = rows[0]
    ref_u8 = quantize_to_uint8(luminance_reference(img))
    with torch.no_grad():
        gray = model(torch.from_numpy(img).permute(2, 0, 1)[None])[0][0, 0]
    gray_u8 = quantize_to_uint8(gray).numpy()
    assert np.array_equal(first["gray"], gray_u8)
    assert first["gray_psnr"] == pytest.approx(psnr(ref_u8, gray_u8))
    assert math.isfinite(first["gray_psnr"])
    img_u8 = quantize_to_uint8(img.astype(np.float64))
    first_draw = image_metrics(img_u8, first["rgb_rec"])
    assert first_draw["psnr_rgb"] == pytest.approx(first["draw_psnr_rgb"][0])
    z0 = image_metrics(img_u8, first["rgb_rec_z0"])
    assert z0["psnr_y"] == pytest.approx(first["psnr_y_z0"])
    again = evaluate_color(model, [img], draws=2, seed=4)[0]
    assert again["draw_psnr_rgb"] == first["draw_psnr_rgb"]  # seeded
    assert model.training  # restored
    t0 = evaluate_color(model, [img], draws=3, temperature=0)[0]
    assert t0["draws"] == 1 and t0["psnr_rgb"] == t0["psnr_rgb_z0"]
    with pytest.raises(ValueError, match="image 0 must be an RGB array"):
        evaluate_color(model, [img[..., 0]])
    with pytest.raises(ValueError, match="SSIM needs at least 11x11"):
        evaluate_color(model, [img[:8]])
