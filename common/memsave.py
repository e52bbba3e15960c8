"""Memory-saving backpropagation through invertible flows ("reversible backprop").

An ordinary backward pass needs every intermediate activation of the forward pass, so the memory
of a flow grows with its depth. An invertible layer does not need its input stored: it can be
recomputed from the output with the layer's exact ``inverse``. :func:`flow_forward` and
:func:`flow_inverse` run a whole :class:`~common.sequential.FlowSequential` (any sequence of
protocol layers, ``layer(x) -> (y, logdet)`` / ``layer.inverse(y) -> (x, logdet)``) inside one
``torch.autograd.Function`` that keeps only the flow's **output**; its backward walks the layers
from the output side, reconstructs each layer's input, rebuilds that one layer's graph, back-
propagates through it and frees it. Activation memory is that of a single layer, whatever the
depth (Gomez et al., "The Reversible Residual Network: Backpropagation Without Storing
Activations", NeurIPS 2017, arXiv:1707.04585, sec. 3 and Algorithm 1; the same idea as i-RevNet
and MemCNN).

Both directions are supported, as IRN's training step needs: the forward pass ``f(x)`` keeps
``y`` and reconstructs inputs with ``layer.inverse``; the inverse pass ``f^-1(y)`` keeps ``x``
and reconstructs its inputs (the ``y`` side) with ``layer.forward``. Gradients flow into the
parameters through the Function's inputs, so ``DistributedDataParallel`` hooks, gradient
accumulation and ``torch.autograd.grad`` work as usual.

Per layer the backward step is either

* a **fast path** for a coupling (registered with :func:`register_reversible_step`; IRN's
  :class:`~common.coupling.EnhancedAffineCoupling` and NICE's additive coupling are built in):
  reconstruction and graph rebuilding share one evaluation of each subnet, as in Gomez et al.'s
  Algorithm 1, so the extra cost is one forward pass of the subnets; or
* the **generic** step for any protocol layer: reconstruct the input with the inverse (no graph),
  then recompute the layer's forward with a graph and back-propagate through it (two evaluations).

Exactness: the gradients are those of the ordinary backward pass evaluated at the reconstructed
activations, so they differ from the ordinary ones only by the round-off of the reconstruction
(in float64 a relative difference ~1e-13; ``tests/test_memsave.py`` states the float32 bound).
Layers must be deterministic (no dropout); autocast state is recorded in the forward pass and
re-entered for the recomputation. Double backward (``create_graph=True``) is not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from common.coupling import AdditiveCoupling, EnhancedAffineCoupling
from common.utils import zeros_logdet

__all__ = [
    "flow_forward",
    "flow_inverse",
    "register_reversible_step",
    "reversible_step",
    "StepResult",
]

Grads = list[torch.Tensor | None]
# (reconstructed input, gradient w.r.t. that input, gradients of the layer's trainable params)
StepResult = tuple[torch.Tensor, torch.Tensor | None, Grads]
# step(layer, output, grad_output, grad_logdet or None, need_input_grad) -> StepResult
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None", bool], StepResult]

_REGISTRY: dict[type, tuple[StepFn, StepFn]] = {}


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _grad(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
) -> Grads:
    """``torch.autograd.grad`` that skips outputs without a graph and returns None for unused."""
    pairs = [
        (o, g)
        for o, g in zip(outputs, grad_outputs, strict=True)
        if o.requires_grad and g is not None
    ]
    if not pairs or not inputs:
        return [None] * len(inputs)
    outs, gouts = zip(*pairs, strict=True)
    return list(torch.autograd.grad(outs, list(inputs), list(gouts), allow_unused=True))


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _per_sample(gld: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[B]`` log-det gradient broadcast against ``[B, ...]``."""
    return gld.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


# -- generic steps: any protocol layer ----------------------------------------------------------


def _generic_forward_step(layer, y, grad_y, grad_logdet, need_input_grad) -> StepResult:
    """Reconstruct ``x = layer.inverse(y)``; recompute ``layer(x)`` with a graph; backprop."""
    params = _trainable(layer)
    with torch.no_grad():
        x, _ = layer.inverse(y)
    if not need_input_grad and not params:
        return x, None, []
    x = x.detach().requires_grad_(need_input_grad)
    with torch.enable_grad():
        y_re, logdet = layer(x)
    inputs = ([x] if need_input_grad else []) + params
    grads = _grad([y_re, logdet], inputs, [grad_y, grad_logdet])
    grad_x = grads.pop(0) if need_input_grad else None
    return x.detach(), grad_x, grads


