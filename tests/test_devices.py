"""The layers, a training run, tiling and (with two GPUs) DDP on every device present.

The ``device`` fixture (tests/conftest.py) is ``cpu`` and, where ``torch.cuda.is_available()``,
``cuda``: on a GPU machine ``python -m pytest tests/test_devices.py`` runs each test on both
(``bench/gpu_check.py`` does that and reports the result). On the CPU the same code runs, so
the tests cannot rot before a GPU is at hand. With autocast the dtype is the device's ``--amp``
default (bf16 on CPU, fp16 on CUDA) and fp16 everywhere.
"""

from __future__ import annotations

import math

import pytest
import torch
from flow_checks import perturb_
from tests_support import tiny_images

import train_irn
from common.runtime import amp_dtype, autocast_context
from glow.model import Glow, GlowConfig
from irn.model import IRN, IRNConfig
from irn.tiling import downscale_tiled, sample_z, upscale_tiled

MODELS = {
    "irn_x4": lambda: IRN(IRNConfig(scale=4, blocks_per_level=1, gc=4)),  # Haar, couplings
    "irn_x3": lambda: IRN(IRNConfig(scale=3, blocks_per_level=1, gc=4)),  # ConvDownsampling
    "glow_multiscale": lambda: Glow(GlowConfig(architecture="multiscale", steps=2, hidden=8)),
}
SHAPES = {"irn_x4": (2, 3, 16, 16), "irn_x3": (2, 3, 12, 12), "glow_multiscale": (2, 1, 8, 8)}


def reduced_float32(device: torch.device) -> bool:
    """float32 convolutions run in TF32 (a 10-bit mantissa, as fp16's) on CUDA unless turned
    off: PyTorch allows it for cuDNN by default, and this project leaves that default."""
    return device.type == "cuda" and torch.backends.cudnn.allow_tf32


def built(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = perturb_(MODELS[name](), std=0.02, seed=1).to(device).eval()
    if isinstance(model, Glow):
        model.initialize(torch.rand(SHAPES[name], generator=torch.Generator().manual_seed(2)))
    return model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("amp", [None, "device", torch.float16], ids=["fp32", "amp", "fp16"])
def test_round_trip_and_logdet_are_float32_on_the_device(device, name, amp):
    if amp is not None and name.startswith("glow"):
        pytest.skip("Glow trains and samples in float32 only (no --amp)")
    model = built(name, device)
    x = torch.rand(SHAPES[name], generator=torch.Generator().manual_seed(3)).to(device)
    dtype = amp_dtype(device) if amp == "device" else amp
    with torch.no_grad(), autocast_context(device, dtype):
        y, logdet = model(x)
        x_rec, logdet_inv = model.inverse(y)
    assert x_rec.device.type == device.type and logdet.shape == (x.shape[0],)
    assert y.dtype == x_rec.dtype == logdet.dtype == logdet_inv.dtype == torch.float32
    assert torch.isfinite(logdet).all()
    bound = 1e-5 if dtype is None and not reduced_float32(device) else 5e-3
    assert (x_rec - x).abs().max().item() <= bound
    assert ((logdet + logdet_inv).abs() <= 1e-4 * (1 + logdet.abs())).all()


@pytest.mark.parametrize("extra", [[], ["--amp", "--amp-dtype", "fp16"]], ids=["fp32", "fp16"])
def test_training_runs_on_the_device(device, tmp_path, extra):
    train_dir, val_dir = tiny_images(tmp_path)
    out = train_irn.main(
        ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "2", "--patch-size", "16",
         "--iters", "2", "--val-every", "2", "--threads", "1", "--no-tensorboard",
         "--device", str(device), "--data", str(train_dir), "--val-data", str(val_dir),
         "--out", str(tmp_path / "run"), "--amp-init-scale", "128", *extra]
    )  # fmt: skip
    assert out["step"] == 2 and out["scaler_skipped"] == 0
    assert all(math.isfinite(h["total"]) and math.isfinite(h["grad_norm"]) for h in out["history"])
    assert next(out["model"].parameters()).device.type == device.type
    assert math.isfinite(out["val"][-1]["psnr_y"])


def test_tiled_equals_untiled_on_the_device(device):
    model = built("irn_x4", device)
    gen = torch.Generator().manual_seed(4)
    hr = torch.nn.functional.interpolate(torch.rand(1, 3, 14, 17, generator=gen), size=(96, 120))
    lr_full = downscale_tiled(model, hr)
    lr_tiled = downscale_tiled(model, hr, 32, 16)
    if reduced_float32(device):  # tiles may take other cuDNN algorithms: one 8-bit level
        assert (lr_tiled - lr_full).abs().max().item() <= 1 / 255 + 1e-6
    else:
        assert torch.equal(lr_tiled, lr_full)
    z = sample_z(model, lr_full.shape, 1.0, torch.Generator().manual_seed(0))
    hr_full = upscale_tiled(model, lr_full, z)
    hr_tiled = upscale_tiled(model, lr_full, z, 32, 16)
    assert (hr_tiled - hr_full).abs().max().item() < (5e-3 if reduced_float32(device) else 1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_equal_one(tmp_path):
    """DDP over two GPUs (NCCL): both ranks hold the same weights after 2 + 2 iterations."""
    import torch.multiprocessing as mp
    from test_ddp import TINY, _free_port, _worker

    train_dir, _ = tiny_images(tmp_path)
    argv = [*TINY, "--device", "cuda", "--data", str(train_dir), "--out", str(tmp_path / "ddp")]
    ctx = mp.get_context("spawn")
    ports = [_free_port(), _free_port()]
    procs = [ctx.Process(target=_worker, args=(r, 2, ports, argv, str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    s0, s1 = ranks[0][1]["state"], ranks[1][1]["state"]
    assert all(torch.equal(s0[k], s1[k]) for k in s0), "ranks diverged"
    assert ranks[0][1]["history"] == ranks[1][1]["history"]
