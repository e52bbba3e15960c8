"""The dissertation's FrEIA-built IRN, the weight mapping to ours, and its training run.

The dissertation "Image Rescaling using Invertible Neural Networks, by Probabilistic
Disentanglement" (McGuinness, sec. 3.3 and 2.3.2) built IRN with FrEIA: a ``SequenceINN`` of
FrEIA's ``HaarDownsampling``, ordered by wavelet so the first ``C`` channels are the LR, and
its own enhanced affine coupling subclassing FrEIA's coupling base, each coupling splitting off
the first ``C`` channels itself. This module rebuilds that network for any Haar scale (x2, x4,
x8) with the authors' dense-block subnets (:class:`common.subnets.DenseBlock` with
``fast=False, channels_last=False``: the authors' computation), so that it can be compared with
our from-first-principles :class:`irn.model.IRN` (``bench/compare_freia.py --model irn``).

FrEIA is an optional extra (``pip install -r requirements-bench.txt``); the core never imports
it, and this module imports it at the top.

Train the FrEIA IRN with exactly ``train_irn.py``'s data, seed, losses, optimiser, schedule and
validation (every ``train_irn.py`` flag is accepted), or, without ``--freia``, ours through the
same entry point::

    python bench/freia_irn.py --freia --iters 1000 --batch-size 8 --patch-size 64 \\
        --val-every 200 --threads 1 --out runs/freia_curve
    python bench/freia_irn.py --iters 1000 --batch-size 8 --patch-size 64 \\
        --val-every 200 --threads 1 --out runs/ours_curve
    python bench/curves.py runs/ours_curve runs/freia_curve

With the same seed both draw the same initial weights (the subnets are made in the same order),
so the runs differ only by floating-point round-off, which chaotic training amplifies.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from collections import OrderedDict
from pathlib import Path

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
from FrEIA.modules.coupling_layers import _BaseCouplingBlock
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.subnets import dense_block, set_dense_block_options  # noqa: E402
from irn.checkpoints import load_authors_checkpoint  # noqa: E402
from irn.model import IRN, IRNConfig  # noqa: E402

__all__ = [
    "FrEIAEnhancedCoupling",
    "FrEIAOperations",
    "FrEIAIRN",
    "build_sequence_inn",
    "freia_from_ours",
    "ours_from_freia",
    "freia_from_authors",
    "freia_to_authors_state_dict",
    "trainable_params",
]

# The FrEIA IRN's keys are the authors' ``operations.{i}...`` with ``operations.`` replaced by:
PREFIX = "operations.inn.module_list."


def tight_sigmoid(u: torch.Tensor, tightness: float) -> torch.Tensor:
    """The clamp activation ``2 * sigmoid(t * u) - 1`` for the dissertation's IRN-T option."""
    return 2.0 * torch.sigmoid(tightness * u) - 1.0


