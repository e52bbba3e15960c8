"""The Invertible Rescaling Network (IRN) and compatibility with the authors' checkpoints.

``IRN`` is one invertible map ``f: x_HR -> (y_LR, z)`` (Xiao et al., "Invertible Image
Rescaling", ECCV 2020, arXiv:2005.05650, sec. 3.1-3.2): downscaling is ``f`` (keep the first
``C`` channels, quantise them), upscaling is ``f^-1`` applied to the LR image and a latent
``z ~ N(0, I)``. Losses (sec. 3.3, eq. 5-9) live with the training code, not here.

Usage::

    model = IRN(IRNConfig(scale=4))
    y, logdet = model(hr)                # y[:, :3] the LR, y[:, 3:] z
    lr = model.downscale(hr)             # 8-bit LR, straight-through gradient
    sr = model.upscale(lr)               # z ~ N(0, 1); temperature=0 gives z = 0
    model = load_authors_checkpoint("IRN_x4.pth")   # the authors' released weights
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from common.actnorm import ActNorm
from common.coupling import EnhancedAffineCoupling, SubnetConstructor
from common.downsampling import ConvDownsampling
from common.haar import HaarDownsampling, haar_kernel
from common.quantize import quantize_ste
from common.sequential import FlowSequential
from common.subnets import dense_block

__all__ = ["IRNConfig", "IRN", "load_authors_checkpoint", "to_authors_state_dict"]

SCALES = (2, 3, 4, 8)
# The authors' choice of couplings after each downsampling (SPEC sec. 2).
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
    """Architecture of an :class:`IRN`; the defaults are the authors' (SPEC sec. 2)."""

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

    @property
    def levels(self) -> int:
        """Number of downsampling stages: log2(scale) Haar levels, or 1 for x3."""
        return 1 if self.scale == 3 else int(math.log2(self.scale))


def _subnet_constructor(cfg: IRNConfig) -> SubnetConstructor:
    if cfg.subnet == "dbnet":
        return dense_block(gc=cfg.gc, init=cfg.init)
    raise ValueError(f"IRNConfig: unknown subnet {cfg.subnet!r}")  # pragma: no cover


class IRN(nn.Module):
    """Invertible Rescaling Network: ``x_HR -> (y_LR, z)`` and back.

    Structure (IRN sec. 3.2; SPEC sec. 2), ``C = in_channels``:

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
        """The 8-bit LR image ``Quant(f(hr)[:, :C])`` (IRN sec. 3.3, SPEC sec. 3-4).

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


# ---------------------------------------------------------------------------------------------
# The authors' checkpoint layout
# ---------------------------------------------------------------------------------------------

_AUTHORS_KEY = re.compile(
    r"^operations\.(\d+)\.(?:(haar_weights)|([FGH])\.conv([1-5])\.(weight|bias))$"
)
_LAYOUT = (
    "the authors' InvRescaleNet layout: operations.{i}.haar_weights (Haar levels) and "
    "operations.{i}.{F,G,H}.conv{1..5}.{weight,bias} (couplings)"
)


def to_authors_state_dict(model: IRN) -> OrderedDict[str, torch.Tensor]:
    """``model``'s weights in the authors' key layout, with their fixed ``haar_weights`` inserted.

    The result loads into the authors' ``InvRescaleNet`` and back through
    :func:`load_authors_checkpoint`. Tensors are shared with the model (as ``state_dict()``).
    Refused for x3 (no Haar layout) and for a clamp the authors' code cannot express.
    """
    if not isinstance(model, IRN):
        raise ValueError(f"to_authors_state_dict: expected an IRN, got {type(model).__name__}")
    cfg = model.config
    if cfg.scale == 3:
        raise ValueError(
            "to_authors_state_dict: IRN(x3) uses a learnable ConvDownsampling; only the Haar "
            "models (x2, x4, x8) have the authors' checkpoint layout"
        )
    if cfg.actnorm:
        raise ValueError(
            "to_authors_state_dict: this model has ActNorm layers (actnorm=True), which the "
            "authors' InvRescaleNet does not have"
        )
    if cfg.clamp != 1.0 or cfg.clamp_tightness != 1.0:
        raise ValueError(
            f"to_authors_state_dict: the authors' code fixes clamp=1 and clamp_tightness=1, "
            f"this model has clamp={cfg.clamp}, clamp_tightness={cfg.clamp_tightness}"
        )
    ref = next(model.parameters())
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i, op in enumerate(model.operations):
        if isinstance(op, HaarDownsampling):
            kernel = haar_kernel(op.channels).to(dtype=ref.dtype, device=ref.device)
            out[f"operations.{i}.haar_weights"] = kernel
        else:
            for name, tensor in op.state_dict().items():
                out[f"operations.{i}.{name}"] = tensor
    return out


