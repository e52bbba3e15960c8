"""Mixed precision stays invertible: the bf16 round trip ``f^-1(f(x))`` on a real photo.

Under ``--amp`` (bf16 autocast on the CPU) only the subnets' convolutions run in bf16; their
outputs are cast back to float32 before the coupling arithmetic (``exp``, log-det, the inverse
formulas), so the flow stays invertible up to the bf16 error of the subnet outputs. What remains
is where the inverse pass feeds a subnet an input that differs from the forward pass's by float32
round-off and the bf16 cast rounds it the other way; that error is then carried to earlier layers.

Measured on the centre 192x192 crop of scikit-image's ``chelsea``, x4, the authors' architecture
(8 couplings per level, gc 32), their initialisation plus Gaussian noise of std 0.01 on every
weight (so no coupling is the identity), in [0, 1] units:

    float32 round trip: max 4.8e-7;  bf16: max 1.6e-3 (0.41 / 255), mean 5.7e-5
    (full 300x448 photo: bf16 max 2.7e-3, mean 6.7e-5; noise std 0.02: max 1.2e-2, mean 1e-3)

Trained models stay inside the same bounds. Measured with :func:`check` on the best checkpoints
of ``train_irn.py --batch-size 8 --patch-size 64 --iters 1000 --val-every 200 --seed S`` on the
sample photos: seed 1 at iteration 600, max 1.2e-3 / mean 8.6e-6; seed 2 at 600, max 2.3e-3 /
mean 5.5e-5; seed 1 trained with ``--amp``, at 800, max 1.0e-3 / mean 4.8e-6 (no trained
checkpoint ships with the tests, so this is not re-checked in CI).

Bounds asserted: bf16 max <= 5e-3 (1.3 / 255) and mean <= 3e-4, i.e. below the 8-bit step the LR
image is quantised to anyway; the 8-bit LR' of bf16 and float32 downscaling differ by at most one
level.
"""

from __future__ import annotations

import pytest
import torch
from flow_checks import perturb_

from common.quantize import quantize_ste
from common.runtime import autocast_context
from irn.model import IRN, IRNConfig


def photo(size: int = 192) -> torch.Tensor:
    """Centre ``size`` x ``size`` crop of chelsea, ``[1, 3, size, size]`` in [0, 1]."""
    skimage_data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float().div(255.0)[None]
    h, w = img.shape[-2:]
    top, left = (h - size) // 2 // 4 * 4, (w - size) // 2 // 4 * 4
    return img[..., top : top + size, left : left + size].contiguous()


def round_trip(model: IRN, x: torch.Tensor, amp: bool):
    with torch.no_grad(), autocast_context("cpu", amp):
        y, logdet = model(x)
        x_rec, logdet_inv = model.inverse(y)
    return y, x_rec, logdet, logdet_inv


def check(model: IRN, max_bound: float, mean_bound: float) -> dict[str, float]:
    x = photo()
    y32, x32, _, _ = round_trip(model, x, amp=False)
    y16, x16, ld16, ld16_inv = round_trip(model, x, amp=True)
    # the coupling arithmetic stays float32 under autocast
    assert y16.dtype == x16.dtype == ld16.dtype == ld16_inv.dtype == torch.float32
    err = (x16 - x).abs()
    out = {
        "fp32_max": (x32 - x).abs().max().item(),
        "bf16_max": err.max().item(),
        "bf16_mean": err.mean().item(),
    }
    print(", ".join(f"{k} {v:.2e}" for k, v in out.items()))
    assert out["fp32_max"] <= 1e-5
    assert out["bf16_max"] <= max_bound and out["bf16_mean"] <= mean_bound
    # relative log-det consistency of forward and inverse
    assert ((ld16 + ld16_inv).abs() <= 1e-5 * ld16.abs()).all()
    # the 8-bit LR image: bf16 and float32 downscaling agree to one level
    lr16 = quantize_ste(y16[:, :3]) * 255
    lr32 = quantize_ste(y32[:, :3]) * 255
    assert (lr16 - lr32).abs().max().item() <= 1.0 + 1e-3
    return out


def test_bf16_round_trip_on_a_photo_is_within_the_stated_bound():
    torch.manual_seed(0)
    model = perturb_(IRN(IRNConfig(scale=4)), std=0.01, seed=0).eval()
    check(model, max_bound=5e-3, mean_bound=3e-4)


def test_bf16_training_gradient_points_where_the_float32_one_does():
    """The bf16 training step follows the float32 one: on a batch of chelsea patches (same z'
    draw), the gradient of the whole IRN objective under ``--amp`` has cosine >= 0.999 with the
    float32 gradient and the same norm within 1%. Measured on the full x4 model at batch 8,
    patch 64 of the sample photos: cosine 1.0000 at initialisation, after 187 bf16 iterations
    and after 1000 float32 ones, while two z' draws give float32 gradients with cosine 0.98,
    0.99 and 0.91: bf16 changes the training signal far less than the noise of training does."""
    import train_irn

    torch.manual_seed(0)
    model = perturb_(IRN(IRNConfig(scale=4, blocks_per_level=2)), std=0.01, seed=0)
    x = photo(128)
    hr = torch.cat([x[..., :64, :64], x[..., 64:, 64:], x[..., :64, 64:]])
    lr_ref = torch.nn.functional.avg_pool2d(hr, 4)
    cfg = train_irn.IRNTrainConfig()
    grads = []
    for amp in (False, True):
        model.zero_grad()
        gen = torch.Generator().manual_seed(3)
        noise = train_irn.sample_noise(model, hr, cfg, gen)
        train_irn.compute_losses(model, hr, lr_ref, cfg, noise, 16.0, amp=amp)["total"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
    g32, g16 = grads
    cos = float(g32 @ g16 / (g32.norm() * g16.norm()))
    ratio = float(g16.norm() / g32.norm())
    print(f"cosine {cos:.6f}, norm ratio {ratio:.4f}")
    assert cos >= 0.999 and abs(ratio - 1) <= 0.01
