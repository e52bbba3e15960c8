"""Fused flat Glow flow: K steps of ActNorm -> channel mixing -> affine coupling as one layer.

The flat flow of the dissertation's digits model (Diss. sec. 3.2.1, fig. 3.1 "AllInOne" step;
Glow arXiv:1807.03039 sec. 3: a *step of flow* is ActNorm, then a permutation or invertible 1x1
convolution, then an affine coupling) works on ``[B, 64]`` vectors with small matrix products.
At batch 32 a training step of the layer-by-layer :class:`~common.sequential.FlowSequential` is
dominated by per-operation overhead (operator dispatch, one autograd node per operation, one
gradient accumulation and one optimiser update per parameter tensor), not by arithmetic.
:class:`FusedFlatFlow` computes *the same function and the same gradients* with far fewer
operations:

* The K steps' parameters are stored stacked: ActNorm ``bias``/``log_scale`` as ``[K, C]``, each
  subnet layer's weights as ``[K, out, in]`` and biases as ``[K, out]``: 6 tensors instead of 48
  for 8 steps with one hidden layer (the same values and count), so autograd accumulates and the
  optimiser updates 6 tensors. The permutations / 1x1 convolutions stay per-step modules in
  ``mixing`` (a fixed permutation has no parameters).
* ActNorm and the mixing of a step are applied as one affine map (a permutation with one
  ``index_select`` and one ``addcmul``; a 1x1 convolution ``W`` absorbs the ActNorm as
  ``W diag(s)`` in one ``addmm``); the data-independent log-determinants (``sum log s``,
  ``log|det W|``) are summed once per call and the couplings' ``sum log g`` with one reduction.
* The K steps run inside one ``torch.autograd.Function`` whose backward pass is the chain rule
  written out by hand (through ``addcmul``, the subnet's ``addmm`` and ReLU, ``sigmoid`` or the
  soft-clamped ``exp``), so autograd records one node instead of about 15 per step and the
  gradients are written straight into the stacked ``[K, ...]`` tensors.

It is built from the ordinary layers (:meth:`FusedFlatFlow.from_layers`, which copies their
values) and converts back (:meth:`FusedFlatFlow.to_layers`); a state dict of the layer-by-layer
``FlowSequential`` loads into it directly. ``tests/test_fused.py`` proves the fused map against
that composition (outputs, log-det and every gradient to 1e-12 in float64) and with the three
proofs of ``tests/flow_checks.py``. The backward pass is first-order only
(``once_differentiable``): use :meth:`to_layers` for higher-order derivatives.

Reference: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
arXiv:1807.03039, sec. 3 and Table 1; Dinh et al., "Real NVP", arXiv:1605.08803 (affine coupling,
fixed permutations).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from common.actnorm import ActNorm, actnorm_statistics
from common.conv1x1 import ChannelPermutation, InvConv1x1
from common.coupling import AffineCoupling
from common.sequential import FlowSequential
from common.utils import check_input, logdet_dtype

__all__ = ["FusedFlatFlow"]

_SCALE_OFFSET = 2.0  # Glow's coupling scale sigmoid(h + 2)
# d relu(a)/da as a mask of the ReLU's *output* (positive iff its input is): one kernel, where
# ``grad * (out > 0)`` takes two and a boolean temporary.
_relu_backward = torch.ops.aten.threshold_backward


@dataclass(frozen=True)
class _Plan:
    """The static shape of the K fused steps (everything the kernel needs besides tensors)."""

    steps: int
    permutation: bool  # True: ChannelPermutation; False: InvConv1x1
    split: int  # coupling split c1
    linears: int  # Linear layers per subnet (ReLU between them)
    scale_fn: str  # "sigmoid" or "exp"
    clamp: float


def _mlp_linears(net: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of ``Linear (-> ReLU -> Linear)*``, or None for any other subnet."""
    if not isinstance(net, nn.Sequential) or len(net) % 2 == 0:
        return None
    linears = []
    for index, module in enumerate(net):
        if index % 2 == 0:
            if type(module) is not nn.Linear or module.bias is None:
                return None
            linears.append(module)
        elif type(module) is not nn.ReLU:
            return None
    return linears