def _generic_inverse_step(layer, x, grad_x, grad_logdet, need_input_grad) -> StepResult:
    """For the inverse pass: reconstruct ``y = layer(x)``, recompute ``layer.inverse(y)``."""
    params = _trainable(layer)
    with torch.no_grad():
        y, _ = layer(x)
    if not need_input_grad and not params:
        return y, None, []
    y = y.detach().requires_grad_(need_input_grad)
    with torch.enable_grad():
        x_re, logdet = layer.inverse(y)
    inputs = ([y] if need_input_grad else []) + params
    grads = _grad([x_re, logdet], inputs, [grad_x, grad_logdet])
    grad_y = grads.pop(0) if need_input_grad else None
    return y.detach(), grad_y, grads


# -- fast steps: IRN's enhanced affine coupling -------------------------------------------------


def _param_grads(layer: nn.Module, by_param: dict[int, torch.Tensor | None]) -> Grads:
    return [by_param.get(id(p)) for p in _trainable(layer)]


def _enhanced_forward_step(layer, y, grad_y, grad_logdet, need_input_grad) -> StepResult:
    """Backward step of ``y = f(x)`` for :class:`EnhancedAffineCoupling` (Diss. eq. 2.22-2.23).

    ``y1 = x1 + F(x2)``, ``s = clamp(H(y1))``, ``y2 = x2 * exp(s) + G(y1)``, ``ld = sum s``.
    From the output: ``G(y1)`` and ``s`` are evaluated once with a graph on ``y1``, giving
    ``x2 = (y2 - G(y1)) * exp(-s)`` (as ``layer.inverse``) and, with ``gs = gy2 * x2 * exp(s) +
    g_ld``, the total ``gy1 += VJP_{G,H}``; then ``F(x2)`` once with a graph gives
    ``x1 = y1 - F(x2)``, ``gx1 = gy1`` and ``gx2 = gy2 * exp(s) + VJP_F(gy1)``.
    """
    c1 = layer.split
    dtype = y.dtype
    y1 = y[:, :c1].detach().requires_grad_(True)
    y2 = y[:, c1:]
    gy1, gy2 = grad_y[:, :c1], grad_y[:, c1:]
    with torch.enable_grad():
        s = layer._scale(y1)
        g_out = layer._subnet(layer.G, y1, dtype)
    with torch.no_grad():
        es = s.exp()
        x2 = (y2 - g_out) * (-s).exp()  # the arithmetic of layer.inverse
        gs = gy2 * x2 * es
        if grad_logdet is not None:
            gs = gs + _per_sample(grad_logdet, gs)
    gh = _trainable(layer.H) + _trainable(layer.G)
    grads = _grad([s, g_out], [y1, *gh], [gs, gy2])
    by_param = {id(p): g for p, g in zip(gh, grads[1:], strict=True)}
    gy1_total = _add(gy1, grads[0])
    params_f = _trainable(layer.F)
    x2 = x2.detach().requires_grad_(need_input_grad)
    with torch.enable_grad():
        f_out = layer._subnet(layer.F, x2, dtype)
    with torch.no_grad():
        x1 = y1.detach() - f_out
    inputs_f = ([x2] if need_input_grad else []) + params_f
    grads_f = _grad([f_out], inputs_f, [gy1_total])
    grad_x = None
    if need_input_grad:
        gf_x2 = grads_f.pop(0)
        with torch.no_grad():
            gx2 = _add(gy2 * es, gf_x2)
            grad_x = torch.cat([gy1_total, gx2], dim=1)
    by_param.update(
        {id(p): _add(by_param.get(id(p)), g) for p, g in zip(params_f, grads_f, strict=True)}
    )
    x = torch.cat([x1, x2.detach()], dim=1)
    return x, grad_x, _param_grads(layer, by_param)


