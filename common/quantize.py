"""8-bit quantisation with a straight-through gradient (IRN's ``Quant``).

IRN quantises the generated LR image before it is stored or upscaled, so the network learns to
upscale images that really are 8-bit; rounding has no useful gradient, so the gradient is passed
straight through (Xiao et al., "Invertible Image Rescaling", ECCV 2020, arXiv:2005.05650,
sec. 3.3; Bengio et al. 2013, arXiv:1308.3432, for the straight-through estimator; Diss.
eq. 3.12-3.13; docs/method.md sec. 4.2).
"""

from __future__ import annotations

import torch

__all__ = ["quantize_ste"]


class _QuantizeSTE(torch.autograd.Function):
    """``round(clamp(x, 0, 1) * 255) / 255`` forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.input_dtype = x.dtype
        # float32 (float64 stays float64): k/255 is not representable in bf16/fp16, so a
        # reduced-precision result would fall off the 8-bit grid. Autocast must not lower it.
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch.round(x.to(dtype).clamp(0.0, 1.0) * 255.0) / 255.0

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.to(ctx.input_dtype)


def quantize_ste(x: torch.Tensor) -> torch.Tensor:
    """Quantise ``x`` to 8 bit: clamp to [0, 1] and round to the nearest multiple of 1/255.

    Straight-through estimator: the gradient is passed through **unchanged**, ``d/dx = 1``
    everywhere, also where the clamp is active (values outside [0, 1]). This follows the IRN
    authors' ``Quant`` (its backward returns the incoming gradient as is), not a "clamped STE"
    that would zero the gradient outside [0, 1].

    Rounding is ``torch.round`` (ties to even), as in the authors' code.

    Precision: computed in float32, even under autocast. The result is float32 for float32,
    float16 and bfloat16 input (k/255 is not exactly representable in the half formats, so
    casting back would leave the 8-bit grid), and float64 for float64 input. The gradient w.r.t.
    ``x`` has ``x``'s dtype.

    Args:
        x: any tensor, nominally an image in [0, 1].

    Returns:
        A tensor of ``x``'s shape with values in ``{0, 1/255, ..., 1}``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"quantize_ste: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"quantize_ste: expected a floating-point tensor, got {x.dtype}")
    return _QuantizeSTE.apply(x)