def _read(source: Any, map_location: Any) -> tuple[Mapping[str, Any], str]:
    """The raw mapping and a name for messages, from a path or a mapping."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ValueError(f"{name}: no such checkpoint file")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(
                f"{name}: cannot be read as a PyTorch checkpoint with "
                f"torch.load(weights_only=True) ({type(err).__name__}: {first}); expected a "
                f"state_dict in {_LAYOUT}"
            ) from err
    elif isinstance(source, Mapping):
        obj, name = source, "state_dict argument"
    else:
        raise ValueError(
            "load_authors_checkpoint: expected a file path or a state_dict, "
            f"got {type(source).__name__}"
        )
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{name}: expected a state_dict (a dict of tensors), got {type(obj).__name__}"
        )
    return obj, name


def _unwrap(obj: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
    """The state_dict inside ``obj``, ``module.`` prefixes (DataParallel) stripped."""
    if not obj:
        raise ValueError(f"{name}: empty checkpoint; expected a state_dict in {_LAYOUT}")
    sd = obj
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                sd = obj[key]
                break
        else:
            raise ValueError(
                f"{name}: not a state_dict (some values are not tensors) and no 'state_dict' or "
                f"'model' entry holding one; top-level keys: {sorted(map(str, obj))[:10]}"
            )
        name = f"{name}[{key!r}]"
    if not sd:
        raise ValueError(f"{name}: empty state_dict; expected {_LAYOUT}")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{name}: entries that are not tensors: {bad[:5]}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _infer_config(sd: Mapping[str, torch.Tensor], name: str) -> IRNConfig:
    """Scale, couplings per level, channels and growth from the keys and shapes."""
    unknown = [k for k in sd if not _AUTHORS_KEY.match(k)]
    if unknown:
        raise ValueError(
            f"{name}: not an IRN checkpoint in the authors' layout: {len(unknown)} unexpected "
            f"key(s), e.g. {unknown[:5]}; expected only {_LAYOUT}"
        )
    ops: dict[int, set[str]] = {}
    for key in sd:
        index, rest = key.split(".", 2)[1:]
        ops.setdefault(int(index), set()).add(rest)
    haar = sorted(i for i, names in ops.items() if "haar_weights" in names)
    if not haar:
        raise ValueError(
            f"{name}: no operations.{{i}}.haar_weights entry; expected {_LAYOUT}. (This project's "
            "own IRN checkpoints omit them: rebuild with IRN(IRNConfig(**ckpt['config'])) and "
            "load_state_dict instead; x3 models have no authors' layout here.)"
        )
    n_ops = max(ops) + 1
    absent = [i for i in range(n_ops) if i not in ops]
    if absent:
        raise ValueError(
            f"{name}: missing every key of operation(s) {absent[:5]} (expected "
            f"operations.{{i}}.haar_weights or operations.{{i}}.F/G/H.conv1..5 for each i "
            f"in 0..{n_ops - 1})"
        )
    mixed = [i for i in haar if len(ops[i]) > 1]
    if mixed:
        raise ValueError(f"{name}: operations.{mixed[0]} holds both haar_weights and a coupling")
    if haar[0] != 0:
        raise ValueError(f"{name}: expected operations.0.haar_weights (the first Haar level)")
    if len(haar) > 3:
        raise ValueError(
            f"{name}: {len(haar)} Haar levels (x{2 ** len(haar)}); supported: 1, 2, 3 (x2, x4, x8)"
        )
    bounds = [*haar, n_ops]
    per_level = [bounds[j + 1] - bounds[j] - 1 for j in range(len(haar))]
    if len(set(per_level)) != 1 or per_level[0] < 1:
        raise ValueError(
            f"{name}: couplings after each Haar level are {per_level}; expected the same "
            "number (>= 1) at every level"
        )
    first = sd["operations.0.haar_weights"]
    if first.dim() != 4 or first.shape[0] % 4 or tuple(first.shape[1:]) != (1, 2, 2):
        raise ValueError(
            f"{name}: operations.0.haar_weights has shape {tuple(first.shape)}; expected "
            "[4*C, 1, 2, 2]"
        )
    in_channels = first.shape[0] // 4
    for level, i in enumerate(haar):
        key = f"operations.{i}.haar_weights"
        expected = haar_kernel(in_channels * 4**level)
        got = sd[key]
        if tuple(got.shape) != tuple(expected.shape):
            raise ValueError(
                f"{name}: {key} has shape {tuple(got.shape)}; expected {tuple(expected.shape)} "
                f"at Haar level {level}"
            )
        if not torch.equal(got.detach().to("cpu", torch.float32), expected):
            raise ValueError(
                f"{name}: {key} is not the canonical Haar kernel (common.haar_kernel"
                f"({in_channels * 4**level})); refusing a modified Haar transform"
            )
    growth = [v.shape[0] for k, v in sd.items() if re.search(r"\.conv[1-4]\.weight$", k)]
    if not growth:
        raise ValueError(f"{name}: no coupling convolution weights found; expected {_LAYOUT}")
    return IRNConfig(
        scale=2 ** len(haar),
        blocks_per_level=per_level[0],
        gc=int(growth[0]),
        in_channels=int(in_channels),
    )


def load_authors_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any], map_location: Any = "cpu"
) -> IRN:
    """Build an :class:`IRN` from the IRN authors' released weights (x2, x4, x8).

    Accepts a file path (read with ``torch.load(..., weights_only=True)``), a state_dict, or a
    dict holding one under ``"state_dict"`` or ``"model"``. A ``module.`` prefix (DataParallel)
    is stripped. The scale and couplings per level are inferred from the positions of the
    ``operations.{i}.haar_weights`` entries, the channel count from their shapes and the
    subnet growth from the convolution shapes; every ``haar_weights`` must equal the canonical
    :func:`~common.haar.haar_kernel`. Unknown, missing, misshapen, non-finite or non-float
    entries are refused with a ``ValueError`` naming the source and what was expected.
    ``clamp`` and ``clamp_tightness`` are not stored by the authors and take their value 1.

    Returns:
        The model in eval mode (moved to ``map_location`` when it is a device or a string).
    """
    obj, name = _read(path_or_state_dict, map_location)
    sd = _unwrap(obj, name)
    cfg = _infer_config(sd, name)
    model = IRN(cfg)
    expected = to_authors_state_dict(model)
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ValueError(
            f"{name}: {len(missing)} missing key(s) for an IRN x{cfg.scale} with "
            f"{cfg.blocks_per_level} couplings per level: {missing[:5]}"
        )
    extra = [k for k in sd if k not in expected]
    if extra:  # pragma: no cover - excluded by the key pattern and the structure checks
        raise ValueError(f"{name}: unexpected key(s) {extra[:5]}")
    wrong = [
        f"{k}: {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if tuple(sd[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError(
            f"{name}: {len(wrong)} tensor(s) with the wrong shape for an IRN x{cfg.scale} "
            f"(in_channels={cfg.in_channels}, gc={cfg.gc}): {wrong[:3]}"
        )
    not_float = [k for k, v in sd.items() if not v.is_floating_point()]
    if not_float:
        raise ValueError(f"{name}: non-floating-point tensors: {not_float[:5]}")
    not_finite = [k for k, v in sd.items() if not torch.isfinite(v).all()]
    if not_finite:
        raise ValueError(f"{name}: tensors containing NaN or inf: {not_finite[:5]}")
    weights = {k: v for k, v in sd.items() if not k.endswith(".haar_weights")}
    model.load_state_dict(weights, strict=True)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()