def _enhanced_inverse_step(layer, x, grad_x, grad_logdet, need_input_grad) -> StepResult:
    """Backward step of ``x = f^-1(y)`` for :class:`EnhancedAffineCoupling`.

    The inverse is ``x2 = (y2 - G(y1)) * exp(-s)``, ``x1 = y1 - F(x2)``, ``ld = -sum s``. From
    the output: ``F(x2)`` once with a graph gives ``y1 = x1 + F(x2)`` (as ``layer.forward``) and
    ``gx2 += VJP_F(-gx1)``; then ``G(y1)``, ``s`` once with a graph give
    ``y2 = x2 * exp(s) + G(y1)``, ``gy2 = gx2 * exp(-s)`` and
    ``gy1 = gx1 + VJP_{G,H}(-gy2, -gx2 * (y2 - G) * exp(-s) - g_ld)``.
    """
    c1 = layer.split
    dtype = x.dtype
    x1 = x[:, :c1]
    gx1, gx2 = grad_x[:, :c1], grad_x[:, c1:]
    params_f = _trainable(layer.F)
    x2 = x[:, c1:].detach().requires_grad_(True)
    with torch.enable_grad():
        f_out = layer._subnet(layer.F, x2, dtype)
    with torch.no_grad():
        y1 = x1 + f_out  # the arithmetic of layer.forward
    grads_f = _grad([f_out], [x2, *params_f], [-gx1])
    by_param = {id(p): g for p, g in zip(params_f, grads_f[1:], strict=True)}
    gx2_total = _add(gx2, grads_f[0])
    y1 = y1.detach().requires_grad_(True)
    with torch.enable_grad():
        s = layer._scale(y1)
        g_out = layer._subnet(layer.G, y1, dtype)
    with torch.no_grad():
        x2 = x2.detach()
        y2 = x2 * s.exp() + g_out  # the arithmetic of layer.forward
        e = (-s).exp()
        gy2 = gx2_total * e
        gs = -(gx2_total * (y2 - g_out) * e)
        if grad_logdet is not None:
            gs = gs - _per_sample(grad_logdet, gs)
    gh = _trainable(layer.H) + _trainable(layer.G)
    grads = _grad([s, g_out], [y1, *gh], [gs, -gy2])
    by_param.update(
        {id(p): _add(by_param.get(id(p)), g) for p, g in zip(gh, grads[1:], strict=True)}
    )
    grad_y = None
    if need_input_grad:
        with torch.no_grad():
            grad_y = torch.cat([_add(gx1, grads[0]), gy2], dim=1)
    y = torch.cat([y1.detach(), y2], dim=1)
    return y, grad_y, _param_grads(layer, by_param)


# -- fast steps: NICE's additive coupling -------------------------------------------------------


def _additive_forward_step(layer, y, grad_y, grad_logdet, need_input_grad) -> StepResult:
    """``y1 = x1``, ``y2 = x2 + m(x1)``: ``gx1 = gy1 + VJP_m(gy2)``, ``gx2 = gy2``."""
    c1 = layer.split
    x1 = y[:, :c1].detach().requires_grad_(need_input_grad)
    params = _trainable(layer.m)
    with torch.enable_grad():
        m_out = layer._subnet(layer.m, x1, y.dtype)
    with torch.no_grad():
        x2 = y[:, c1:] - m_out
    gy1, gy2 = grad_y[:, :c1], grad_y[:, c1:]
    grads = _grad([m_out], ([x1] if need_input_grad else []) + params, [gy2])
    grad_x = None
    if need_input_grad:
        grad_x = torch.cat([_add(gy1, grads.pop(0)), gy2], dim=1)
    return torch.cat([x1.detach(), x2], dim=1), grad_x, grads


def _additive_inverse_step(layer, x, grad_x, grad_logdet, need_input_grad) -> StepResult:
    """``x2 = y2 - m(y1)``: ``gy1 = gx1 - VJP_m(gx2)``, ``gy2 = gx2``."""
    c1 = layer.split
    y1 = x[:, :c1].detach().requires_grad_(need_input_grad)
    params = _trainable(layer.m)
    with torch.enable_grad():
        m_out = layer._subnet(layer.m, y1, x.dtype)
    with torch.no_grad():
        y2 = x[:, c1:] + m_out
    gx1, gx2 = grad_x[:, :c1], grad_x[:, c1:]
    grads = _grad([m_out], ([y1] if need_input_grad else []) + params, [-gx2])
    grad_y = None
    if need_input_grad:
        grad_y = torch.cat([_add(gx1, grads.pop(0)), gx2], dim=1)
    return torch.cat([y1.detach(), y2], dim=1), grad_y, grads


