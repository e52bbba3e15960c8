"""Multi-scale IRN: a part of the latent leaves the flow after each level (``--multiscale``).

The authors' IRN (Xiao et al., "Invertible Image Rescaling", ECCV 2020, sec. 3.2) keeps every
channel through every level: after each Haar step the features still have the full dimension of
the HR image. RealNVP (Dinh et al., arXiv:1605.08803, sec. 3.6), Glow (Kingma & Dhariwal,
arXiv:1807.03039, sec. 3 and fig. 2) and SRFlow factor part of the variables out after each
downsampling instead, so the deeper levels work on fewer channels. This module builds that
architecture for IRN while keeping IRN's interface: one tensor ``y = f(x)`` of the same shape as
the plain IRN's, ``y[:, :C]`` the LR image and ``y[:, C:]`` the latent ``z``.

"Parking". The channels are kept in the order ``[active | parked]``. After every level but the
last, the last ``k_l`` active channels (the high-frequency end of the coupling's ``x2`` branch:
the Haar step orders its outputs a, h, v, d) become parked: this is only a move of the boundary,
no data moves. At the next Haar step the active channels get the Haar transform
(:class:`~common.haar.HaarDownsampling`) and the parked ones are only squeezed
(:class:`~common.squeeze.Squeeze`, a permutation with log-det 0) so that both reach the next
resolution (:class:`ParkedHaar`); the couplings of later levels act on the active channels alone
(:class:`OnActive`). The final ``z`` is therefore a fixed permutation of ``[z_L, z_{L-1}, ...,
z_1]`` (each ``z_l`` squeezed to the LR resolution), and the log-determinant of the whole map is
the sum of the layers' as for any :class:`~common.sequential.FlowSequential`.

Priors of the parked parts (``split_prior``):

* ``normal``: ``z_l ~ N(0, I)``; IRN's distribution loss ``sum z^2`` covers every part as is.
* ``learned``: Glow's split prior (``common/split.py``): a conditional Gaussian
  ``p(z_parked | h) = N(mu(h), diag(sigma(h)^2))`` with ``(mu, log sigma)`` from a
  zero-initialised 3x3 convolution of the channels that stay, ``h = y[:, :active]`` (the LR and
  the last level's latent). It is the last layer of the flow, a standardising coupling
  ``eps = (z_parked - mu) / sigma`` (:class:`~common.split.SplitPrior`, log-det
  ``-sum log sigma``), so the network's external ``z`` is ``N(0, I)`` under either prior and
  upscaling with ``eps ~ N(0, T^2 I)`` samples ``z_parked ~ N(mu, (T sigma)^2)`` (Glow sec. 6's
  temperature). Since ``-log p(z_parked | h) = sum eps^2 / 2 + sum log sigma + const``, IRN's
  surrogate ``sum z^2`` (twice the negative log-likelihood of ``N(0, I)``) becomes
  ``sum eps^2 + 2 sum log sigma`` for the parked part: :func:`latent_logscale_penalty` gives the
  second term, which training adds (without it ``sigma`` would grow without bound).

  Bounded scale. Unlike Glow's likelihood, IRN's objective has no log-determinant of the rest of
  the flow, so nothing stops the network from making the parked part a deterministic function
  of ``h``; with a free ``sigma`` then ``sigma -> 0`` and ``sum eps^2 + 2 sum log sigma`` is
  unbounded below (it fell past -20,000 within 100 iterations; docs/multiscale.md). The prior's
  ``log sigma`` is therefore soft-clamped to ``(-b, b)`` with ``b = LEARNED_LOG_STD_BOUND``
  (``b tanh(raw / b)``, the couplings' clamp), and the penalty is written
  ``2 sum (log sigma + b) >= 0``: the constant ``2 b`` per element leaves every gradient as it
  is and keeps the loss on the same footing as the normal prior's ``sum z^2 >= 0``. At the bound
  the parked part is scored as ``sum (z - mu)^2 / sigma_min^2`` with ``sigma_min = e^-b``, a
  fixed multiple of the normal prior's ``sum z^2``, and upscaling samples it with that spread.

  The conditioner sees the channels that stay *at the end* of the flow rather than at the split
  point (Glow's ``split2d``): they are an invertible function of the latter, so the same
  information, and the penalty is then a function of the output ``y`` alone (one 3x3 conv at
  the LR resolution), computable in the loss without storing anything on the module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.actnorm import ActNorm
from common.coupling import EnhancedAffineCoupling, SubnetConstructor
from common.haar import HaarDownsampling
from common.memsave import StepResult, register_reversible_step, reversible_step
from common.split import SplitPrior, zero_conv
from common.squeeze import Squeeze
from common.utils import check_input, sum_except_batch

__all__ = [
    "ParkedHaar",
    "OnActive",
    "split_sizes",
    "check_multiscale",
    "multiscale_layers",
    "learned_prior",
    "latent_logscale_penalty",
    "LEARNED_LOG_STD_BOUND",
]


class ParkedHaar(nn.Module):
    """Haar step of the active channels, squeeze of the parked ones.

    ``[B, n + p, H, W] -> [B, 4n + 4p, H/2, W/2]``: ``[Haar(x[:, :n]) | Squeeze(x[:, n:])]``.
    The Haar transform (IRN sec. 3.2) has log|det| = ``-n H W log 2``; the squeeze
    (RealNVP sec. 3.6) is a permutation, log|det| = 0; the layer is block diagonal, so its
    log-det is the Haar one. The inverse undoes each block.

    Reference: Xiao et al., "Invertible Image Rescaling", arXiv:2005.05650, sec. 3.2; Dinh et
    al., "Density estimation using Real NVP", arXiv:1605.08803, sec. 3.6 (squeeze, factoring
    out).
    """

    def __init__(self, active: int, parked: int) -> None:
        super().__init__()
        if active < 1 or parked < 1:
            raise ValueError(f"ParkedHaar: active and parked must be >= 1, got {active}, {parked}")
        self.active, self.parked = active, parked
        self.haar = HaarDownsampling(active)
        self.squeeze = Squeeze()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, self.active + self.parked, min_dim=4, even_spatial=True)
        a, logdet = self.haar(x[:, : self.active])
        p, _ = self.squeeze(x[:, self.active :])
        return torch.cat([a, p], dim=1), logdet

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = 4 * self.active
        check_input(self, y, n + 4 * self.parked, min_dim=4, direction="inverse")
        a, logdet = self.haar.inverse(y[:, :n])
        p, _ = self.squeeze.inverse(y[:, n:])
        return torch.cat([a, p], dim=1), logdet

    def extra_repr(self) -> str:
        return f"active={self.active}, parked={self.parked}"


class OnActive(nn.Module):
    """``layer`` on the first ``active`` channels, the ``parked`` ones passed through unchanged.

    ``y = [g(x[:, :n]) | x[:, n:]]``: block diagonal with an identity block, so
    log|det| = that of ``g``; the inverse is ``[g^-1(y[:, :n]) | y[:, n:]]``. Under
    memory-saving backprop the wrapped layer's fast step (if registered) is used on the slice.

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803, sec. 3.6
    (later levels transform only the variables not yet factored out).
    """

    def __init__(self, layer: nn.Module, active: int, parked: int) -> None:
        super().__init__()
        if active < 1 or parked < 1:
            raise ValueError(f"OnActive: active and parked must be >= 1, got {active}, {parked}")
        self.layer = layer
        self.active, self.parked = active, parked

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, x, self.active + self.parked)
        a, logdet = self.layer(x[:, : self.active])
        return torch.cat([a, x[:, self.active :]], dim=1), logdet

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(self, y, self.active + self.parked, direction="inverse")
        a, logdet = self.layer.inverse(y[:, : self.active])
        return torch.cat([a, y[:, self.active :]], dim=1), logdet

    def extra_repr(self) -> str:
        return f"active={self.active}, parked={self.parked}"


def _on_active(layer, out, grad_out, grad_logdet, need_input_grad, direction) -> StepResult:
    """Memory-saving backward step of :class:`OnActive`: the wrapped layer's step (fast if
    registered) on the active slice; the parked slice and its gradient pass through."""
    n = layer.active
    inner = reversible_step(layer.layer, direction)
    x_a, g_a, grads = inner(layer.layer, out[:, :n], grad_out[:, :n], grad_logdet, need_input_grad)
    x = torch.cat([x_a, out[:, n:]], dim=1)
    g = None if g_a is None else torch.cat([g_a, grad_out[:, n:]], dim=1)
    return x, g, grads


def _on_active_forward_step(layer, y, grad_y, grad_logdet, need_input_grad) -> StepResult:
    return _on_active(layer, y, grad_y, grad_logdet, need_input_grad, "forward")


def _on_active_inverse_step(layer, x, grad_x, grad_logdet, need_input_grad) -> StepResult:
    return _on_active(layer, x, grad_x, grad_logdet, need_input_grad, "inverse")


register_reversible_step(OnActive, _on_active_forward_step, _on_active_inverse_step)


def split_sizes(cfg: Any) -> list[int]:
    """Channels leaving the flow after each level but the last: ``split_channels`` each, or
    (``None``) half of the level's channels as Glow; raises ``ValueError`` naming the field."""
    if cfg.levels < 2:
        raise ValueError(
            f"IRNConfig: multiscale needs at least two Haar levels (scale 4 or 8); x{cfg.scale} "
            "has one level, so nothing can leave the flow before the end"
        )
    sizes, active = [], cfg.in_channels
    for level in range(cfg.levels - 1):
        active *= 4
        k = active // 2 if cfg.split_channels is None else cfg.split_channels
        if not 1 <= k <= active - cfg.in_channels:
            raise ValueError(
                f"IRNConfig: split_channels={k} at level {level + 1} must be in "
                f"[1, {active - cfg.in_channels}] ({active} channels, of which the first "
                f"{cfg.in_channels} carry the LR image and stay)"
            )
        sizes.append(k)
        active -= k
    return sizes


