"""Composition of invertible layers."""

from __future__ import annotations

import torch
from torch import nn

from common.memsave import flow_forward, flow_inverse
from common.utils import zeros_logdet

__all__ = ["FlowSequential"]


class FlowSequential(nn.Sequential):
    """Apply invertible layers in order, summing their log-determinants.

    ``y, logdet = flow(x)`` with ``logdet = sum_i logdet_i`` (chain rule: the Jacobian of a
    composition is the product of Jacobians), starting from a ``[B]`` zero; ``flow.inverse(y)``
    applies the layers' inverses in reverse order. Indexing, slicing and ``len`` work as for
    ``nn.Sequential``; state-dict keys are ``"{i}.<param>"``.

    ``memory_saving=True`` (or setting the attribute later) makes both directions keep only their
    output for the backward pass and recompute each layer's input from its output with the exact
    inverse (:mod:`common.memsave`; Gomez et al. 2017): the same values and gradients, activation
    memory independent of depth, at the cost of recomputing the layers once in the backward pass.
    It applies only while autograd records (``torch.is_grad_enabled()``); it is not a buffer, so
    state dicts are unchanged, and a slice ``flow[a:b]`` starts with it off.
    """

    def __init__(self, *layers: nn.Module, memory_saving: bool = False) -> None:
        super().__init__(*layers)
        self.memory_saving = bool(memory_saving)

    def _saving(self) -> bool:
        return self.memory_saving and torch.is_grad_enabled() and len(self) > 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._saving():
            return flow_forward(list(self), x)
        logdet = zeros_logdet(x)
        for layer in self:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._saving():
            return flow_inverse(list(self), y)
        logdet = zeros_logdet(y)
        for layer in reversed(self):
            y, ld = layer.inverse(y)
            logdet = logdet + ld
        return y, logdet

    def extra_repr(self) -> str:
        return "memory_saving=True" if self.memory_saving else ""