def _check_layers(layers: Sequence[nn.Module]) -> str | None:
    """``None`` if ``layers`` are K fusable flat steps, else the reason they are not."""
    if not layers or len(layers) % 3:
        return f"expected 3 layers per step, got {len(layers)} layers"
    first, mixing, coupling = layers[:3]
    if type(first) is not ActNorm:
        return f"layer 0 is {type(first).__name__}, expected ActNorm"
    if type(mixing) not in (ChannelPermutation, InvConv1x1):
        return f"layer 1 is {type(mixing).__name__}, expected ChannelPermutation or InvConv1x1"
    if type(coupling) is not AffineCoupling:
        return f"layer 2 is {type(coupling).__name__}, expected AffineCoupling"
    first_mlp = _mlp_linears(coupling.NN)
    if first_mlp is None:
        return "layer 2: the coupling subnet is not Linear (-> ReLU -> Linear)*"
    channels = first.channels
    shapes = [tuple(lin.weight.shape) for lin in first_mlp]
    step_kind = (type(mixing), coupling.split, coupling.scale_fn, coupling.clamp, first.eps)
    for index in range(0, len(layers), 3):
        norm, mix, cpl = layers[index : index + 3]
        if type(norm) is not ActNorm or norm.channels != channels:
            return f"layer {index} is not ActNorm({channels})"
        if type(cpl) is not AffineCoupling or cpl.channels != channels:
            return f"layer {index + 2} is not AffineCoupling({channels})"
        if (type(mix), cpl.split, cpl.scale_fn, cpl.clamp, norm.eps) != step_kind:
            return f"step {index // 3} differs from step 0 (mixing, split, scale_fn or clamp)"
        if mix.channels != channels:
            return f"layer {index + 1} has {mix.channels} channels, expected {channels}"
        mlp = _mlp_linears(cpl.NN)
        if mlp is None or [tuple(lin.weight.shape) for lin in mlp] != shapes:
            return f"layer {index + 2}: its subnet differs from step 0's"
        if bool(norm.initialized) != bool(first.initialized):
            return "some ActNorms are initialised and others are not"
    return None


