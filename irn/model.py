"""The Invertible Rescaling Network (IRN): its configuration and the model.

``IRN`` is one invertible map ``f: x_HR -> (y_LR, z)`` (Xiao et al., "Invertible Image
Rescaling", ECCV 2020, arXiv:2005.05650, sec. 3.1-3.2): downscaling is ``f`` (keep the first
``C`` channels, quantise them), upscaling is ``f^-1`` applied to the LR image and a latent
``z ~ N(0, I)``. Losses (sec. 3.3, eq. 5-9) live with the training code, not here.

Usage::

    model = IRN(IRNConfig(scale=4))
    y, logdet = model(hr)                # y[:, :3] the LR, y[:, 3:] z
    lr = model.downscale(hr)             # 8-bit LR, straight-through gradient
    sr = model.upscale(lr)               # z ~ N(0, 1); temperature=0 gives z = 0

Checkpoints (ours and the authors' released weights) are read and written by
``irn/checkpoints.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from common.actnorm import ActNorm
from common.coupling import EnhancedAffineCoupling, SubnetConstructor
from common.downsampling import ConvDownsampling
from common.haar import HaarDownsampling
from common.quantize import quantize_ste
from common.sequential import FlowSequential
from common.subnets import dense_block
from irn.multiscale import check_multiscale, multiscale_layers

__all__ = ["IRNConfig", "IRN"]

SCALES = (2, 3, 4, 8)
# The authors' choice of couplings after each downsampling (IRN, ECCV 2020, sec. 4.1).
DEFAULT_BLOCKS = {2: 8, 3: 12, 4: 8, 8: 8}


def clamp_field() -> Any:
    """The coupling clamp field, shared by :class:`IRNConfig` and IRN-Color's config."""
    return field(
        default=1.0,
        metadata={"help": "Coupling soft clamp: the log-scale s stays in (-clamp, clamp)."},
    )


def gc_field() -> Any:
    """The dense-block growth-channels field (shared with IRN-Color's config)."""
    return field(
        default=32, metadata={"help": "Growth channels of the dense-block subnet (authors: 32)."}
    )


def init_field() -> Any:
    """The subnet-initialisation field (shared with IRN-Color's config)."""
    return field(
        default="xavier",
        metadata={
            "help": "Init of the subnets' first four convs (scaled by 0.1); the last conv is "
            "always zero so every coupling starts as the identity."
        },
    )


def check_coupling_fields(cfg: Any) -> None:
    """Validate the coupling fields a config shares with :class:`IRNConfig` (``clamp``,
    ``clamp_tightness``, ``gc``, ``init``); the error names the config class and the field."""
    what = type(cfg).__name__
    for name in ("clamp", "clamp_tightness"):
        value = getattr(cfg, name)
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(f"{what}: {name} must be a finite number > 0, got {value!r}")
    if not isinstance(cfg.gc, int) or isinstance(cfg.gc, bool) or cfg.gc < 1:
        raise ValueError(f"{what}: gc must be an int >= 1, got {cfg.gc!r}")
    if cfg.init not in ("xavier", "kaiming"):
        raise ValueError(f"{what}: init must be 'xavier' or 'kaiming', got {cfg.init!r}")


