"""Composition of invertible layers."""

from __future__ import annotations

import torch
from torch import nn

from common.utils import zeros_logdet

__all__ = ["FlowSequential"]


class FlowSequential(nn.Sequential):
    """Apply invertible layers in order, summing their log-determinants.

    ``y, logdet = flow(x)`` with ``logdet = sum_i logdet_i`` (chain rule: the Jacobian of a
    composition is the product of Jacobians), starting from a ``[B]`` zero; ``flow.inverse(y)``
    applies the layers' inverses in reverse order. Indexing, slicing and ``len`` work as for
    ``nn.Sequential``; state-dict keys are ``"{i}.<param>"``.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = zeros_logdet(x)
        for layer in self:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = zeros_logdet(y)
        for layer in reversed(self):
            y, ld = layer.inverse(y)
            logdet = logdet + ld
        return y, logdet
