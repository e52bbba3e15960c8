"""Learnable invertible downsampling by an integer factor (IRN's x3 "ConvDownsampling")."""

from __future__ import annotations

import math

import torch
from torch import nn

from common.utils import broadcast_logdet, check_input

__all__ = ["ConvDownsampling", "dct_basis"]


def dct_basis(n: int) -> torch.Tensor:
    """The orthonormal ``n``-point DCT-II matrix ``[n, n]``, float64; row ``k`` = frequency ``k``.

    Row 0 is ``1/sqrt(n)`` everywhere; for ``n = 2`` this is the (orthonormal) Haar basis, for
    ``n = 3`` the rows are ``(1, 1, 1)/sqrt(3)``, ``(1, 0, -1)/sqrt(2)``, ``(1, -2, 1)/sqrt(6)``.
    """
    i = torch.arange(n, dtype=torch.float64)
    k = i[:, None]
    basis = torch.cos(math.pi * (2 * i[None, :] + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] = 1.0 / math.sqrt(n)
    return basis


class ConvDownsampling(nn.Module):
    """Space-to-depth by ``factor`` (default 3) followed by a learnable invertible mixing matrix.

    Every ``n x n`` block (``n = factor``) of every channel, flattened row-major to a vector
    ``b`` of ``N = n^2`` pixels, is mapped to ``M b`` with one learnable ``N x N`` matrix ``M``
    shared by all channels (a stride-``n`` convolution with a block-diagonal kernel)::

        [B, C, H, W] -> [B, N*C, H/n, W/n],   output channel k*C + c = (M b_c)_k

    ordered as :class:`~common.haar.HaarDownsampling`: all channels' first coefficients come
    first, so ``y[:, :C]`` is the low-resolution image.

    Initialisation: ``M = Q / n`` with ``Q`` the 2-D orthonormal DCT-II basis
    (``kron(D, D)``, :func:`dct_basis`). Its first row is ``1/N`` everywhere, so the first output
    of each channel starts as the ``n x n`` box average (close to the bicubic LR the guidance loss
    asks for); the other rows are an orthogonal completion with the same norm ``1/n``: the x3
    analogue of IRN's Haar transform with its 1/4 normalisation (for ``n = 2`` this init *is*
    that Haar transform, same rows in the same order). ``M M^T = I / N`` at init.

    Log-determinant per sample, with ``H*W/N`` blocks in each of the ``C`` channels::

        log|det| = (H * W / N) * C * log|det M|

    ``log|det M|`` is computed by ``slogdet`` in float64, and the inverse uses ``M^-1`` computed in
    float64 (then cast to the input's dtype). At init ``log|det M| = -N log n``, i.e.
    ``log|det| = -C*H*W*log(n)`` (Haar: ``-C*H*W*log 2``). The mixing runs outside autocast.

    Reference: Xiao et al., "Invertible Rescaling Network and Its Extensions", IJCV 2022,
    arXiv:2210.04188 (the x3 model replaces the Haar transform, which only halves the size, by a
    learnable invertible downsampling; docs/method.md sec. 2.7). The DCT completion is this
    project's choice.
    """

    def __init__(self, channels: int, factor: int = 3) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"ConvDownsampling: channels must be an int >= 1, got {channels}")
        if not isinstance(factor, int) or factor < 2:
            raise ValueError(f"ConvDownsampling: factor must be an int >= 2, got {factor}")
        self.channels = channels
        self.factor = factor
        d = dct_basis(factor)
        init = torch.kron(d, d) / factor
        self.weight = nn.Parameter(init.to(torch.get_default_dtype()))

    @property
    def out_channels(self) -> int:
        return self.factor**2 * self.channels

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        blocks = c * h * w / self.factor**2
        log_abs_det = torch.linalg.slogdet(self.weight.to(torch.float64))[1]
        return broadcast_logdet(blocks * log_abs_det, x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, self.channels, min_dim=4)
        n = self.factor
        if x.dim() != 4 or x.shape[-1] % n or x.shape[-2] % n:
            raise ValueError(
                f"ConvDownsampling: expected [B, {self.channels}, H, W] with H and W divisible by "
                f"{n}, got shape {tuple(x.shape)}; crop the image to a multiple of the scale first"
            )
        b, c, h, w = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            blocks = (
                x.reshape(b, c, h // n, n, w // n, n)
                .permute(0, 3, 5, 1, 2, 4)
                .reshape(b, n * n, c, h // n, w // n)
            )
            y = torch.einsum("kj,bjchw->bkchw", self.weight.to(x.dtype), blocks)
        return y.reshape(b, n * n * c, h // n, w // n), self._logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, y, self.out_channels, min_dim=4, direction="inverse")
        if y.dim() != 4:
            raise ValueError(
                f"ConvDownsampling.inverse: expected [B, {self.out_channels}, h, w], "
                f"got shape {tuple(y.shape)}"
            )
        n = self.factor
        b, _, h, w = y.shape
        c = self.channels
        with torch.autocast(device_type=y.device.type, enabled=False):
            m_inv = torch.linalg.inv(self.weight.to(torch.float64)).to(y.dtype)
            blocks = torch.einsum("jk,bkchw->bjchw", m_inv, y.reshape(b, n * n, c, h, w))
            x = blocks.reshape(b, n, n, c, h, w).permute(0, 3, 4, 1, 5, 2)
        x = x.reshape(b, c, h * n, w * n)
        return x, -self._logdet(x)

    def extra_repr(self) -> str:
        return f"{self.channels}, factor={self.factor}"