@dataclass
class IRNConfig:
    """Architecture of an :class:`IRN`; the defaults are the authors' (ECCV 2020, sec. 4.1)."""

    scale: Literal[2, 3, 4, 8] = field(
        default=4,
        metadata={
            "help": "Rescaling factor: 2, 4, 8 (log2(scale) Haar levels) or 3 (one learnable "
            "3x3 ConvDownsampling, IJCV 2022)."
        },
    )
    blocks_per_level: int | None = field(
        default=None,
        metadata={
            "help": "Enhanced affine couplings after each downsampling; none = the authors' "
            "choice, 8 per level for x2/x4/x8 and 12 for x3."
        },
    )
    clamp: float = clamp_field()
    clamp_tightness: float = field(
        default=1.0,
        metadata={
            "help": "Steepness t of the clamp clamp*(2*sigmoid(t*u)-1); 1 = the authors' IRN, "
            "2 = the dissertation's IRN-2T."
        },
    )
    subnet: Literal["dbnet"] = field(
        default="dbnet",
        metadata={"help": "Coupling subnet F, G, H: 'dbnet' = the authors' 5-conv dense block."},
    )
    gc: int = gc_field()
    init: Literal["xavier", "kaiming"] = init_field()
    in_channels: int = field(
        default=3, metadata={"help": "Image channels (3 = RGB); also the coupling split."}
    )
    actnorm: bool = field(
        default=False,
        metadata={
            "help": "Dissertation option (appendix A.1): an ActNorm (Glow sec. 3.1, "
            "data-dependent init on the first training batch) after each coupling. Off in the "
            "authors' IRN."
        },
    )

    multiscale: bool = field(
        default=False,
        metadata={
            "help": "Multi-scale IRN (irn/multiscale.py, docs/multiscale.md): after each level "
            "but the last, --split-channels high-frequency channels leave the flow as a latent "
            "part (RealNVP/Glow's split); later levels transform the rest. x4 and x8 only."
        },
    )
    split_channels: int | None = field(
        default=None,
        metadata={
            "help": "With --multiscale: channels leaving after each level; none = half of the "
            "level's channels (Glow)."
        },
    )
    split_prior: Literal["normal", "learned"] | None = field(
        default=None,
        metadata={
            "help": "With --multiscale: prior of the parts that leave early, 'normal' (N(0, I); "
            "the default) or 'learned' (Glow's conditional Gaussian given the channels that "
            "stay)."
        },
    )

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.scale) or self.scale not in SCALES:
            raise ValueError(f"IRNConfig: scale must be one of 2, 3, 4, 8, got {self.scale!r}")
        if self.blocks_per_level is None:
            self.blocks_per_level = DEFAULT_BLOCKS[self.scale]
        if not is_int(self.blocks_per_level) or self.blocks_per_level < 1:
            raise ValueError(
                f"IRNConfig: blocks_per_level must be an int >= 1, got {self.blocks_per_level!r}"
            )
        check_coupling_fields(self)
        if self.subnet != "dbnet":
            raise ValueError(f"IRNConfig: subnet must be 'dbnet', got {self.subnet!r}")
        if not isinstance(self.actnorm, bool):
            raise ValueError(f"IRNConfig: actnorm must be a bool, got {self.actnorm!r}")
        if not is_int(self.in_channels) or self.in_channels < 1:
            raise ValueError(
                f"IRNConfig: in_channels must be an int >= 1, got {self.in_channels!r}"
            )
        if self.multiscale and self.split_prior is None:
            self.split_prior = "normal"
        check_multiscale(self)

    @property
    def levels(self) -> int:
        """Number of downsampling stages: log2(scale) Haar levels, or 1 for x3."""
        return 1 if self.scale == 3 else int(math.log2(self.scale))


def _subnet_constructor(cfg: IRNConfig) -> SubnetConstructor:
    if cfg.subnet == "dbnet":
        return dense_block(gc=cfg.gc, init=cfg.init)
    raise ValueError(f"IRNConfig: unknown subnet {cfg.subnet!r}")  # pragma: no cover


def _irn_layers(cfg: IRNConfig, subnet: SubnetConstructor) -> list[nn.Module]:
    """The authors' layers: per level a Haar step (or x3's ConvDownsampling) and
    ``blocks_per_level`` couplings on every channel (IRN sec. 3.2)."""
    split = cfg.in_channels
    channels = cfg.in_channels
    layers: list[nn.Module] = []
    for _ in range(cfg.levels):
        if cfg.scale == 3:
            layers.append(ConvDownsampling(channels, factor=3))
            channels *= 9
        else:
            layers.append(HaarDownsampling(channels))
            channels *= 4
        for _ in range(cfg.blocks_per_level):
            layers.append(
                EnhancedAffineCoupling(
                    channels,
                    split,
                    subnet,
                    clamp=cfg.clamp,
                    clamp_tightness=cfg.clamp_tightness,
                )
            )
            if cfg.actnorm:
                layers.append(ActNorm(channels))
    return layers


