"""Glow (Kingma & Dhariwal 2018, arXiv:1807.03039) built from the shared invertible core.

A *step of flow* (Glow sec. 3, fig. 2a) is ``ActNorm -> channel mixing -> affine coupling``
(:class:`~common.ActNorm`, :class:`~common.InvConv1x1` or
:class:`~common.conv1x1.ChannelPermutation`, :class:`~common.AffineCoupling`). Two
architectures:

* ``"flat"`` (the dissertation's model for the 8x8 digits, Diss. sec. 3.2): ``K`` steps acting on
  the 64 pixel values as one vector ``[B, 64]`` with a fully connected ReLU coupling network
  (:func:`~common.mlp_subnet`). By default the mixing is a *fixed random permutation*: the
  dissertation's step is "actnorm -> permutation -> coupling" (its fig. 3.1, ``AllInOne``; "we
  randomly permute channels before splitting them at a coupling layer", sec. 3.3), as in FrEIA's
  ``AllInOneBlock`` that it was compared with. It also trained best in ``bench/compare_freia.py``
  (ahead of Glow's LU 1x1 convolution, ``permutation="invconv_lu"``, a learned 64x64 matrix, and
  of FrEIA; numbers in docs/performance.md). The steps are evaluated by
  :class:`~common.fused.FusedFlatFlow` (the same maths with far fewer operations and stacked
  parameters). No 4-D reshapes.
* ``"multiscale"`` (Glow sec. 3 / fig. 2b, after RealNVP; mixing by default Glow's LU-decomposed
  1x1 convolution, sec. 3.2): ``L`` levels of
  ``squeeze -> K steps -> split``. Each split factors out half of the channels with a learned
  Gaussian prior conditioned on the kept half (:class:`~common.split.SplitPrior`); the last level
  has no split and a learned unconditional prior
  (:class:`~common.split.LearnedGaussianPrior`). For ``1x8x8`` digits and ``L = 3``:
  ``1x8x8 -> 4x4x4 (z1: 2x4x4) -> 8x2x2 (z2: 4x2x2) -> 16x1x1 (z3)``.

Latent convention: ``forward`` returns one flat tensor ``z`` of shape ``[B, D]`` (``D = C*H*W``)
that is standard normal under the model. In the multi-scale model ``z`` concatenates the
flattened per-level latents in level order (``latent_shapes``); each is the *standardised*
output of its learned prior, so the learned means and scales are part of the invertible map and
its log-determinant (see ``common/split.py``) and the density is always::

    log p(x) = log N(z; 0, I) + log|det dz/dx|          (Glow sec. 2, eq. 7: change of variables)

Reference: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
NeurIPS 2018, arXiv:1807.03039.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Literal

import torch
from torch import nn

from common.actnorm import ActNorm
from common.config import ConfigError, configclass
from common.conv1x1 import ChannelPermutation, InvConv1x1
from common.coupling import AffineCoupling, SubnetConstructor
from common.fused import FusedFlatFlow
from common.sequential import FlowSequential
from common.split import LearnedGaussianPrior, SplitPrior, zero_conv
from common.squeeze import Squeeze
from common.subnets import conv_subnet, mlp_subnet
from common.utils import zeros_logdet

__all__ = ["ChannelPermutation", "Glow", "GlowConfig", "standard_normal_log_prob"]

Architecture = Literal["flat", "multiscale"]
Permutation = Literal["invconv_lu", "invconv", "shuffle"]
ScaleFn = Literal["sigmoid", "exp"]

# Defaults that depend on the architecture (fields left as None resolve to these).
_FLAT_HIDDEN = 512  # FrEIA's example subnet width, used by the dissertation's comparison
_FLAT_SUBNET_LAYERS = 1  # Linear -> ReLU -> Linear: "a two-layer fully-connected network"
_MULTISCALE_HIDDEN = 64
_MULTISCALE_LEVELS = 3
_MULTISCALE_KERNEL = 3
_EXP_CLAMP = 2.0


@configclass
class GlowConfig:
    """Glow architecture (arXiv:1807.03039); fields left at None take an architecture default."""

    architecture: Architecture = field(
        default="flat",
        metadata={
            "help": "'flat': K steps on the 64 values with fully connected subnets (the "
            "dissertation's digits model); 'multiscale': L levels of squeeze, K steps, split "
            "with a learned prior (Glow sec. 3, fig. 2)."
        },
    )
    in_channels: int = field(default=1, metadata={"help": "Image channels C."})
    image_size: int = field(default=8, metadata={"help": "Image height = width."})
    steps: int = field(
        default=8, metadata={"help": "Steps of flow K (per level when multiscale)."}
    )
    levels: int | None = field(
        default=None,
        metadata={"help": "Levels L, multiscale only (default 3); 2**L must divide image_size."},
    )
    hidden: int | None = field(
        default=None,
        metadata={
            "help": "Coupling subnet width: hidden units (flat, default 512) or channels "
            "(multiscale, default 64)."
        },
    )
    subnet_layers: int | None = field(
        default=None,
        metadata={
            "help": "Hidden ReLU layers of the fully connected subnet, flat only (default 1: "
            "Linear-ReLU-Linear)."
        },
    )
    kernel_size: int | None = field(
        default=None,
        metadata={
            "help": "Kernel of the coupling and prior convolutions, multiscale only (default 3)."
        },
    )
    permutation: Permutation | None = field(
        default=None,
        metadata={
            "help": "Channel mixing in each step: 'shuffle' (a fixed random permutation: the "
            "dissertation's flat 'actnorm -> permutation -> coupling' step, as RealNVP and "
            "FrEIA's AllInOneBlock; default for flat, where it also trains best), "
            "'invconv_lu' (Glow's LU-decomposed 1x1 conv, sec. 3.2; default for multiscale) "
            "or 'invconv' (unconstrained 1x1 conv)."
        },
    )
    scale_fn: ScaleFn = field(
        default="sigmoid",
        metadata={
            "help": "Coupling scale: 'sigmoid' (Glow: sigmoid(h + 2)) or 'exp' "
            "(RealNVP: exp(clamp * tanh(h / clamp)))."
        },
    )
    clamp: float | None = field(
        default=None,
        metadata={"help": "Soft clamp of the log-scale, scale_fn='exp' only (default 2.0)."},
    )
    zero_init: bool = field(
        default=True,
        metadata={"help": "Zero-initialise each subnet's last layer (Glow sec. 3.3)."},
    )

    def __post_init__(self) -> None:
        if self.architecture not in ("flat", "multiscale"):
            raise ConfigError(
                f"must be 'flat' or 'multiscale', got {self.architecture!r}", field="architecture"
            )
        if self.permutation is None:
            self.permutation = "shuffle" if self.architecture == "flat" else "invconv_lu"
        if self.permutation not in ("invconv_lu", "invconv", "shuffle"):
            raise ConfigError(
                f"must be 'invconv_lu', 'invconv' or 'shuffle', got {self.permutation!r}",
                field="permutation",
            )
        if self.scale_fn not in ("sigmoid", "exp"):
            raise ConfigError(
                f"must be 'sigmoid' or 'exp', got {self.scale_fn!r}", field="scale_fn"
            )
        for name in ("in_channels", "image_size", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"must be an int >= 1, got {value!r}", field=name)
        self._only("multiscale", "levels", "kernel_size")
        self._only("flat", "subnet_layers")
        if self.clamp is not None and self.scale_fn != "exp":
            raise ConfigError("only applies with scale_fn='exp'", field="clamp")

        if self.architecture == "flat":
            if self.num_dims < 2:
                raise ConfigError(
                    f"a flat flow needs at least 2 values, got {self.num_dims}", field="image_size"
                )
            self.hidden = _FLAT_HIDDEN if self.hidden is None else self.hidden
            if self.subnet_layers is None:
                self.subnet_layers = _FLAT_SUBNET_LAYERS
            self._positive("subnet_layers")
        else:
            self.hidden = _MULTISCALE_HIDDEN if self.hidden is None else self.hidden
            self.levels = _MULTISCALE_LEVELS if self.levels is None else self.levels
            self.kernel_size = _MULTISCALE_KERNEL if self.kernel_size is None else self.kernel_size
            self._positive("levels")
            if self.kernel_size < 1 or self.kernel_size % 2 == 0:
                raise ConfigError(
                    f"must be a positive odd int, got {self.kernel_size}", field="kernel_size"
                )
            if self.image_size % (2**self.levels):
                raise ConfigError(
                    f"image_size {self.image_size} is not divisible by 2**levels = "
                    f"{2**self.levels}; each level squeezes 2x2 pixels into channels",
                    field="levels",
                )
        self._positive("hidden")
        if self.scale_fn == "exp":
            self.clamp = _EXP_CLAMP if self.clamp is None else float(self.clamp)
            if not self.clamp > 0:
                raise ConfigError(f"must be > 0, got {self.clamp}", field="clamp")

    def _only(self, architecture: str, *names: str) -> None:
        for name in names:
            if getattr(self, name) is not None and self.architecture != architecture:
                raise ConfigError(
                    f"only applies to architecture='{architecture}' "
                    f"(this config is '{self.architecture}')",
                    field=name,
                )

    def _positive(self, name: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"must be an int >= 1, got {value!r}", field=name)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def num_dims(self) -> int:
        return self.in_channels * self.image_size * self.image_size


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over all but the batch dimension: ``[B, ...] -> [B]``."""
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * (flat * flat).sum(dim=1) - 0.5 * flat.shape[1] * math.log(2.0 * math.pi)


