"""Small helpers shared by every invertible layer.

One reduction (`sum_except_batch`), one place that decides the dtype of a log-determinant, and the
input checks that turn a bad shape into a clear ``ValueError`` naming the layer, instead of a
traceback from deep inside ``torch``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_CHECK_FINITE = False


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``[B, ...] -> [B]``, accumulated and returned in
    :func:`logdet_dtype` (float32 for half-precision input, which could overflow fp16's 65504
    on an image-sized sum)."""
    return x.reshape(x.shape[0], -1).sum(dim=1, dtype=logdet_dtype(x))


def logdet_dtype(x: torch.Tensor) -> torch.dtype:
    """Log-determinants are float32 or wider, even when ``x`` is half precision
    (docs/method.md sec. 1)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def zeros_logdet(x: torch.Tensor) -> torch.Tensor:
    """A ``[B]`` zero log-determinant on ``x``'s device, in :func:`logdet_dtype`."""
    return torch.zeros(x.shape[0], dtype=logdet_dtype(x), device=x.device)


def broadcast_logdet(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a data-independent (scalar) log-determinant to shape ``[B]`` explicitly."""
    return value.to(logdet_dtype(x)).expand(x.shape[0]).clone()


@contextlib.contextmanager
def check_finite(enabled: bool = True) -> Iterator[None]:
    """Context manager: while enabled, every layer rejects NaN/inf inputs with a ``ValueError``.

    Off by default (the check synchronises CUDA and costs a reduction per layer); switch it on
    when hunting a divergence::

        with common.check_finite():
            y, logdet = model(x)
    """
    global _CHECK_FINITE
    previous = _CHECK_FINITE
    _CHECK_FINITE = enabled
    try:
        yield
    finally:
        _CHECK_FINITE = previous


def finite_checks_enabled() -> bool:
    return _CHECK_FINITE


def check_input(
    layer: torch.nn.Module,
    x: torch.Tensor,
    channels: int | None = None,
    min_dim: int = 2,
    even_spatial: bool = False,
    direction: str = "forward",
) -> None:
    """Validate ``x`` for ``layer``; raise ``ValueError`` naming the layer and the shape.

    Args:
        channels: the channel count (dim 1) the layer was built for, or None to skip.
        min_dim: fewest dimensions accepted (2 for ``[B, C]``, 4 for images).
        even_spatial: require even height and width (Haar, Squeeze).
        direction: "forward" or "inverse", for the message.
    """
    name = type(layer).__name__
    where = f"{name}.{direction}" if direction != "forward" else name
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        layout = "[B, C, H, W]" if min_dim >= 4 else "[B, C, ...]"
        raise ValueError(f"{where}: expected a tensor {layout}, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{where}: expected {channels} channels (dim 1), got shape {tuple(x.shape)}"
        )
    if even_spatial and (x.shape[-1] % 2 or x.shape[-2] % 2):
        raise ValueError(
            f"{where}: height and width must be even, got shape {tuple(x.shape)}; "
            "crop or pad the image to a multiple of the scale first"
        )
    if _CHECK_FINITE and not torch.isfinite(x).all():
        raise ValueError(f"{where}: input of shape {tuple(x.shape)} contains NaN or inf")
