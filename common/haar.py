"""Haar wavelet downsampling with IRN's normalisation and channel order."""

from __future__ import annotations

import math

import torch
from torch import nn

from common.utils import broadcast_logdet, check_input

__all__ = ["HaarDownsampling", "haar_kernel"]


def haar_kernel(channels: int) -> torch.Tensor:
    """The authors' fixed Haar kernel ``[4*C, 1, 2, 2]`` (their ``haar_weights``).

    Row ``4*c + k`` holds wavelet ``k`` (a, h, v, d) of input channel ``c``. Our layer computes the
    same map in closed form; the kernel is kept to check and write the authors' checkpoint layout.
    """
    w = torch.ones(4, 1, 2, 2)
    w[1, 0, 0, 1] = w[1, 0, 1, 1] = -1  # h: left minus right columns
    w[2, 0, 1, 0] = w[2, 0, 1, 1] = -1  # v: top minus bottom rows
    w[3, 0, 0, 1] = w[3, 0, 1, 0] = -1  # d: diagonal
    return torch.cat([w] * channels, dim=0)


class HaarDownsampling(nn.Module):
    """Haar transform of every 2x2 block ``[[p, q], [r, t]]``, IRN's 1/4 normalisation::

        a = (p + q + r + t) / 4      h = (p - q + r - t) / 4
        v = (p + q - r - t) / 4      d = (p - q - r + t) / 4

    ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` ordered by wavelet: all ``a`` first (so ``y[:, :C]`` is
    the 2x box-downscaled image), then all ``h``, ``v``, ``d``. Each block is multiplied by
    ``M/4`` with ``M M^T = 4 I``, so ``|det| = 4^2 / 4^4 = 1/16`` per block and

        log|det| = (C * H * W / 4) * log(1/16) = -C * H * W * log 2.

    The inverse is ``p = a + h + v + d``, ``q = a - h + v - d``, ``r = a + h - v - d``,
    ``t = a - h - v + d`` (``(M/4)^-1 = M^T``). Closed-form adds on strided views: exact, no
    convolution, and never run in reduced precision under autocast.

    Reference: Xiao et al., "Invertible Image Rescaling", arXiv:2005.05650, sec. 3.2
    ("Haar transformation"); Diss. sec. 2.3.1, eq. 2.21; normalisation and channel order of the
    authors' code (docs/method.md sec. 2.6).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        value = torch.tensor(-c * h * w * math.log(2.0), dtype=torch.float64)  # not rounded
        return broadcast_logdet(value, x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, self.channels, min_dim=4, even_spatial=True)
        if x.dim() != 4:
            raise ValueError(f"HaarDownsampling: expected [B, C, H, W], got {tuple(x.shape)}")
        p = x[:, :, 0::2, 0::2]
        q = x[:, :, 0::2, 1::2]
        r = x[:, :, 1::2, 0::2]
        t = x[:, :, 1::2, 1::2]
        pq_sum, pq_diff = p + q, p - q
        rt_sum, rt_diff = r + t, r - t
        y = (
            torch.cat(
                [pq_sum + rt_sum, pq_diff + rt_diff, pq_sum - rt_sum, pq_diff - rt_diff], dim=1
            )
            * 0.25
        )
        return y, self._logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, y, 4 * self.channels, min_dim=4, direction="inverse")
        if y.dim() != 4:
            raise ValueError(
                f"HaarDownsampling.inverse: expected [B, 4C, h, w], got {tuple(y.shape)}"
            )
        a, h, v, d = y.chunk(4, dim=1)
        ah_sum, ah_diff = a + h, a - h
        vd_sum, vd_diff = v + d, v - d
        b, c, hh, ww = a.shape
        x = y.new_empty(b, c, 2 * hh, 2 * ww)
        x[:, :, 0::2, 0::2] = ah_sum + vd_sum  # p
        x[:, :, 0::2, 1::2] = ah_diff + vd_diff  # q
        x[:, :, 1::2, 0::2] = ah_sum - vd_sum  # r
        x[:, :, 1::2, 1::2] = ah_diff - vd_diff  # t
        return x, -self._logdet(x)

    def extra_repr(self) -> str:
        return f"{self.channels}"