class FrEIAEnhancedCoupling(_BaseCouplingBlock):
    """IRN's enhanced affine coupling as a FrEIA module (the dissertation's sec. 2.3.2, eq.
    2.22-2.23: a subclass of FrEIA's coupling base; IRN, ECCV 2020, sec. 3.2)::

        y1 = x1 + F(x2)                                    (_coupling1)
        s  = clamp * g(H(y1)),  g(u) = 2 sigmoid(u) - 1
        y2 = x2 * exp(s) + G(y1)      log|det| = sum(s)    (_coupling2)

    FrEIA's base splits ``x`` into the first ``split_len`` channels and the rest, calls
    ``_coupling1`` then ``_coupling2`` (their inverses in the other order for ``rev=True``) and
    concatenates. ``g`` is FrEIA's ``"SIGMOID"`` clamp activation ``2 (sigmoid(u) - 0.5)``
    (or ``2 sigmoid(t u) - 1`` for ``clamp_tightness`` t != 1). Subnets are made in the order
    F, G, H, as in :class:`common.coupling.EnhancedAffineCoupling`, so a seed draws the same
    weights. The log-det is computed whether or not FrEIA's ``jac`` asks for it.
    """

    def __init__(
        self,
        dims_in,
        dims_c=(),
        subnet_constructor=None,
        clamp: float = 1.0,
        clamp_tightness: float = 1.0,
        split_len: int = 3,
    ) -> None:
        activation = (
            "SIGMOID"
            if clamp_tightness == 1.0
            else functools.partial(tight_sigmoid, tightness=clamp_tightness)
        )
        super().__init__(
            dims_in, list(dims_c), clamp=clamp, clamp_activation=activation, split_len=split_len
        )
        c1 = self.split_len1 + self.condition_length
        c2 = self.split_len2 + self.condition_length
        self.F = subnet_constructor(c2, self.split_len1)
        self.G = subnet_constructor(c1, self.split_len2)
        self.H = subnet_constructor(c1, self.split_len2)

    def _coupling1(self, x1, u2, rev=False):
        return (x1 - self.F(u2) if rev else x1 + self.F(u2)), 0.0

    def _coupling2(self, x2, u1, rev=False):
        s = self.clamp * self.f_clamp(self.H(u1))
        logdet = torch.sum(s, dim=tuple(range(1, self.ndims + 1)))
        if rev:
            return (x2 - self.G(u1)) * torch.exp(-s), -logdet
        return x2 * torch.exp(s) + self.G(u1), logdet


def build_sequence_inn(cfg: IRNConfig, patch: int = 144) -> Ff.SequenceINN:
    """The dissertation's IRN as a FrEIA ``SequenceINN`` (its sec. 3.3): per Haar level, FrEIA's
    ``HaarDownsampling(order_by_wavelet=True, rebalance=0.5)`` (the authors' Haar: wavelet
    order, factor 1/4) then ``cfg.blocks_per_level`` :class:`FrEIAEnhancedCoupling`.

    FrEIA fixes the input shape ``[C, patch, patch]`` at construction; the modules themselves
    accept other sizes (FrEIA checks shapes only when the network is built).
    """
    if cfg.scale == 3 or cfg.actnorm:
        raise ValueError(
            "build_sequence_inn: only the Haar IRN (x2, x4, x8) without ActNorm has a "
            f"FrEIA counterpart here, got scale={cfg.scale}, actnorm={cfg.actnorm}"
        )
    if patch % cfg.scale:
        raise ValueError(f"build_sequence_inn: patch {patch} is not a multiple of {cfg.scale}")
    inn = Ff.SequenceINN(cfg.in_channels, patch, patch)
    subnet = dense_block(gc=cfg.gc, init=cfg.init)
    for _ in range(cfg.levels):
        inn.append(Fm.HaarDownsampling, order_by_wavelet=True, rebalance=0.5)
        for _ in range(cfg.blocks_per_level):
            inn.append(
                FrEIAEnhancedCoupling,
                subnet_constructor=subnet,
                clamp=cfg.clamp,
                clamp_tightness=cfg.clamp_tightness,
                split_len=cfg.in_channels,
            )
    set_dense_block_options(inn, channels_last=False, fast=False)
    return inn