class IRN(nn.Module):
    """Invertible Rescaling Network: ``x_HR -> (y_LR, z)`` and back.

    Structure (IRN, ECCV 2020, sec. 3.2; docs/method.md, "The network"), ``C = in_channels``:

    * x2, x4, x8: ``log2(scale)`` levels, each a :class:`~common.haar.HaarDownsampling`
      (``C_l -> 4 C_l`` channels, half the size) followed by ``blocks_per_level``
      :class:`~common.coupling.EnhancedAffineCoupling` layers (IRN sec. 3.2) splitting the channels
      into the first ``C`` (the LR branch) and the rest.
    * x3 (IJCV 2022, arXiv:2210.04188): one learnable
      :class:`~common.downsampling.ConvDownsampling` (``C -> 9 C`` channels, a third of the size)
      followed by ``blocks_per_level`` (default 12) couplings.

    The layers sit in ``self.operations`` (a :class:`~common.sequential.FlowSequential`), so
    ``state_dict`` keys are the authors' ``operations.{i}.F.conv1.weight`` ... without their
    ``operations.{i}.haar_weights`` entries (our Haar transform is closed form; see
    :func:`to_authors_state_dict` / :func:`load_authors_checkpoint`).

    ``IRNConfig(multiscale=True)`` (x4, x8) builds the multi-scale variant of
    :mod:`irn.multiscale` instead: after each level but the last, ``split_channels`` channels
    leave the flow (RealNVP/Glow's split) and later couplings act on the rest; ``y`` has the same
    shape and meaning, so everything that takes an IRN takes it.

    ``IRNConfig(actnorm=True)`` (the dissertation's option, appendix A.1) adds a
    :class:`~common.actnorm.ActNorm` after every coupling; such a model has no authors' layout.

    ``y, logdet = model(x)``: ``y`` is ``[B, C*scale^2, H/scale, W/scale]`` with ``y[:, :C]``
    the (unquantised) LR image and ``y[:, C:]`` the latent ``z``; ``logdet`` ``[B]`` is
    log|det df/dx|. ``x, logdet = model.inverse(y)`` is the exact inverse.

    ``memory_saving=True`` (also settable later as ``model.memory_saving``) trains with
    memory-saving backpropagation (:mod:`common.memsave`; Gomez et al., "The Reversible Residual
    Network", NeurIPS 2017): ``forward`` and ``inverse`` keep only their outputs and the backward
    pass recomputes every layer's input with its exact inverse, so activation memory no longer
    grows with the number of couplings. Values and gradients are those of the ordinary mode (up
    to the round-off of the reconstruction); it is an execution choice, not part of the
    architecture, so it is not an :class:`IRNConfig` field and does not change the state_dict.

    Reference: Xiao et al., "Invertible Image Rescaling", ECCV 2020, arXiv:2005.05650.
    """

    def __init__(self, config: IRNConfig | None = None, memory_saving: bool = False) -> None:
        super().__init__()
        cfg = IRNConfig() if config is None else config
        if not isinstance(cfg, IRNConfig):
            raise ValueError(f"IRN: config must be an IRNConfig, got {type(cfg).__name__}")
        self.config = cfg
        subnet = _subnet_constructor(cfg)
        layers = multiscale_layers(cfg, subnet) if cfg.multiscale else _irn_layers(cfg, subnet)
        self.operations = FlowSequential(*layers, memory_saving=memory_saving)

    @property
    def memory_saving(self) -> bool:
        """Memory-saving backpropagation through ``forward`` and ``inverse`` (see the class)."""
        return self.operations.memory_saving

    @memory_saving.setter
    def memory_saving(self, enabled: bool) -> None:
        self.operations.memory_saving = bool(enabled)

    # -- shapes ---------------------------------------------------------------------------------

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def out_channels(self) -> int:
        """Channels of ``y = f(x)``: ``C * scale^2`` (LR and z together)."""
        return self.in_channels * self.scale**2

    @property
    def z_channels(self) -> int:
        """Channels of the latent ``z``: ``C * (scale^2 - 1)`` (9 for x2, 45 for x4 RGB)."""
        return self.out_channels - self.in_channels

    def z_shape(
        self, lr: torch.Tensor | tuple[int, ...] | torch.Size
    ) -> tuple[int, int, int, int]:
        """Shape of ``z`` for an LR batch (a tensor or its shape ``[B, C, h, w]``)."""
        shape = tuple(lr.shape) if isinstance(lr, torch.Tensor) else tuple(lr)
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(
                f"{self._name}: expected an LR shape [B, {self.in_channels}, h, w], got {shape}"
            )
        b, _, h, w = shape
        return (b, self.z_channels, h, w)

    @property
    def _name(self) -> str:
        return f"IRN(x{self.scale})"

    def _check(self, x: Any, channels: int, what: str, divisible: bool) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                f"{self._name}: {what} must be a torch.Tensor, got {type(x).__name__}"
            )
        s = self.scale
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(
                f"{self._name}: expected {what} of shape [B, {channels}, H, W], "
                f"got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if divisible and (h % s or w % s or h == 0 or w == 0):
            raise ValueError(
                f"{self._name}: {what} height and width must be positive multiples of the scale "
                f"{s}, got shape {tuple(x.shape)}; crop the image to a multiple of {s} first"
            )

    # -- the invertible map ---------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y, logdet = f(x)``: HR ``[B, C, H, W]`` -> ``[B, C*s^2, H/s, W/s]`` and ``[B]``."""
        self._check(x, self.in_channels, "the HR input", divisible=True)
        return self.operations(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, logdet = f^-1(y)`` with ``y = cat(lr, z)``; ``logdet`` is that of ``f^-1``."""
        self._check(y, self.out_channels, "y = cat(lr, z)", divisible=False)
        return self.operations.inverse(y)

    # -- rescaling helpers ----------------------------------------------------------------------

    def encode(self, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr, z)`` = the two parts of ``f(hr)``; ``lr`` is **not** quantised."""
        y, _ = self(hr)
        return y[:, : self.in_channels], y[:, self.in_channels :]

    def downscale(self, hr: torch.Tensor) -> torch.Tensor:
        """The 8-bit LR image ``Quant(f(hr)[:, :C])`` (IRN, ECCV 2020, sec. 3.3; docs/method.md).

        Quantised by :func:`~common.quantize.quantize_ste` (clamp to [0, 1], round to 1/255,
        straight-through gradient), so it can be used in training; float32 (or float64).
        """
        lr, _ = self.encode(hr)
        return quantize_ste(lr)

    def upscale(
        self,
        lr: torch.Tensor,
        z: torch.Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """HR image ``f^-1(cat(lr, z))`` (IRN sec. 3.1: upscaling with a sampled latent).

        Args:
            lr: ``[B, C, h, w]`` LR image, used as given (quantise it first if it should be 8-bit;
                :meth:`downscale` does).
            z: ``[B, z_channels, h, w]`` latent; when None, ``z ~ N(0, temperature^2 I)`` is drawn
                with ``generator`` (the authors' ``gaussian_scale``).
            temperature: standard deviation of the sampled ``z``; 0 gives ``z = 0`` (the "mean"
                upscaling, deterministic). Only for sampled ``z``: passing ``z`` together with a
                temperature other than 1 is refused rather than silently ignored.
            generator: random generator for ``z`` (reproducible sampling).
        """
        self._check(lr, self.in_channels, "lr", divisible=False)
        if not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise ValueError(f"{self._name}.upscale: temperature must be >= 0, got {temperature}")
        shape = self.z_shape(lr)
        if z is None:
            if temperature == 0:
                z = lr.new_zeros(shape)
            else:
                z = torch.randn(shape, generator=generator, dtype=lr.dtype, device=lr.device)
                z = z * temperature
        else:
            if temperature != 1.0:
                raise ValueError(
                    f"{self._name}.upscale: temperature={temperature} applies only to a sampled "
                    "z; scale the given z yourself"
                )
            if not isinstance(z, torch.Tensor) or tuple(z.shape) != shape:
                got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise ValueError(
                    f"{self._name}.upscale: z must have shape {shape} for lr of shape "
                    f"{tuple(lr.shape)}, got {got}"
                )
        hr, _ = self.inverse(torch.cat([lr, z.to(lr.dtype)], dim=1))
        return hr
