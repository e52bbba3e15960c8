"""Coupling layers: affine (Glow/RealNVP), additive (NICE) and IRN's enhanced affine coupling.

Every coupling splits the channels (dim 1) into ``x1 = x[:, :split]`` and ``x2 = x[:, split:]``;
:class:`CouplingBase` owns the split, the concatenation, the input checks and the soft clamp, and
the subclasses give the equations. Subnets are built only through a
``subnet_constructor(in_channels, out_channels) -> nn.Module``.

Precision: the subnets may run in low precision under autocast, but their outputs are cast back to
the input's dtype before the coupling arithmetic, so ``exp``, the log-determinant and the round
trip are computed in float32 (or float64 when the input is float64).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from common.utils import check_input, logdet_dtype, sum_except_batch, zeros_logdet

__all__ = [
    "SubnetConstructor",
    "CouplingBase",
    "AffineCoupling",
    "AdditiveCoupling",
    "EnhancedAffineCoupling",
    "soft_clamp",
]

SubnetConstructor = Callable[[int, int], nn.Module]


def soft_clamp(u: torch.Tensor, clamp: float, tightness: float = 1.0) -> torch.Tensor:
    """IRN's soft clamp ``clamp * (2 * sigmoid(tightness * u) - 1)``, in ``(-clamp, clamp)``.

    Computed as ``clamp * tanh(tightness * u / 2)`` (the same function: ``2*sigmoid(v)-1 =
    tanh(v/2)``; Diss. eq. 2.23), which is more accurate near 0. ``tightness`` is the
    dissertation's IRN-T option (Diss. sec. 3.4.1, table 3.4): larger values make the clamp
    steeper.
    """
    return clamp * torch.tanh(u * (0.5 * tightness))


class CouplingBase(nn.Module):
    """Split ``x`` into ``(x1, x2)`` along channels, apply ``_forward``/``_inverse``, concatenate.

    Subclasses implement ``_forward(x1, x2) -> (y1, y2, logdet)`` and
    ``_inverse(y1, y2) -> (x1, x2, logdet)`` with ``logdet`` of shape ``[B]``.
    """

    def __init__(self, channels: int, split: int) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 2:
            raise ValueError(
                f"{type(self).__name__}: channels must be an int >= 2, got {channels}"
            )
        if not isinstance(split, int) or not 0 < split < channels:
            raise ValueError(
                f"{type(self).__name__}: split must be an int in [1, {channels - 1}] "
                f"for {channels} channels, got {split}"
            )
        self.channels = channels
        self.split = split

    @staticmethod
    def _subnet(net: nn.Module, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        # Subnet output back to the coupling's precision (float32 under autocast).
        return net(x).to(out_dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, self.channels)
        x1, x2 = x[:, : self.split], x[:, self.split :]
        y1, y2, logdet = self._forward(x1, x2)
        return torch.cat([y1, y2], dim=1), logdet.to(logdet_dtype(x))

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, y, self.channels, direction="inverse")
        y1, y2 = y[:, : self.split], y[:, self.split :]
        x1, x2, logdet = self._inverse(y1, y2)
        return torch.cat([x1, x2], dim=1), logdet.to(logdet_dtype(y))

    def _forward(self, x1, x2):  # pragma: no cover - abstract
        raise NotImplementedError

    def _inverse(self, y1, y2):  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"channels={self.channels}, split={self.split}"


class AffineCoupling(CouplingBase):
    """Glow / RealNVP affine coupling.

    ``(h_s, t) = NN(x1)``; ``y1 = x1``; ``y2 = x2 * g(h_s) + t``; log|det| = ``sum log g``.

    * ``scale_fn="sigmoid"`` (Glow's code): ``g = sigmoid(h_s + 2)``, so ``g`` is in (0, 1) and
      starts near 0.88.
    * ``scale_fn="exp"`` (RealNVP): ``g = exp(clamp * tanh(h_s / clamp))``, a soft clamp keeping
      ``|log g| < clamp``.

    ``NN = subnet_constructor(split, 2 * (channels - split))``; its first half of output channels
    is ``h_s``, the second half ``t``. ``split`` defaults to ``channels // 2``.

    Reference: Glow (arXiv:1807.03039) sec. 3.3 and Table 1; Dinh et al., "Density estimation
    using Real NVP", ICLR 2017, eq. 6-7.
    """

    def __init__(
        self,
        channels: int,
        subnet_constructor: SubnetConstructor,
        split: int | None = None,
        scale_fn: str = "sigmoid",
        clamp: float = 2.0,
    ) -> None:
        super().__init__(channels, channels // 2 if split is None else split)
        if scale_fn not in ("sigmoid", "exp"):
            raise ValueError(
                f"AffineCoupling: scale_fn must be 'sigmoid' or 'exp', got {scale_fn!r}"
            )
        if clamp <= 0:
            raise ValueError(f"AffineCoupling: clamp must be > 0, got {clamp}")
        self.scale_fn = scale_fn
        self.clamp = clamp
        self.NN = subnet_constructor(self.split, 2 * (channels - self.split))

    def _log_scale_shift(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._subnet(self.NN, x1, x1.dtype)
        c2 = self.channels - self.split
        h_s, shift = h[:, :c2], h[:, c2:]
        if self.scale_fn == "sigmoid":
            log_g = F.logsigmoid(h_s + 2.0)
        else:
            log_g = self.clamp * torch.tanh(h_s / self.clamp)
        return log_g, shift

    def _forward(self, x1, x2):
        log_g, shift = self._log_scale_shift(x1)
        y2 = x2 * log_g.exp() + shift
        return x1, y2, sum_except_batch(log_g)

    def _inverse(self, y1, y2):
        log_g, shift = self._log_scale_shift(y1)
        x2 = (y2 - shift) * (-log_g).exp()
        return y1, x2, -sum_except_batch(log_g)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale_fn={self.scale_fn!r}"


class AdditiveCoupling(CouplingBase):
    """NICE additive coupling: ``y1 = x1``, ``y2 = x2 + m(x1)``; log|det| = 0.

    ``m = subnet_constructor(split, channels - split)``; ``split`` defaults to ``channels // 2``.

    Reference: Dinh et al., "NICE: Non-linear Independent Components Estimation", ICLR 2015
    workshop, arXiv:1410.8516, eq. 4 (additive coupling law).
    """

    def __init__(
        self, channels: int, subnet_constructor: SubnetConstructor, split: int | None = None
    ) -> None:
        super().__init__(channels, channels // 2 if split is None else split)
        self.m = subnet_constructor(self.split, channels - self.split)

    def _forward(self, x1, x2):
        return x1, x2 + self._subnet(self.m, x1, x1.dtype), zeros_logdet(x1)

    def _inverse(self, y1, y2):
        return y1, y2 - self._subnet(self.m, y1, y1.dtype), zeros_logdet(y1)


class EnhancedAffineCoupling(CouplingBase):
    """IRN's enhanced affine coupling (IRN sec. 3.2, Diss. eq. 2.22-2.23; authors' InvBlockExp).

    With ``x1`` the first ``split`` channels (the LR branch) and ``x2`` the rest::

        y1 = x1 + F(x2)
        s  = clamp * (2 * sigmoid(clamp_tightness * H(y1)) - 1)
        y2 = x2 * exp(s) + G(y1)                      log|det| = sum(s)

    and the inverse ``x2 = (y2 - G(y1)) * exp(-s)``, ``x1 = y1 - F(x2)`` (docs/method.md sec. 2.5).
    ``F = subnet(c2 -> c1)``, ``G = H = subnet(c1 -> c2)``; the names ``F``, ``G``, ``H`` are the
    paper's and give the authors' checkpoint keys (``operations.i.F.conv1.weight``, ...).
    ``clamp_tightness`` is the dissertation's IRN-T option (1 = the authors' IRN).

    Reference: Xiao et al., "Invertible Image Rescaling", ECCV 2020, arXiv:2005.05650, sec. 3.2
    (the invertible block); clamp as in the authors' released code.
    """

    def __init__(
        self,
        channels: int,
        split: int,
        subnet_constructor: SubnetConstructor,
        clamp: float = 1.0,
        clamp_tightness: float = 1.0,
    ) -> None:
        super().__init__(channels, split)
        if clamp <= 0 or clamp_tightness <= 0:
            raise ValueError(
                "EnhancedAffineCoupling: clamp and clamp_tightness must be > 0, "
                f"got clamp={clamp}, clamp_tightness={clamp_tightness}"
            )
        self.clamp = clamp
        self.clamp_tightness = clamp_tightness
        c1, c2 = split, channels - split
        self.F = subnet_constructor(c2, c1)
        self.G = subnet_constructor(c1, c2)
        self.H = subnet_constructor(c1, c2)

    def _scale(self, y1: torch.Tensor) -> torch.Tensor:
        return soft_clamp(self._subnet(self.H, y1, y1.dtype), self.clamp, self.clamp_tightness)

    def _forward(self, x1, x2):
        y1 = x1 + self._subnet(self.F, x2, x1.dtype)
        s = self._scale(y1)
        y2 = x2 * s.exp() + self._subnet(self.G, y1, y1.dtype)
        return y1, y2, sum_except_batch(s)

    def _inverse(self, y1, y2):
        s = self._scale(y1)
        x2 = (y2 - self._subnet(self.G, y1, y1.dtype)) * (-s).exp()
        x1 = y1 - self._subnet(self.F, x2, y1.dtype)
        return x1, x2, -sum_except_batch(s)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, clamp={self.clamp}, clamp_tightness={self.clamp_tightness}"
        )
