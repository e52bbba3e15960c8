"""Learned Gaussian priors for multi-scale flows, written as invertible layers (Glow sec. 3).

A multi-scale flow (RealNVP sec. 3.6, Glow fig. 2b) factors out half of the channels after each
level and gives them a Gaussian prior whose mean and scale are *learned*: conditioned on the kept
half for the intermediate splits, unconditional (one mean and scale per channel) at the top.

Both are expressed here as standardising affine maps that keep the tensor shape, so they obey the
layer protocol (``y, logdet = layer(x)``, ``x, logdet_inv = layer.inverse(y)``) and can sit in a
:class:`~common.sequential.FlowSequential`::

    log N(z; mu, diag(sigma^2)) = log N((z - mu) / sigma; 0, I) - sum(log sigma)
                                = log N(y; 0, I) + logdet

i.e. scoring the standardised output ``y`` under a standard normal and adding the layer's
log-determinant gives exactly the learned-prior log-likelihood of the Glow paper. Sampling at
temperature ``T`` (Glow sec. 6: ``z ~ N(mu, (T sigma)^2)``) is ``layer.inverse`` of
``y ~ N(0, T^2 I)``. The model decides which part of ``y`` leaves the flow as a latent; nothing
is stored on the module between calls.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.coupling import CouplingBase, SubnetConstructor
from common.utils import broadcast_logdet, check_input, sum_except_batch

__all__ = ["SplitPrior", "LearnedGaussianPrior", "zero_conv"]


def zero_conv(kernel_size: int = 3) -> SubnetConstructor:
    """Constructor for a zero-initialised ``kernel_size`` conv ("Conv2dZeros" in Glow's code).

    Zero weights and bias make the prior start as the standard normal (mean 0, log-std 0), the
    same trick as Glow's zero-initialised last coupling layer (Glow sec. 3.3).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"zero_conv: kernel_size must be a positive odd int, got {kernel_size}")

    def make(in_channels: int, out_channels: int) -> nn.Module:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        return conv

    return make


class SplitPrior(CouplingBase):
    """Glow's split with a learned conditional Gaussian prior, as a standardising coupling.

    With ``h = x[:, :split]`` (kept, goes on to the next level) and ``z = x[:, split:]`` (factored
    out), a network gives ``(mu, log_sigma) = NN(h)`` and::

        y = [h, (z - mu) * exp(-log_sigma)]          log|det dy/dx| = -sum(log_sigma)

    so ``log N(y[:, split:]; 0, I) + logdet = log p(z | h)`` with
    ``p(z | h) = N(mu(h), diag(sigma(h)^2))`` (module docstring). The inverse is
    ``z = mu + sigma * y2``. ``NN = prior_constructor(split, 2 * (channels - split))``, whose
    first half of outputs is ``mu`` and second half ``log_sigma``; the default is a
    zero-initialised 3x3 convolution (:func:`zero_conv`) so training starts from ``N(0, I)``.
    For flat ``[B, C]`` inputs pass e.g. ``mlp_subnet(...)``. ``split`` defaults to
    ``channels // 2``.

    ``log_std_bound = b`` (optional) soft-clamps the scale as the couplings do,
    ``log_sigma = b * tanh(raw / b)`` in ``(-b, b)``: the map stays exact and its log-det is that
    of the clamped value, while an objective without the rest of the flow's log-det (IRN's, see
    ``irn/multiscale.py``) can no longer reach ``-inf`` by ``sigma -> 0``. Glow uses none.

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, sec. 3 and fig. 2 (multi-scale
    architecture with split; learned prior as in the authors' ``split2d``); Dinh et al., "Real
    NVP", arXiv:1605.08803, sec. 3.6 (factoring out variables).
    """

    def __init__(
        self,
        channels: int,
        split: int | None = None,
        prior_constructor: SubnetConstructor | None = None,
        log_std_bound: float | None = None,
    ) -> None:
        super().__init__(channels, channels // 2 if split is None else split)
        if log_std_bound is not None and not log_std_bound > 0:
            raise ValueError(f"SplitPrior: log_std_bound must be > 0 or None, got {log_std_bound}")
        make = zero_conv(3) if prior_constructor is None else prior_constructor
        self.prior = make(self.split, 2 * (channels - self.split))
        self.log_std_bound = log_std_bound

    def mean_log_std(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_sigma)`` of the conditional prior ``p(z | h)``, in ``h``'s dtype."""
        out = self._subnet(self.prior, h, h.dtype)
        c2 = self.channels - self.split
        log_std = out[:, c2:]
        if self.log_std_bound is not None:
            log_std = self.log_std_bound * torch.tanh(log_std / self.log_std_bound)
        return out[:, :c2], log_std

    def _forward(self, x1, x2):
        mean, log_std = self.mean_log_std(x1)
        y2 = (x2 - mean) * (-log_std).exp()
        return x1, y2, -sum_except_batch(log_std)

    def _inverse(self, y1, y2):
        mean, log_std = self.mean_log_std(y1)
        x2 = y2 * log_std.exp() + mean
        return y1, x2, sum_except_batch(log_std)


class LearnedGaussianPrior(nn.Module):
    """Learned unconditional Gaussian prior per channel, as the map ``y = (x - m) * exp(-s)``.

    ``m`` and ``s`` (log-std) are parameters of shape ``[C]``, zero-initialised so the prior
    starts as ``N(0, I)``; log|det| = ``-H * W * sum(s)`` (``H * W = 1`` for ``[B, C]`` input).
    Then ``log N(y; 0, I) + logdet = log N(x; m, diag(exp(2 s)))`` (module docstring). This is
    the prior of the top level of a multi-scale Glow ("learntop" in the authors' code).

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, sec. 3 / fig. 2 (top-level prior).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"LearnedGaussianPrior: channels must be an int >= 1, got {channels}")
        self.channels = channels
        self.mean = nn.Parameter(torch.zeros(channels))
        self.log_std = nn.Parameter(torch.zeros(channels))

    def _shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (1, self.channels) + (1,) * (x.dim() - 2)

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return broadcast_logdet(-self.log_std.sum() * math.prod(x.shape[2:]), x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, self.channels)
        shape = self._shape(x)
        y = (x - self.mean.view(shape)) * (-self.log_std).exp().view(shape)
        return y, self._logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, y, self.channels, direction="inverse")
        shape = self._shape(y)
        x = y * self.log_std.exp().view(shape) + self.mean.view(shape)
        return x, -self._logdet(y)

    def extra_repr(self) -> str:
        return f"{self.channels}"
