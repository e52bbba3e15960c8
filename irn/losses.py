"""IRN's training objective (IRN sec. 3.3, Diss. table 2.1; docs/method.md sec. 4) and the
dissertation's
loss options.

All losses are sums over pixels (and channels) averaged over the batch, as the authors' code
(``reduction="sum"`` divided by the batch size):

* guidance ``L_guide = mean_b sum (y - LR_bicubic)^2`` (L2; IRN sec. 3.3, "LR guidance");
* reconstruction ``L_recon = mean_b sum sqrt((x' - x)^2 + eps)`` (Charbonnier-L1;
  IRN sec. 3.3, "HR reconstruction");
* distribution matching ``L_distr = mean_b sum z^2`` (IRN sec. 3.3, the practical surrogate
  ``-log N(z; 0, I)`` up to a constant).

``y_channel_usage = u`` (the dissertation's IRN-Y, appendix A.1) replaces a loss by
``(1 - u) * loss_RGB + u * loss_Y`` for guidance and reconstruction, with Y the BT.601 luma in
[0, 1] units (the Y the evaluation measures, Diss. eq. 2.24).
"""

from __future__ import annotations

import torch

from common.metrics import rgb_to_y

__all__ = ["LOSS_KINDS", "pixel_loss", "luma", "mixed_loss", "distribution_loss", "range_loss"]

LOSS_KINDS = ("l1", "l2", "charbonnier")
CHARBONNIER_EPS = 1e-6


def luma(x: torch.Tensor) -> torch.Tensor:
    """Differentiable BT.601 Y (in [16/255, 235/255]) of an RGB batch ``[B, 3, H, W]`` in [0, 1],
    the same :func:`common.metrics.rgb_to_y` the evaluation uses -> ``[B, 1, H, W]``."""
    return rgb_to_y(x).unsqueeze(1)


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """``mean_b sum_pixels rho(pred - target)`` with ``rho`` = ``|.|``, ``(.)^2`` or Charbonnier
    ``sqrt((.)^2 + 1e-6)``; computed in float32 (or wider) even under autocast."""
    diff = pred.float() - target.float() if pred.dtype != torch.float64 else pred - target
    if kind == "l2":
        per = diff * diff
    elif kind == "l1":
        per = diff.abs()
    elif kind == "charbonnier":
        per = torch.sqrt(diff * diff + CHARBONNIER_EPS)
    else:
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSS_KINDS}")
    return per.sum() / pred.shape[0]


def mixed_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str, y_channel_usage: float = 0.0
) -> torch.Tensor:
    """IRN-Y: ``(1 - u) * loss(RGB) + u * loss(Y)`` (``u = 0``: the authors' RGB loss)."""
    if y_channel_usage == 0.0:
        return pixel_loss(pred, target, kind)
    y_loss = pixel_loss(luma(pred), luma(target), kind)
    if y_channel_usage == 1.0:
        return y_loss
    return (1.0 - y_channel_usage) * pixel_loss(pred, target, kind) + y_channel_usage * y_loss


def distribution_loss(z: torch.Tensor) -> torch.Tensor:
    """``mean_b sum z^2`` (IRN's practical distribution-matching loss, IRN sec. 3.3)."""
    zf = z if z.dtype == torch.float64 else z.float()
    return (zf * zf).sum() / z.shape[0]


def range_loss(lr: torch.Tensor) -> torch.Tensor:
    """``mean_b sum (relu(y - 1) + relu(-y))``: how far the LR output ``y`` leaves [0, 1].

    Not in the papers. An 8-bit ``LR'`` clips whatever lies outside [0, 1], and the forward
    pass of a network trained on few bright photos overshoots on bright ones (a sunset's sky),
    so the stored ``LR'`` loses what the inverse needs. The guidance loss barely sees a small
    overshoot (the bicubic LR is just below 1 there); this hinge gives every sample outside the
    range the same pull back (``--lambda-range``).
    """
    lf = lr if lr.dtype == torch.float64 else lr.float()
    return (torch.relu(lf - 1.0) + torch.relu(-lf)).sum() / lr.shape[0]