class _FlatFlowFunction(torch.autograd.Function):
    """K fused flat steps ``x -> h = A_k(x) -> (h1, h2 * g + t)`` with a written-out backward.

    ``A_k`` is ActNorm ``(x + b_k) * exp(log_s_k)`` followed by the permutation ``perms[k]``
    (``A_k(x) = x[:, perm] * scale + shift`` with the ActNorm parameters permuted) or by the 1x1
    convolution ``W[k]`` (``A_k(x) = x M^T + c`` with ``M = W diag(s)``, ``c = W (b s)``).
    Tensors: ``x [B, C]``, ``W [K, C, C]`` (None for permutations), ActNorm ``log_scale`` and
    ``bias`` ``[K, C]``, then the subnets' stacked weights ``[K, out, in]`` and biases
    ``[K, out]``, layer by layer. Returns ``y [B, C]`` and
    ``sum_k (sum_c log s_kc + sum_j log g_kj)`` ``[B]``.
    """

    @staticmethod
    def forward(ctx, plan: _Plan, perms, inverse_perms, x, weight, log_s, bias, *mlp):
        steps, c1 = plan.steps, plan.split
        c2 = x.shape[1] - c1
        n = plan.linears
        s = log_s.exp()
        bs = bias * s  # (x + b) s = x s + b s
        if plan.permutation:
            index = torch.stack(perms)
            mix_a = s.gather(1, index).unbind(0)
            mix_b = bs.gather(1, index).unbind(0)
        else:
            mix_a = (weight * s.unsqueeze(1)).unbind(0)  # W diag(s)
            mix_b = (weight @ bs.unsqueeze(2)).squeeze(2).unbind(0)  # W (b s)
        weights = [w.unbind(0) for w in mlp[:n]]
        biases = [b.unbind(0) for b in mlp[n:]]
        saved = []  # per step: (step input, h1, h2, ReLU outputs, g, tanh or None)
        scale_terms = []
        for k in range(steps):
            if plan.permutation:
                x_in = x.index_select(1, perms[k])
                h = torch.addcmul(mix_b[k], x_in, mix_a[k])
            else:
                x_in = x
                h = F.linear(x, mix_a[k], mix_b[k])
            h1, h2 = h.split_with_sizes((c1, c2), 1)
            a, relu_outs = h1, []
            for i in range(n - 1):
                a = F.linear(a, weights[i][k], biases[i][k]).relu_()
                relu_outs.append(a)
            h_s, shift = F.linear(a, weights[-1][k], biases[-1][k]).split_with_sizes((c2, c2), 1)
            if plan.scale_fn == "sigmoid":  # g = sigmoid(u), log g = logsigmoid(u), u = h_s + 2
                u = h_s + _SCALE_OFFSET
                g, th = torch.sigmoid(u), None
                scale_terms.append(u)
            else:  # g = exp(clamp * tanh(h_s / clamp)), log g = clamp * tanh(.)
                th = torch.tanh(h_s / plan.clamp)
                log_g = th * plan.clamp
                g = log_g.exp()
                scale_terms.append(log_g)
            x = torch.cat((h1, torch.addcmul(shift, h2, g)), 1)
            saved.append((x_in, h1, h2, relu_outs, g, th))
        terms = torch.cat(scale_terms, 1)
        logdet = (F.logsigmoid(terms) if plan.scale_fn == "sigmoid" else terms).sum(1)
        ctx.plan, ctx.inverse_perms, ctx.steps = plan, inverse_perms, saved
        ctx.actnorm, ctx.mix_a, ctx.weights = (s, bs), mix_a, weights
        ctx.save_for_backward(weight, bias, *mlp)  # (in-place changes before backward raise)
        return x, logdet + log_s.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_logdet):
        plan: _Plan = ctx.plan
        weight, bias, *mlp = ctx.saved_tensors
        s, bs = ctx.actnorm
        weights = ctx.weights
        steps, c1, n = plan.steps, plan.split, plan.linears
        c2 = grad_y.shape[1] - c1
        grad_ld = grad_logdet.unsqueeze(1)
        grad_w = [torch.empty_like(w) for w in mlp[:n]]  # written step by step
        grad_b = [torch.empty_like(b) for b in mlp[n : 2 * n - 1]]
        grad_hs, grad_outs, grad_ms = [], [], []
        grad = grad_y
        for k in reversed(range(steps)):
            x_in, h1, h2, relu_outs, g, th = ctx.steps[k]
            grad_y1, grad_y2 = grad.split_with_sizes((c1, c2), 1)
            grad_h2 = grad_y2 * g
            # y2 = h2 * g + t and the log-det term log g: d/d(log g) = h2 * g * dy2 + dlogdet
            grad_log_g = torch.addcmul(grad_ld, grad_h2, h2)
            # d log g / d h_s: 1 - sigmoid(u) = 1 - g, or 1 - tanh^2 for the soft-clamped exp
            if th is None:
                grad_h_s = torch.addcmul(grad_log_g, grad_log_g, g, value=-1.0)
            else:
                grad_h_s = torch.addcmul(grad_log_g, grad_log_g * th, th, value=-1.0)
            grad_out = torch.cat((grad_h_s, grad_y2), 1)  # d/d(h_s, t)
            grad_outs.append(grad_out)
            for i in reversed(range(n)):
                layer_in = relu_outs[i - 1] if i else h1
                torch.mm(grad_out.t(), layer_in, out=grad_w[i][k])
                if i < n - 1:  # the last layer's bias gradients are summed below, all at once
                    torch.sum(grad_out, 0, out=grad_b[i][k])
                if i:
                    grad_out = _relu_backward(grad_out.mm(weights[i][k]), layer_in, 0)
            grad_h = torch.cat((torch.addmm(grad_y1, grad_out, weights[0][k]), grad_h2), 1)
            grad_hs.append(grad_h)
            if plan.permutation:
                if k or ctx.needs_input_grad[3]:
                    grad = (grad_h * ctx.mix_a[k]).index_select(1, ctx.inverse_perms[k])
            else:
                grad_ms.append(grad_h.t().mm(x_in))
                if k or ctx.needs_input_grad[3]:
                    grad = grad_h.mm(ctx.mix_a[k])
        grad_b.append(torch.stack(grad_outs[::-1]).sum(1))  # the last layer's biases [K, out]
        # The ActNorm / mixing parameters of all K steps at once (lists are in reverse order).
        grad_h_all = torch.stack(grad_hs[::-1])  # [K, B, C]
        grad_shift = grad_h_all.sum(1)  # d/d(shift or c) [K, C]
        grad_weight = None
        if plan.permutation:
            x_in_all = torch.stack([step[0] for step in ctx.steps])
            inverse = torch.stack(ctx.inverse_perms)
            grad_s = (grad_h_all * x_in_all).sum(1).gather(1, inverse)  # back to input order
            grad_bs = grad_shift.gather(1, inverse)
        else:
            grad_m = torch.stack(grad_ms[::-1])  # d/dM [K, C, C]
            grad_weight = grad_m * s.unsqueeze(1) + grad_shift.unsqueeze(2) * bs.unsqueeze(1)
            grad_s = (grad_m * weight).sum(1)
            grad_bs = (grad_shift.unsqueeze(1) @ weight).squeeze(1)  # W^T dc
        grad_s = torch.addcmul(grad_s, grad_bs, bias)  # through b s
        grad_log_s = torch.addcmul(grad_logdet.sum(), grad_s, s)  # through exp; + d sum(log s)
        return (
            None,
            None,
            None,
            grad if ctx.needs_input_grad[3] else None,
            grad_weight,
            grad_log_s,
            grad_bs * s,
            *grad_w,
            *grad_b,
        )