class FrEIAOperations(nn.Module):
    """A FrEIA ``SequenceINN`` behind our layer protocol: ``y, logdet = ops(x)``,
    ``x, logdet_inv = ops.inverse(y)``. No memory-saving backpropagation (FrEIA has none)."""

    def __init__(self, inn: Ff.SequenceINN) -> None:
        super().__init__()
        self.inn = inn

    @property
    def memory_saving(self) -> bool:
        return False

    @memory_saving.setter
    def memory_saving(self, enabled: bool) -> None:
        if enabled:
            raise ValueError("the FrEIA IRN has no memory-saving backpropagation")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inn(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inn(y, rev=True)


class FrEIAIRN(IRN):
    """The FrEIA IRN with our :class:`~irn.model.IRN` interface: the invertible map is FrEIA's
    (``self.operations.inn``); only the input checks and the rescaling helpers (``encode``,
    ``downscale``, ``upscale``, ``z_shape``) are IRN's, so ``train_irn.py``'s loop, losses and
    validation run it unchanged. ``state_dict`` keys are the authors' behind
    ``operations.inn.module_list.`` (FrEIA's Haar keeps its kernel as a frozen parameter)."""

    def __init__(self, config: IRNConfig | None = None, memory_saving: bool = False) -> None:
        nn.Module.__init__(self)  # IRN's own layers are not built (nor their weights drawn)
        cfg = IRNConfig() if config is None else config
        if memory_saving:
            raise ValueError("FrEIAIRN: FrEIA has no memory-saving backpropagation")
        self.config = cfg
        self.operations = FrEIAOperations(build_sequence_inn(cfg))

    @property
    def _name(self) -> str:
        return f"FrEIAIRN(x{self.scale})"


def trainable_params(model: nn.Module) -> int:
    """Trainable parameters (FrEIA's frozen Haar kernels excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freia_to_authors_state_dict(model: FrEIAIRN) -> OrderedDict[str, torch.Tensor]:
    """The FrEIA IRN's weights in the authors' layout (their keys, Haar kernels included)."""
    return OrderedDict(
        ("operations." + key.removeprefix(PREFIX), value)
        for key, value in model.state_dict().items()
        if key.startswith(PREFIX)
    )


def freia_from_ours(model: IRN) -> FrEIAIRN:
    """A FrEIA IRN computing ``model``'s function: its coupling weights copied (``operations.{i}.``
    becomes ``operations.inn.module_list.{i}.``); our Haar has no weights, FrEIA's keeps the
    authors' fixed kernel. Same dtype, device and train/eval mode."""
    if not isinstance(model, IRN) or isinstance(model, FrEIAIRN):
        raise ValueError(f"freia_from_ours: expected our IRN, got {type(model).__name__}")
    ref = next(model.parameters())
    freia = FrEIAIRN(model.config).to(device=ref.device, dtype=ref.dtype)
    state = freia.state_dict()
    for key, value in model.state_dict().items():
        state[PREFIX + key.removeprefix("operations.")] = value
    freia.load_state_dict(state, strict=True)
    return freia.train(model.training)


def ours_from_freia(model: FrEIAIRN) -> IRN:
    """Our IRN computing the FrEIA IRN's function (the inverse mapping of
    :func:`freia_from_ours`; the Haar kernels are dropped)."""
    if not isinstance(model, FrEIAIRN):
        raise ValueError(f"ours_from_freia: expected a FrEIAIRN, got {type(model).__name__}")
    ref = next(model.parameters())
    ours = IRN(model.config).to(device=ref.device, dtype=ref.dtype)
    state = OrderedDict(
        ("operations." + key.removeprefix(PREFIX), value)
        for key, value in model.state_dict().items()
        if not key.endswith(".haar_weights")
    )
    ours.load_state_dict(state, strict=True)
    return ours.train(model.training)


def freia_from_authors(source) -> FrEIAIRN:
    """A FrEIA IRN from the authors' checkpoint (path or state_dict), read and checked by
    :func:`irn.checkpoints.load_authors_checkpoint` (eval mode)."""
    return freia_from_ours(load_authors_checkpoint(source))


_FREIA_FLAG = re.compile(r"^--freia$")


def main(argv: list[str] | None = None) -> dict:
    """``train_irn.py`` with ``--freia``: the FrEIA IRN in ``train_irn.py``'s loop."""
    import train_irn
    from irn.training import train_distributed

    args = list(sys.argv[1:] if argv is None else argv)
    freia = any(_FREIA_FLAG.match(a) for a in args)
    args = [a for a in args if not _FREIA_FLAG.match(a)]
    model_cfg, cfg = train_irn.parse_args(args)
    task = train_irn.irn_task(model_cfg)
    if freia:
        if cfg.memory_saving:
            raise SystemExit("--freia: FrEIA has no memory-saving backpropagation")
        # The dissertation's network runs the authors' dense block (NCHW).
        cfg = dataclasses.replace(cfg, channels_last=False)
        task = dataclasses.replace(task, model_class=FrEIAIRN, title=f"FrEIA IRN x{task.scale}")
    return train_distributed(task, model_cfg, cfg)


if __name__ == "__main__":
    main()
