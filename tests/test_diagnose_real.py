"""bench/diagnose_real.py's measurements on a tiny IRN (the held-out photos are not needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import diagnose_real  # noqa: E402
from flow_checks import tiny_irn_x4 as tiny_x4  # noqa: E402


def test_z_offset_is_the_constant_part_of_z():
    model = tiny_x4()
    rng = np.random.default_rng(0)
    hr = rng.random((34, 42, 3)).astype(np.float32)  # not a multiple of 4: modcropped
    x = torch.from_numpy(hr[:32, :40].transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        z = model(x)[0][:, 3:]
    want = z.mean((2, 3)).pow(2).mean().sqrt().item()
    assert diagnose_real.z_offset_rms(model, hr) == pytest.approx(want, rel=1e-6)
    assert 0 < want < z.pow(2).mean().sqrt().item()  # a mean is smaller than the whole


def test_reconstructions_exact_with_true_z_and_offset_oracle_on_flat_image():
    model = tiny_x4()
    flat = np.full((48, 48, 3), (0.8, 0.6, 0.3), np.float32)
    rec = diagnose_real.reconstructions(model, flat)
    assert set(rec) == {"float+z", "8bit+z", "8bit+0", "8bit+N", "8bit+zbar"}
    assert rec["float+z"] > 60  # the network is exact
    # on a flat image z is nearly constant, so its per-channel mean recovers most of z = 0's loss
    assert rec["8bit+zbar"] > rec["8bit+0"] + 3