class FusedFlatFlow(nn.Module):
    """K flat Glow steps with stacked parameters, evaluated as one fused map (module docstring).

    Step ``k`` maps ``x [B, C]`` as the layers ``ActNorm -> mixing[k] -> AffineCoupling`` with a
    fully connected subnet (:func:`~common.subnets.mlp_subnet`) do::

        h  = P_k((x + b_k) * s_k)            ActNorm, then permutation / 1x1 conv W_k
        (h1, h2) = h[:, :c1], h[:, c1:]
        (h_s, t) = NN_k(h1);  g = sigmoid(h_s + 2)  or  exp(clamp * tanh(h_s / clamp))
        x' = (h1, h2 * g + t)
        log|det| += sum(log s_k) + log|det W_k| + sum(log g)

    (Glow Table 1; the dissertation's "AllInOne" step). Parameters: ``actnorm_bias`` and
    ``actnorm_log_scale`` ``[K, C]`` (``s = exp(log_scale)``), ``weights[i]`` ``[K, out, in]``
    and ``biases[i]`` ``[K, out]`` for subnet layer ``i``; buffers ``initialized`` (ActNorm's
    data-dependent init done, Glow sec. 3.1) and the mixing modules' own. The first forward pass
    in training mode before initialisation (or :meth:`initialize`) sets every ActNorm from the
    batch, step by step, exactly as the layers would.

    Build it with :meth:`from_layers`; ``to_layers()`` gives back the equivalent
    ``FlowSequential``. Only ``[B, C]`` inputs; autocast is disabled inside (the flow runs in the
    input's float precision); ``common.check_finite()`` checks the input once.

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, sec. 3, Table 1.
    """

    def __init__(
        self,
        channels: int,
        mixing: Sequence[nn.Module],
        subnet_shapes: Sequence[tuple[int, int]],
        split: int | None = None,
        scale_fn: str = "sigmoid",
        clamp: float = 2.0,
        eps: float = 1e-6,
    ) -> None:
        """Zero-initialised stacked parameters for ``len(mixing)`` steps; see :meth:`from_layers`.

        ``subnet_shapes`` lists each subnet layer's ``(out_features, in_features)``.
        """
        super().__init__()
        steps = len(mixing)
        split = channels // 2 if split is None else split
        c2 = channels - split
        if steps < 1 or not 0 < split < channels:
            raise ValueError(
                f"FusedFlatFlow: need >= 1 step and 0 < split < channels, got {steps} steps, "
                f"split {split} of {channels}"
            )
        shapes = [tuple(shape) for shape in subnet_shapes]
        if not shapes or shapes[0][1] != split or shapes[-1][0] != 2 * c2:
            raise ValueError(
                f"FusedFlatFlow: the subnet must map {split} -> {2 * c2} features, got layers "
                f"{shapes}"
            )
        if any(a[1] != b[0] for a, b in zip(shapes[1:], shapes[:-1], strict=True)):
            raise ValueError(f"FusedFlatFlow: subnet layer shapes do not chain: {shapes}")
        if scale_fn not in ("sigmoid", "exp") or not clamp > 0:
            raise ValueError(
                f"FusedFlatFlow: scale_fn must be 'sigmoid' or 'exp' and clamp > 0, got "
                f"{scale_fn!r}, {clamp}"
            )
        kinds = {type(mix) for mix in mixing}
        if len(kinds) != 1 or not kinds <= {ChannelPermutation, InvConv1x1}:
            raise ValueError(
                "FusedFlatFlow: mixing must be all ChannelPermutation or all InvConv1x1, got "
                f"{sorted(kind.__name__ for kind in kinds)}"
            )
        if any(mix.channels != channels for mix in mixing):
            raise ValueError(f"FusedFlatFlow: every mixing layer must have {channels} channels")
        self.channels, self.steps, self.split = channels, steps, split
        self.scale_fn, self.clamp, self.eps = scale_fn, float(clamp), eps
        self.actnorm_bias = nn.Parameter(torch.zeros(steps, channels))
        self.actnorm_log_scale = nn.Parameter(torch.zeros(steps, channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.mixing = nn.ModuleList(mixing)
        self.weights = nn.ParameterList([torch.zeros(steps, *shape) for shape in shapes])
        self.biases = nn.ParameterList([torch.zeros(steps, shape[0]) for shape in shapes])
        self._plan = _Plan(
            steps=steps,
            permutation=isinstance(self.mixing[0], ChannelPermutation),
            split=split,
            linears=len(shapes),
            scale_fn=scale_fn,
            clamp=float(clamp),
        )

    # -- conversion from / to the layer-by-layer composition ---------------------------------

    @classmethod
    def from_layers(cls, layers: Sequence[nn.Module]) -> FusedFlatFlow:
        """The fused flow with the values of ``ActNorm, mixing, AffineCoupling`` x K layers.

        The mixing modules are deep-copied; all parameters and buffers are copied, so the result
        computes exactly what ``FlowSequential(*layers)`` computes. Raises ``ValueError`` if the
        layers are not K such steps with ``Linear (-> ReLU -> Linear)*`` subnets.
        """
        layers = list(layers)
        problem = _check_layers(layers)
        if problem is not None:
            raise ValueError(f"FusedFlatFlow.from_layers: {problem}")
        norms, mixes, couplings = layers[0::3], layers[1::3], layers[2::3]
        mlps = [_mlp_linears(cpl.NN) for cpl in couplings]
        first = couplings[0]
        fused = cls(
            norms[0].channels,
            [copy.deepcopy(mix) for mix in mixes],
            [tuple(lin.weight.shape) for lin in mlps[0]],
            split=first.split,
            scale_fn=first.scale_fn,
            clamp=first.clamp,
            eps=norms[0].eps,
        )
        ref = norms[0].bias
        fused.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            fused.actnorm_bias.copy_(torch.stack([norm.bias for norm in norms]))
            fused.actnorm_log_scale.copy_(torch.stack([norm.log_scale for norm in norms]))
            fused.initialized.fill_(bool(norms[0].initialized))
            for i in range(len(mlps[0])):
                fused.weights[i].copy_(torch.stack([mlp[i].weight for mlp in mlps]))
                fused.biases[i].copy_(torch.stack([mlp[i].bias for mlp in mlps]))
        return fused

    def to_layers(self) -> FlowSequential:
        """The equivalent layer-by-layer ``FlowSequential`` (copies of the current values)."""
        layers: list[nn.Module] = []
        shapes = [tuple(w.shape[1:]) for w in self.weights]
        ref = self.actnorm_bias
        with torch.no_grad():
            for k in range(self.steps):
                norm = ActNorm(self.channels, eps=self.eps).to(ref.device, ref.dtype)
                norm.bias.copy_(self.actnorm_bias[k])
                norm.log_scale.copy_(self.actnorm_log_scale[k])
                norm.initialized.fill_(bool(self.initialized))
                mods: list[nn.Module] = []
                for i, (out_f, in_f) in enumerate(shapes):
                    lin = nn.Linear(in_f, out_f).to(ref.device, ref.dtype)
                    lin.weight.copy_(self.weights[i][k])
                    lin.bias.copy_(self.biases[i][k])
                    mods += [lin, nn.ReLU()]
                net = nn.Sequential(*mods[:-1])
                coupling = AffineCoupling(
                    self.channels,
                    lambda c_in, c_out, net=net: net,
                    split=self.split,
                    scale_fn=self.scale_fn,
                    clamp=self.clamp,
                )
                layers += [norm, copy.deepcopy(self.mixing[k]), coupling]
        return FlowSequential(*layers)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state dict of the equivalent FlowSequential ("{3k}.bias", "{3k+2}.NN.{2i}.weight",
        # ...; e.g. a flat Glow checkpoint from before this layer existed) is restacked.
        if f"{prefix}actnorm_bias" not in state_dict and f"{prefix}0.bias" in state_dict:
            _restack_state_dict(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- the invertible map ------------------------------------------------------------------

    def _check(self, x: torch.Tensor, direction: str = "forward") -> None:
        check_input(self, x, self.channels, direction=direction)
        if x.dim() != 2 or x.dtype != self.actnorm_bias.dtype:
            where = "FusedFlatFlow" + ("" if direction == "forward" else f".{direction}")
            raise ValueError(
                f"{where}: expected a [B, {self.channels}] tensor of the parameters' dtype "
                f"{self.actnorm_bias.dtype}, got shape {tuple(x.shape)} and {x.dtype}"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_autocast_enabled(x.device.type):  # run in the input's precision
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x)
        self._check(x)
        if self.training and not bool(self.initialized):
            self.initialize(x)
        plan = self._plan
        perms = inverse_perms = weight = const = None
        if plan.permutation:
            perms = tuple(mix._buffers["perm"] for mix in self.mixing)
            inverse_perms = tuple(mix._buffers["inverse_perm"] for mix in self.mixing)
        else:
            weight = torch.stack([mix.weight_matrix(x.dtype) for mix in self.mixing])
            const = torch.stack([mix.log_abs_det() for mix in self.mixing]).sum().to(x.dtype)
        # Parameters read from _parameters: nn.Module.__getattr__ is a slow Python lookup.
        params = self._parameters
        mlp = [*self.weights._parameters.values(), *self.biases._parameters.values()]
        y, logdet = _FlatFlowFunction.apply(
            plan,
            perms,
            inverse_perms,
            x,
            weight,
            params["actnorm_log_scale"],
            params["actnorm_bias"],
            *mlp,
        )
        if const is not None:
            logdet = logdet + const
        if logdet.dtype != logdet_dtype(x):  # half-precision input: log-det in float32
            logdet = logdet.float()
        return y, logdet

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact inverse, step by step in reverse order (ordinary autograd operations)."""
        self._check(y, "inverse")
        logdet = torch.zeros(y.shape[0], dtype=logdet_dtype(y), device=y.device)
        with torch.autocast(y.device.type, enabled=False):
            for k in reversed(range(self.steps)):
                y1, y2 = y.split_with_sizes((self.split, self.channels - self.split), 1)
                log_g, shift = self._log_scale_shift(k, y1)
                h = torch.cat((y1, (y2 - shift) * (-log_g).exp()), 1)
                h, ld_mix = self.mixing[k].inverse(h)
                log_s = self.actnorm_log_scale[k]
                y = h * (-log_s).exp() - self.actnorm_bias[k]
                logdet = logdet - log_g.sum(1) - log_s.sum() + ld_mix
        return y, logdet

    def _log_scale_shift(self, k: int, h1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``k``'s coupling: ``(log g, t)`` from ``h1`` (as ``AffineCoupling``)."""
        a = h1
        for i in range(len(self.weights)):
            a = F.linear(a, self.weights[i][k], self.biases[i][k])
            if i < len(self.weights) - 1:
                a = torch.relu(a)
        c2 = self.channels - self.split
        h_s, shift = a[:, :c2], a[:, c2:]
        if self.scale_fn == "sigmoid":
            return F.logsigmoid(h_s + _SCALE_OFFSET), shift
        return self.clamp * torch.tanh(h_s / self.clamp), shift

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent ActNorm init (Glow sec. 3.1), step by step from the batch ``x``.

        Each step's ActNorm gets ``b = -mean``, ``s = 1/std`` of its own input (the output of
        the previous, already initialised, step), as the layer-by-layer flow does.
        """
        self._check(x)
        for k in range(self.steps):
            bias, log_scale = actnorm_statistics(x, self.channels, self.eps)
            self.actnorm_bias[k] = bias.to(x.dtype)
            self.actnorm_log_scale[k] = log_scale.to(x.dtype)
            h, _ = self.mixing[k]((x + self.actnorm_bias[k]) * self.actnorm_log_scale[k].exp())
            h1, h2 = h.split_with_sizes((self.split, self.channels - self.split), 1)
            log_g, shift = self._log_scale_shift(k, h1)
            x = torch.cat((h1, h2 * log_g.exp() + shift), 1)
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        kind = type(self.mixing[0]).__name__
        shapes = [tuple(w.shape[1:]) for w in self.weights]
        return (
            f"channels={self.channels}, steps={self.steps}, mixing={kind}, split={self.split}, "
            f"subnet={shapes}, scale_fn={self.scale_fn!r}"
            + (f", clamp={self.clamp}" if self.scale_fn == "exp" else "")
        )


def _restack_state_dict(flow: FusedFlatFlow, state_dict: dict, prefix: str) -> None:
    """Rewrite a ``FlowSequential`` state dict of ``flow``'s steps to stacked keys, in place."""
    steps, linears = flow.steps, len(flow.weights)
    needed = [f"{3 * k}.{name}" for k in range(steps) for name in ("bias", "log_scale")]
    needed += [
        f"{3 * k + 2}.NN.{2 * i}.{name}"
        for k in range(steps)
        for i in range(linears)
        for name in ("weight", "bias")
    ]
    if any(prefix + key not in state_dict for key in needed):
        return  # not this flow's layer-by-layer layout: the usual missing-key errors follow

    def pop(key: str) -> torch.Tensor:
        return state_dict.pop(prefix + key)

    state_dict[prefix + "actnorm_bias"] = torch.stack([pop(f"{3 * k}.bias") for k in range(steps)])
    state_dict[prefix + "actnorm_log_scale"] = torch.stack(
        [pop(f"{3 * k}.log_scale") for k in range(steps)]
    )
    flags = [state_dict.pop(f"{prefix}{3 * k}.initialized", None) for k in range(steps)]
    if all(flag is not None for flag in flags):
        state_dict[prefix + "initialized"] = torch.tensor(all(bool(flag) for flag in flags))
    for k in range(steps):
        old = f"{prefix}{3 * k + 1}."
        for key in [key for key in state_dict if key.startswith(old)]:
            state_dict[f"{prefix}mixing.{k}.{key[len(old) :]}"] = state_dict.pop(key)
    for i in range(linears):
        for name, target in (("weight", "weights"), ("bias", "biases")):
            state_dict[f"{prefix}{target}.{i}"] = torch.stack(
                [pop(f"{3 * k + 2}.NN.{2 * i}.{name}") for k in range(steps)]
            )
