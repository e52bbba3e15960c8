"""Channel mixing between couplings (Glow, sec. 3.2): invertible 1x1 convolution and permutation.

:class:`InvConv1x1` is Glow's learned 1x1 convolution, plain or LU-decomposed;
:class:`ChannelPermutation` is the fixed random permutation that it generalises (a permutation
matrix is a 1x1 convolution with log|det| = 0), the "shuffle" of Glow sec. 5.1 and the
dissertation's flat model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.utils import broadcast_logdet, check_input, zeros_logdet

__all__ = ["ChannelPermutation", "InvConv1x1"]


def _mix(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``y[:, i] = sum_j W[i, j] x[:, j]`` at every position, in ``x``'s dtype, no autocast.

    The 1x1 convolution is part of the invertible map: running it in bf16 under autocast would
    break the round trip, so it always runs in the input's precision.
    """
    weight = weight.to(x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        if x.dim() == 2:
            return F.linear(x, weight)
        if x.dim() == 4:
            return F.conv2d(x, weight[:, :, None, None])
        return torch.einsum("ij,bj...->bi...", weight, x)


class InvConv1x1(nn.Module):
    """``y = W x`` per position; log|det| = ``H * W * log|det W|`` (Glow eq. in Table 1).

    ``W`` starts as a random rotation (orthogonal, det = +1 so log|det| = 0).

    * ``lu=False``: ``W`` is a free parameter; ``log|det W|`` via ``slogdet`` in float64.
    * ``lu=True`` (Glow sec. 3.2, "LU decomposition"): ``W = P L (U + diag(sign * exp(log_s)))``
      with ``P`` a fixed permutation, ``L`` unit lower triangular, ``U`` strictly upper triangular;
      then ``log|det W| = sum(log_s)``, O(C) instead of O(C^3).

    ``P``, ``sign`` and the triangular masks are buffers, so checkpoints carry them.
    Works on ``[B, C]`` (a flat flow) and ``[B, C, H, W]``.

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, sec. 3.2 and Table 1.
    """

    def __init__(self, channels: int, lu: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.lu = lu
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        if torch.det(q) < 0:  # make it a rotation so log|det| starts at exactly 0
            q[:, 0] = -q[:, 0]
        if not lu:
            self.weight = nn.Parameter(q.float())
            return
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(diag.abs().log().float())

    def weight_matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The current ``C x C`` matrix ``W``, assembled from the LU factors when ``lu=True``."""
        if not self.lu:
            return self.weight.to(dtype)
        lower = self.lower.to(dtype) * self.lower_mask.to(dtype) + self.eye.to(dtype)
        upper = self.upper.to(dtype) * self.lower_mask.T.to(dtype) + torch.diag(
            self.sign_s.to(dtype) * self.log_s.to(dtype).exp()
        )
        return self.perm.to(dtype) @ lower @ upper

    def log_abs_det(self) -> torch.Tensor:
        """``log|det W|`` as a 0-dim tensor (``sum(log_s)`` when ``lu=True``)."""
        if self.lu:
            return self.log_s.sum()
        return torch.linalg.slogdet(self.weight.to(torch.float64))[1]

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return broadcast_logdet(self.log_abs_det() * math.prod(x.shape[2:]), x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, self.channels)
        return _mix(x, self.weight_matrix(x.dtype)), self._logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, y, self.channels, direction="inverse")
        # Inverting a small matrix: do it in float64 and cast back (docs/method.md sec. 1).
        w_inv = torch.linalg.inv(self.weight_matrix(torch.float64))
        return _mix(y, w_inv), -self._logdet(y)

    def extra_repr(self) -> str:
        return f"{self.channels}, lu={self.lu}"


class ChannelPermutation(nn.Module):
    """A fixed random permutation of the channels (dim 1); log|det| = 0.

    The "shuffle" baseline against which Glow compares its 1x1 convolution (sec. 5.1, with
    "reverse"), as used by RealNVP, FrEIA's ``AllInOneBlock`` and the dissertation's flat Glow
    ("we randomly permute channels before splitting them at a coupling layer", sec. 3.2).
    Implemented as an index gather, so it costs no matrix product. The permutation and its
    inverse are buffers (saved in checkpoints). Works on ``[B, C]`` and ``[B, C, H, W]``.

    Reference: Glow (arXiv:1807.03039) sec. 3.2 and 5.1 ("shuffle"); Dinh et al., "Real NVP",
    arXiv:1605.08803.
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"ChannelPermutation: channels must be an int >= 1, got {channels}")
        self.channels = channels
        perm = torch.randperm(channels, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, self.channels)
        return x.index_select(1, self.perm), zeros_logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, y, self.channels, direction="inverse")
        return y.index_select(1, self.inverse_perm), zeros_logdet(y)

    def extra_repr(self) -> str:
        return f"{self.channels}"
