"""Squeeze (space-to-depth) for multi-scale flows."""

from __future__ import annotations

import torch
from torch import nn

from common.utils import check_input, zeros_logdet

__all__ = ["Squeeze"]


class Squeeze(nn.Module):
    """Space-to-depth 2x2: ``[B, C, H, W] -> [B, 4C, H/2, W/2]``; a permutation, log|det| = 0.

    Output channel ``4*c + 2*i + j`` holds pixel ``(i, j)`` of every 2x2 block of channel ``c``.

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803, sec. 3.6
    (squeezing operation); Glow (arXiv:1807.03039) sec. 3, multi-scale architecture.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, min_dim=4, even_spatial=True)
        if x.dim() != 4:
            raise ValueError(f"Squeeze: expected [B, C, H, W], got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), zeros_logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, y, min_dim=4, direction="inverse")
        if y.dim() != 4 or y.shape[1] % 4:
            raise ValueError(
                f"Squeeze.inverse: expected [B, 4C, H, W] with channels divisible by 4, "
                f"got shape {tuple(y.shape)}"
            )
        b, c4, h, w = y.shape
        c = c4 // 4
        x = y.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c, 2 * h, 2 * w), zeros_logdet(y)