def register_reversible_step(layer_type: type, forward_step: StepFn, inverse_step: StepFn) -> None:
    """Register fast backward steps for ``layer_type`` (and its subclasses).

    ``forward_step(layer, y, grad_y, grad_logdet, need_input_grad)`` receives the output of
    ``layer(x)``, the gradient w.r.t. it and w.r.t. the layer's log-det (``[B]`` or None) and
    returns ``(x, grad_x, param_grads)``: the reconstructed input, the gradient w.r.t. it (None
    when not needed) and one gradient (or None) per trainable parameter, in
    ``layer.parameters()`` order. ``inverse_step`` is the same for ``layer.inverse``.
    """
    _REGISTRY[layer_type] = (forward_step, inverse_step)


register_reversible_step(EnhancedAffineCoupling, _enhanced_forward_step, _enhanced_inverse_step)
register_reversible_step(AdditiveCoupling, _additive_forward_step, _additive_inverse_step)


def reversible_step(layer: nn.Module, direction: str) -> StepFn:
    """The backward step used for ``layer``: a registered fast path, else the generic one."""
    for klass in type(layer).__mro__:
        if klass in _REGISTRY:
            steps = _REGISTRY[klass]
            return steps[0] if direction == "forward" else steps[1]
    return _generic_forward_step if direction == "forward" else _generic_inverse_step


# -- the autograd Function ----------------------------------------------------------------------


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return False, None
    return True, torch.get_autocast_dtype(device_type)


class _ReversibleFlow(torch.autograd.Function):
    """Run ``layers`` without a graph, keep only the output; rebuild layer by layer backwards."""

    @staticmethod
    def forward(ctx, x, layers, direction, *params):  # type: ignore[override]
        ctx.layers = layers
        ctx.direction = direction
        ctx.param_index = {id(p): i for i, p in enumerate(params)}
        ctx.input_dtype = x.dtype
        ctx.autocast = _autocast_state(x.device.type)
        ctx.device_type = x.device.type
        ctx.set_materialize_grads(False)
        logdet = zeros_logdet(x)
        out = x.detach()  # no views of a graph tensor inside (module hooks expect a grad_fn)
        order = layers if direction == "forward" else list(reversed(layers))
        for layer in order:
            out, ld = layer(out) if direction == "forward" else layer.inverse(out)
            logdet = logdet + ld
        ctx.save_for_backward(out)
        return out, logdet

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_logdet):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        layers = ctx.layers
        index = ctx.param_index
        param_grads: list[torch.Tensor | None] = [None] * len(index)
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        order = list(reversed(layers)) if ctx.direction == "forward" else list(layers)
        need_x = ctx.needs_input_grad[0]
        enabled, dtype = ctx.autocast
        cur, grad = out.detach(), grad_out
        with torch.autocast(ctx.device_type, dtype=dtype, enabled=enabled):
            for i, layer in enumerate(order):
                step = reversible_step(layer, ctx.direction)
                need = need_x or i < len(order) - 1
                cur, grad, grads = step(layer, cur, grad, grad_logdet, need)
                for p, g in zip(_trainable(layer), grads, strict=True):
                    j = index[id(p)]
                    param_grads[j] = _add(param_grads[j], g)
        grad_x = grad.to(ctx.input_dtype) if (need_x and grad is not None) else None
        return (grad_x, None, None, *param_grads)


def _unique_params(layers: Sequence[nn.Module]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for layer in layers:
        for p in _trainable(layer):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _run(layers: Sequence[nn.Module], x: torch.Tensor, direction: str):
    layers = list(layers)
    if not layers:
        raise ValueError("memory-saving flow: no layers")
    params = _unique_params(layers)
    return _ReversibleFlow.apply(x, layers, direction, *params)


def flow_forward(
    layers: Sequence[nn.Module], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y, logdet`` of the layers applied in order, with memory-saving backward.

    Same values as :meth:`FlowSequential.forward`; only ``y`` is kept for the backward pass.
    """
    return _run(layers, x, "forward")


def flow_inverse(
    layers: Sequence[nn.Module], y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x, logdet`` of the layers' inverses in reverse order, with memory-saving backward.

    Same values as :meth:`FlowSequential.inverse`; only ``x`` is kept for the backward pass.
    """
    return _run(layers, y, "inverse")
