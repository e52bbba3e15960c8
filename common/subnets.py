"""Subnet constructors: the one way couplings get their networks.

A constructor is any callable ``(in_channels, out_channels) -> nn.Module``. The factories here
return such callables with the hyper-parameters bound, e.g. ``dense_block(gc=32)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "DenseBlock",
    "dense_block",
    "conv_subnet",
    "mlp_subnet",
    "set_dense_block_options",
]


class DenseBlock(nn.Module):
    """IRN's subnet ("DBNet"): a five-convolution dense block (IRN sec. 4.1; Diss. fig. 3.3).

    Each 3x3 convolution (padding 1) sees the concatenation of the input and all previous
    outputs: ``cin->gc, cin+gc->gc, cin+2gc->gc, cin+3gc->gc, cin+4gc->cout``, LeakyReLU(0.2)
    after the first four. Initialisation as the authors: convs 1-4 Xavier-normal times 0.1, biases
    0; conv 5 all zeros so every coupling starts as the identity (``init="xavier"``).
    Attribute names ``conv1..conv5`` give the authors' checkpoint keys.

    Execution (same values, same state_dict; profiled in ``bench/bench_irn.py``):

    * ``channels_last`` (default True): the convolutions run on NHWC tensors, the layout oneDNN
      (CPU) and cuDNN tensor cores prefer, instead of reordering NCHW inputs at every call; the
      input is converted once and the (small) output converted back, so callers see NCHW.
    * ``fast`` (default True): (1) under autocast the input is cast to the autocast dtype first,
      so the four concatenations stay in bf16/fp16 instead of being promoted to float32 by
      ``torch.cat`` (a mixed float32/bf16 ``cat`` promotes) and cast back by every convolution;
      (2) the concatenation grows by one output per convolution, ``feats = cat((feats, x_k))``,
      so the backward pass adds each convolution's input gradient to the next concatenation's
      gradient in one block (4 additions per block instead of 10 piecewise ones, fewer autograd
      nodes): a shorter training step (docs/performance.md), the same values, and with
      ``channels_last`` the same float32 gradients bit for bit. ``fast=False`` and
      ``channels_last=False`` is the authors' computation exactly (the "baseline" of the
      benchmark).

    Reference: Xiao et al., "Invertible Image Rescaling", arXiv:2005.05650, sec. 4.1 (dense
    blocks as phi, rho, eta); Wang et al., ESRGAN (dense block design).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        gc: int = 32,
        init: str = "xavier",
        channels_last: bool = True,
        fast: bool = True,
    ):
        super().__init__()
        self.channels_last = channels_last
        self.fast = fast
        if init not in ("xavier", "kaiming"):
            raise ValueError(f"DenseBlock: init must be 'xavier' or 'kaiming', got {init!r}")
        self.conv1 = nn.Conv2d(in_channels, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(in_channels + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(in_channels + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(in_channels + 4 * gc, out_channels, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            if init == "xavier":
                nn.init.xavier_normal_(conv.weight)
            else:
                nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv5.weight)
        nn.init.zeros_(self.conv5.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if self.fast and torch.is_autocast_enabled(device):
            x = x.to(torch.get_autocast_dtype(device))
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.fast:
            x1 = self.lrelu(self.conv1(x))
            x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
            x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
            x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
            out = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        else:
            # Grow the concatenation one output at a time: the same tensors, but the backward
            # pass adds each convolution's input gradient to the previous concatenation's as
            # one block instead of piece by piece: 4 additions per block instead of 10, fewer
            # autograd nodes. (Same order of additions inside the block; without the layout
            # copy of x, in NCHW, gradients arriving at x from outside the block may associate
            # differently: float32 round-off.)
            feats = x
            for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
                feats = torch.cat((feats, self.lrelu(conv(feats))), 1)
            out = self.conv5(feats)
        return out.contiguous() if self.channels_last else out

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}, fast={self.fast}"


def dense_block(gc: int = 32, init: str = "xavier") -> Callable[[int, int], nn.Module]:
    """Constructor for :class:`DenseBlock` with growth ``gc``."""

    def make(in_channels: int, out_channels: int) -> nn.Module:
        return DenseBlock(in_channels, out_channels, gc=gc, init=init)

    return make


def set_dense_block_options(
    module: nn.Module, channels_last: bool | None = None, fast: bool | None = None
) -> int:
    """Set the execution options of every :class:`DenseBlock` inside ``module``.

    ``None`` leaves an option unchanged. Returns the number of blocks changed. Use
    ``channels_last=False, fast=False`` for the authors' exact computation.
    """
    count = 0
    for sub in module.modules():
        if isinstance(sub, DenseBlock):
            if channels_last is not None:
                sub.channels_last = bool(channels_last)
            if fast is not None:
                sub.fast = bool(fast)
            count += 1
    return count


def conv_subnet(
    hidden: int = 64, kernel_size: int = 3, zero_init: bool = True
) -> Callable[[int, int], nn.Module]:
    """Glow's coupling network: conv(k) -> ReLU -> conv(1x1) -> ReLU -> conv(k), last layer zero.

    Reference: Glow (arXiv:1807.03039) sec. 3.3 / Table 4 ("zero initialization" of the last
    convolution so each coupling starts as the identity).
    """

    def make(in_channels: int, out_channels: int) -> nn.Module:
        pad = kernel_size // 2
        net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size, padding=pad),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, kernel_size, padding=pad),
        )
        if zero_init:
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        return net

    return make


def mlp_subnet(
    hidden: int = 512, layers: int = 2, zero_init: bool = True
) -> Callable[[int, int], nn.Module]:
    """Fully connected subnet: ``layers`` hidden ReLU layers of width ``hidden`` then a linear out.

    The dissertation's flat Glow on 8x8 digits uses ``layers=2`` (two ReLU layers).
    """

    def make(in_features: int, out_features: int) -> nn.Module:
        mods: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        mods.append(nn.Linear(width, out_features))
        net = nn.Sequential(*mods)
        if zero_init:
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        return net

    return make
