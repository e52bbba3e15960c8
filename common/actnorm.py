"""ActNorm: per-channel affine normalisation, data-dependent init (Glow, sec. 3.1)."""

from __future__ import annotations

import math

import torch
from torch import nn

from common.utils import broadcast_logdet, check_input

__all__ = ["ActNorm", "actnorm_statistics"]


@torch.no_grad()
def actnorm_statistics(
    x: torch.Tensor, channels: int, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """ActNorm's data-dependent initial ``(bias, log_scale)`` for the batch ``x``, in float64.

    ``bias = -mean`` and ``log_scale = -log(std)`` per channel (dim 1) over every other dimension,
    so ``(x + bias) * exp(log_scale)`` has zero mean and unit variance per channel (Glow sec. 3.1).
    A channel with ``std <= eps`` gets ``log_scale = 0`` (``s = 1``) instead of inf. Under
    ``torch.distributed`` the sums are all-reduced first, so every rank gets the same values.
    """
    flat = x.detach().transpose(0, 1).reshape(channels, -1).to(torch.float64)
    count = torch.tensor(float(flat.shape[1]), dtype=torch.float64, device=x.device)
    total = flat.sum(dim=1)
    total_sq = (flat * flat).sum(dim=1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        stats = torch.cat([total, total_sq, count.reshape(1)])
        torch.distributed.all_reduce(stats)
        total, total_sq, count = stats[:channels], stats[channels : 2 * channels], stats[-1]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    scale = torch.where(std > eps, 1.0 / std.clamp_min(eps), torch.ones_like(std))
    return -mean, scale.log()


class ActNorm(nn.Module):
    """``y = (x + b) * s`` per channel; log|det| = ``H * W * sum_c log|s_c|``.

    Glow (Kingma & Dhariwal 2018), section 3.1 and Table 1 row "Actnorm". ``b`` and ``s`` are
    initialised from the first batch seen in training mode so that the output has zero mean and
    unit variance per channel; afterwards they are ordinary parameters. ``s`` is stored as
    ``log_scale`` (``s = exp(log_scale)``), so it is always positive and the log-det is linear in
    the parameter.

    The ``initialized`` flag is a buffer: it travels with ``state_dict``/checkpoints, so a loaded
    model is never re-initialised. A channel that is constant in the first batch gets ``s = 1``
    (its standard deviation is zero, so ``1/std`` is undefined) instead of NaN or inf. Under
    ``torch.distributed`` the statistics are averaged over all ranks so every replica starts
    identical.

    Works on ``[B, C]`` and ``[B, C, *spatial]``.

    Reference: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
    NeurIPS 2018, arXiv:1807.03039, sec. 3.1.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (1, self.channels) + (1,) * (x.dim() - 2)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set ``b = -mean`` and ``s = 1/std`` per channel from ``x`` (data-dependent init)."""
        bias, log_scale = actnorm_statistics(x, self.channels, self.eps)
        self.bias.copy_(bias.to(self.bias.dtype))
        self.log_scale.copy_(log_scale.to(self.log_scale.dtype))
        self.initialized.fill_(True)

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        positions = math.prod(x.shape[2:])  # H * W (1 for [B, C] input)
        return broadcast_logdet(self.log_scale.sum() * positions, x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, self.channels)
        if self.training and not bool(self.initialized):
            self.initialize(x)
        shape = self._shape(x)
        y = (x + self.bias.view(shape)) * self.log_scale.exp().view(shape)
        return y, self._logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, y, self.channels, direction="inverse")
        shape = self._shape(y)
        x = y * (-self.log_scale).exp().view(shape) - self.bias.view(shape)
        return x, -self._logdet(y)

    def extra_repr(self) -> str:
        return f"{self.channels}"