def check_multiscale(cfg: Any) -> None:
    """Validate ``multiscale``, ``split_channels`` and ``split_prior`` of an IRNConfig."""
    if not isinstance(cfg.multiscale, bool):
        raise ValueError(f"IRNConfig: multiscale must be a bool, got {cfg.multiscale!r}")
    k = cfg.split_channels
    if k is not None and (not isinstance(k, int) or isinstance(k, bool)):
        raise ValueError(f"IRNConfig: split_channels must be an int or None, got {k!r}")
    if cfg.split_prior not in (None, "normal", "learned"):
        raise ValueError(
            f"IRNConfig: split_prior must be 'normal' or 'learned', got {cfg.split_prior!r}"
        )
    if not cfg.multiscale:
        for name in ("split_channels", "split_prior"):
            if getattr(cfg, name) is not None:
                raise ValueError(
                    f"IRNConfig: {name} applies only with multiscale=True (--multiscale)"
                )
        return
    if cfg.scale == 3:
        raise ValueError(
            "IRNConfig: multiscale needs Haar levels (scale 4 or 8); x3 has one learnable "
            "downsampling, so nothing can leave the flow before the end"
        )
    split_sizes(cfg)


def _level_layers(
    cfg: Any, subnet: SubnetConstructor, active: int, parked: int
) -> list[nn.Module]:
    """One level: the (parked) Haar step and ``blocks_per_level`` couplings on the active
    channels (and an ActNorm after each with ``actnorm``)."""
    layers: list[nn.Module] = [
        HaarDownsampling(active) if parked == 0 else ParkedHaar(active, parked)
    ]
    active, parked = 4 * active, 4 * parked
    for _ in range(cfg.blocks_per_level):
        steps: list[nn.Module] = [
            EnhancedAffineCoupling(
                active,
                cfg.in_channels,
                subnet,
                clamp=cfg.clamp,
                clamp_tightness=cfg.clamp_tightness,
            )
        ]
        if cfg.actnorm:
            steps.append(ActNorm(active))
        layers += steps if parked == 0 else [OnActive(s, active, parked) for s in steps]
    return layers