class Glow(nn.Module):
    """Glow: steps of (ActNorm -> permutation or 1x1 conv -> affine coupling), flat or multi-scale.

    ``z, logdet = model(x)`` maps images ``[B, C, H, W]`` (or already flattened ``[B, C*H*W]``)
    to a flat latent ``z`` of shape ``[B, D]`` with ``logdet = log|det dz/dx|`` (``[B]``);
    ``x, logdet_inv = model.inverse(z)`` returns images ``[B, C, H, W]``. The prior on ``z`` is
    ``N(0, I)`` (learned priors are folded into the map, module docstring), so
    ``log_prob(x) = log N(z; 0, I) + logdet`` (Glow sec. 2, eq. 7) in nats of the continuous
    ``x``. Data-dependent ActNorm initialisation (Glow sec. 3.1) happens on the first forward
    pass in training mode, or explicitly with :meth:`initialize`.

    The flat model's ``flow`` is a :class:`~common.fused.FusedFlatFlow` built from the ordinary
    layers (the same initial values); ``model.flow.to_layers()`` is the equivalent
    layer-by-layer ``FlowSequential`` (it may replace ``model.flow``), and flat checkpoints
    saved with that layout load unchanged.

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, sec. 3, fig. 2, Table 1.
    """

    def __init__(self, config: GlowConfig | None = None) -> None:
        super().__init__()
        self.config = config = GlowConfig() if config is None else config
        self.input_shape = config.input_shape
        self.num_dims = config.num_dims
        # (channels, height, width) of each latent in z, in order.
        self.latent_shapes: list[tuple[int, int, int]] = []
        if config.architecture == "flat":
            subnet = mlp_subnet(config.hidden, config.subnet_layers, config.zero_init)
            self.flow = FusedFlatFlow.from_layers(self._steps(self.num_dims, subnet))
            self.latent_shapes.append((self.num_dims, 1, 1))
            self.levels = None
        else:
            self.flow = None
            self.levels = nn.ModuleList(self._build_levels(config))

    def _permutation(self, channels: int) -> nn.Module:
        if self.config.permutation == "shuffle":
            return ChannelPermutation(channels)
        return InvConv1x1(channels, lu=self.config.permutation == "invconv_lu")

    def _steps(self, channels: int, subnet: SubnetConstructor) -> list[nn.Module]:
        cfg = self.config
        clamp = {} if cfg.clamp is None else {"clamp": cfg.clamp}
        layers: list[nn.Module] = []
        for _ in range(cfg.steps):
            layers += [
                ActNorm(channels),
                self._permutation(channels),
                AffineCoupling(channels, subnet, scale_fn=cfg.scale_fn, **clamp),
            ]
        return layers

    def _build_levels(self, cfg: GlowConfig) -> list[FlowSequential]:
        subnet = conv_subnet(cfg.hidden, cfg.kernel_size, cfg.zero_init)
        channels, size = cfg.in_channels, cfg.image_size
        levels = []
        for index in range(cfg.levels):
            channels, size = 4 * channels, size // 2
            layers: list[nn.Module] = [Squeeze(), *self._steps(channels, subnet)]
            if index < cfg.levels - 1:
                split = SplitPrior(channels, prior_constructor=zero_conv(cfg.kernel_size))
                layers.append(split)
                self.latent_shapes.append((channels - split.split, size, size))
                channels = split.split
            else:
                layers.append(LearnedGaussianPrior(channels))
                self.latent_shapes.append((channels, size, size))
            levels.append(FlowSequential(*layers))
        return levels

    # -- shapes -------------------------------------------------------------------------------

    def _check_batch(self, x: torch.Tensor, what: str, shapes: tuple[tuple[int, ...], ...]):
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) not in shapes:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            want = " or ".join(str(("B", *s)) for s in shapes)
            raise ValueError(f"Glow.{what}: expected shape {want}, got {got}")

    # -- the invertible map -------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, C, H, W]`` or ``[B, C*H*W]`` -> ``(z [B, D], log|det dz/dx| [B])``."""
        self._check_batch(x, "forward", (self.input_shape, (self.num_dims,)))
        batch = x.shape[0]
        if self.flow is not None:
            return self.flow(x.reshape(batch, self.num_dims))
        h = x.reshape(batch, *self.input_shape)
        logdet = zeros_logdet(h)
        latents = []
        last = len(self.levels) - 1
        for index, level in enumerate(self.levels):
            y, ld = level(h)
            logdet = logdet + ld
            if index < last:
                keep = y.shape[1] - self.latent_shapes[index][0]
                latents.append(y[:, keep:].reshape(batch, -1))
                h = y[:, :keep]
            else:
                latents.append(y.reshape(batch, -1))
        return torch.cat(latents, dim=1), logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` ``[B, D]`` -> ``(x [B, C, H, W], log|det dx/dz| [B])``, exact inverse."""
        self._check_batch(z, "inverse", ((self.num_dims,),))
        batch = z.shape[0]
        if self.flow is not None:
            x, logdet = self.flow.inverse(z)
            return x.reshape(batch, *self.input_shape), logdet
        sizes = [math.prod(shape) for shape in self.latent_shapes]
        parts = torch.split(z, sizes, dim=1)
        logdet = zeros_logdet(z)
        h = None
        for index in reversed(range(len(self.levels))):
            part = parts[index].reshape(batch, *self.latent_shapes[index])
            y = part if h is None else torch.cat([h, part], dim=1)
            h, ld = self.levels[index].inverse(y)
            logdet = logdet + ld
        return h, logdet

    # -- density and sampling -----------------------------------------------------------------

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` in nats per image ``[B]`` of the continuous ``x`` (Glow eq. 7)."""
        z, logdet = self(x)
        return standard_normal_log_prob(z) + logdet

    def sample_latent(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``z ~ N(0, T^2 I)``, shape ``[n, D]``, drawn on the CPU from ``generator``.

        Scaling the standardised latent by ``T`` is Glow's reduced-temperature sampling
        (sec. 6): every learned prior becomes ``N(mu, (T sigma)^2)``.
        """
        if n < 1:
            raise ValueError(f"Glow.sample: n must be >= 1, got {n}")
        if not temperature >= 0:
            raise ValueError(f"Glow.sample: temperature must be >= 0, got {temperature}")
        param = next(self.parameters())
        z = torch.randn(n, self.num_dims, generator=generator, dtype=param.dtype)
        return (z * temperature).to(param.device)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` images ``[n, C, H, W]``: ``inverse(sample_latent(n, temperature, generator))``."""
        x, _ = self.inverse(self.sample_latent(n, temperature, generator))
        return x

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent ActNorm initialisation from the batch ``x`` (Glow sec. 3.1).

        Runs one forward pass in training mode; each ActNorm not yet initialised sets its
        bias/scale so that its output on ``x`` has zero mean and unit variance per channel.
        """
        was_training = self.training
        self.train()
        self(x)
        self.train(was_training)
