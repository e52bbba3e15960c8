"""Expected outputs of the rescaling scripts rebuilt from the model itself (``forward`` /
``inverse``), shared by ``test_evaluate_latent.py`` and ``test_rescale.py``."""

from __future__ import annotations

import numpy as np
import torch

from common.metrics import quantize_to_uint8


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC float image -> ``[1, C, H, W]`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]


def to_u8(t: torch.Tensor) -> np.ndarray:
    """``[1, C, H, W]`` in [0, 1] -> HWC uint8 (round, clamp)."""
    return quantize_to_uint8(t[0]).permute(1, 2, 0).numpy()


@torch.no_grad()
def lr_and_z(model: torch.nn.Module, hr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(LR'_q, z)`` of an HR image whose sides are multiples of the scale: the 8-bit LR as
    the protocol stores it and the latent ``f(hr)[:, 3:]``."""
    y, _ = model(to_tensor(hr))
    lr_q = torch.from_numpy(to_u8(y[:, :3]).transpose(2, 0, 1).astype(np.float32) / 255)[None]
    return lr_q, y[:, 3:]


@torch.no_grad()
def inverse_u8(model: torch.nn.Module, lr: torch.Tensor, z: torch.Tensor) -> np.ndarray:
    """``f^-1(LR, z)`` as the scripts write it (uint8 HWC)."""
    return to_u8(model.inverse(torch.cat([lr, z], dim=1))[0])


def read_u8(path) -> np.ndarray:
    """The 8-bit RGB pixels of an image file, exactly as stored."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