def multiscale_layers(cfg: Any, subnet: SubnetConstructor) -> list[nn.Module]:
    """The layers of a multi-scale IRN (module docstring): per level a Haar step (active
    channels) with squeeze (parked ones) and the couplings on the active channels; after each
    level but the last ``split_sizes(cfg)[l]`` active channels are parked; with the learned
    prior a :class:`~common.split.SplitPrior` on ``[active | parked]`` ends the flow."""
    sizes = split_sizes(cfg)
    layers: list[nn.Module] = []
    active, parked = cfg.in_channels, 0
    for level in range(cfg.levels):
        layers += _level_layers(cfg, subnet, active, parked)
        active, parked = 4 * active, 4 * parked
        if level < len(sizes):
            active, parked = active - sizes[level], parked + sizes[level]
    if cfg.split_prior == "learned":
        prior = SplitPrior(active + parked, active, zero_conv(3), LEARNED_LOG_STD_BOUND)
        layers.append(prior)
    return layers


LEARNED_LOG_STD_BOUND = 2.0
"""``b`` of the learned prior's soft clamp ``log sigma in (-b, b)`` (module docstring)."""


def learned_prior(model: nn.Module) -> SplitPrior | None:
    """The learned split prior ending ``model``'s flow, or None (plain IRN, normal prior, or a
    flow that is not a sequence of our layers, such as the FrEIA-built IRN of the benchmarks)."""
    ops = getattr(model, "operations", None)
    if not hasattr(ops, "__len__") or len(ops) == 0:
        return None
    last = ops[-1]
    return last if isinstance(last, SplitPrior) else None


def latent_logscale_penalty(model: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``mean_b 2 sum (log sigma(h) + b)`` of the learned prior for ``y = model(x)`` (0 without
    one; ``b`` the prior's ``log_std_bound``, 0 if it has none).

    Added to IRN's ``L_distr = mean_b sum z^2`` it makes the parked part's term twice its
    negative log-likelihood under ``N(mu(h), sigma(h)^2)`` up to a constant (module docstring),
    the same scale as ``sum z^2`` for the ``N(0, I)`` parts, and non-negative when bounded.
    Float32 (float64 for float64 ``y``).
    """
    prior = learned_prior(model)
    if prior is None:
        return y.new_zeros((), dtype=torch.float64 if y.dtype == torch.float64 else torch.float32)
    _, log_std = prior.mean_log_std(y[:, : prior.split])
    log_std = log_std if log_std.dtype == torch.float64 else log_std.float()
    bound = prior.log_std_bound or 0.0
    return 2.0 * sum_except_batch(log_std + bound).mean()


def describe(cfg: Any) -> str:
    """A short description of the split, e.g. ``multiscale (6 leave after level 1; normal)``."""
    sizes = split_sizes(cfg)
    where = ", ".join(f"{k} after level {i + 1}" for i, k in enumerate(sizes))
    return f"multiscale ({where} leave the flow; {cfg.split_prior} prior)"


def active_channels(cfg: Any) -> int:
    """Channels the last level's couplings transform (``C * scale^2`` for plain IRN)."""
    active = cfg.in_channels
    for k in split_sizes(cfg):
        active = 4 * active - k
    return 4 * active
