"""Is an image like the ones the checkpoint was trained on? Forward statistics and a warning.

An IRN trained on a few photos can fail badly on photos unlike them (docs/real_photos.md): the
forward pass ``f(HR) = (LR', z)`` then leaves its training regime, which shows in three numbers
measured without any upscaling:

* ``z_rms``: ``sqrt(mean z^2)``, the spread of the latent (IRN sec. 3.3: the ``sum z^2`` loss
  drives it towards 0 on the training data; detail the network cannot place in ``LR'`` stays in
  ``z``, which the upscaling replaces by a fresh sample);
* ``lr_rmse``: the RMS difference between ``LR'`` and the MATLAB-bicubic LR, in 8-bit levels
  (the guidance loss, IRN sec. 3.3, keeps it small on the training data);
* ``clip``: the fraction of ``LR'`` samples outside ``[0, 1]`` (by more than half a level),
  which the 8-bit storage clips and the inverse never sees.

Each is taken on up to five crops of the image (centre and the centres of the four quadrants,
:data:`CROP` pixels) and the largest value is kept, so a small out-of-distribution region is
not averaged away. At the end of training the statistics of the training images are stored in
the checkpoint (``checkpoint["extra"]["forward_stats"]``, :func:`reference_stats`);
:func:`ood_warning` compares an image's statistics with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from common.metrics import modcrop
from irn.evaluation import bicubic_resize

__all__ = [
    "CROP",
    "STATS",
    "crops",
    "forward_stats",
    "reference_stats",
    "training_reference",
    "ood_warning",
]

CROP = 256
STATS = ("z_rms", "lr_rmse", "clip")
# An image is flagged when a statistic exceeds FACTOR x the largest training value (z_rms,
# lr_rmse) or the largest training clip fraction plus CLIP_MARGIN.
FACTOR = 2.0
CLIP_MARGIN = 0.01
MAX_REFERENCE_IMAGES = 16


def crops(hr: np.ndarray, scale: int, size: int = CROP) -> list[np.ndarray]:
    """The centre crop and the centres of the four quadrants, ``size`` pixels (a multiple of
    ``scale``; the whole modcropped image when it is smaller)."""
    hr = modcrop(hr, scale)
    h, w = hr.shape[:2]
    size -= size % scale
    if h <= size or w <= size:
        return [hr]
    centres = [(h // 2, w // 2), (h // 4, w // 4), (h // 4, 3 * w // 4)]
    centres += [(3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)]
    out = []
    for cy, cx in centres:
        top = min(max(0, cy - size // 2), h - size)
        left = min(max(0, cx - size // 2), w - size)
        top, left = top - top % scale, left - left % scale
        out.append(np.ascontiguousarray(hr[top : top + size, left : left + size]))
    return out


@torch.no_grad()
def _crop_stats(model: torch.nn.Module, crop: np.ndarray) -> dict[str, float]:
    scale = int(model.scale)
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(crop.astype(np.float32).transpose(2, 0, 1)))
    x = x[None].to(device)  # NCHW in memory too, whatever the model's layout option
    y, _ = model(x)
    lr, z = y[0, :3].float().cpu().numpy(), y[0, 3:].float()
    bic = bicubic_resize(crop.astype(np.float64), scale, up=False).transpose(2, 0, 1)
    half = 0.5 / 255.0
    return {
        "z_rms": float(torch.sqrt((z * z).mean())),
        "lr_rmse": float(np.sqrt(np.mean((lr - bic) ** 2)) * 255.0),
        "clip": float(np.mean((lr < -half) | (lr > 1.0 + half))),
    }


def forward_stats(model: torch.nn.Module, hr: np.ndarray) -> dict[str, float]:
    """The largest of each statistic over the crops of ``hr`` (RGB float HWC in [0, 1])."""
    was_training = model.training
    model.eval()
    try:
        rows = [_crop_stats(model, c) for c in crops(hr, int(model.scale))]
    finally:
        model.train(was_training)
    return {k: max(r[k] for r in rows) for k in STATS}


def reference_stats(model: torch.nn.Module, images: Sequence[np.ndarray]) -> dict:
    """What the checkpoint saw: the largest and the mean of each statistic over (up to
    :data:`MAX_REFERENCE_IMAGES` of) the training images."""
    rows = [forward_stats(model, img) for img in list(images)[:MAX_REFERENCE_IMAGES]]
    if not rows:
        return {}
    out: dict = {"images": len(rows)}
    for k in STATS:
        out[f"{k}_max"] = max(r[k] for r in rows)
        out[f"{k}_mean"] = float(np.mean([r[k] for r in rows]))
    return out


def training_reference(model: torch.nn.Module, items: Sequence) -> dict:
    """:func:`reference_stats` of up to :data:`MAX_REFERENCE_IMAGES` training images (evenly
    spaced in the list; ``items`` are :class:`irn.data.NamedImage`), for the checkpoint."""
    n = len(items)
    picks = np.unique(np.linspace(0, n - 1, min(n, MAX_REFERENCE_IMAGES)).round().astype(int))
    return reference_stats(model, [items[int(i)].load() for i in picks])


def out_of_distribution(stats: Mapping[str, float], reference: Mapping) -> list[str]:
    """The statistics of ``stats`` beyond the reference's bounds, each as ``"name value vs
    bound"`` (empty: in distribution, or no reference to compare with)."""
    if not reference:
        return []
    found = []
    for k in ("z_rms", "lr_rmse"):
        bound = FACTOR * reference[f"{k}_max"]
        if stats[k] > bound:
            found.append(f"{k} {stats[k]:.4g} > {bound:.4g}")
    bound = reference["clip_max"] + CLIP_MARGIN
    if stats["clip"] > bound:
        found.append(f"LR' clipped {100 * stats['clip']:.2f}% > {100 * bound:.2f}%")
    return found


def ood_warning(name: str, stats: Mapping[str, float], reference: Mapping) -> str | None:
    """A one-line warning naming the image when its forward statistics lie outside what the
    checkpoint saw in training (``None`` otherwise)."""
    found = out_of_distribution(stats, reference)
    if not found:
        return None
    return (
        f"warning: {name} is unlike the checkpoint's training images ({'; '.join(found)}; "
        f"the training maximum x{FACTOR:g}): its rescaling is likely poor, possibly below "
        "bicubic (docs/real_photos.md)"
    )


def check_image(
    model: torch.nn.Module, hr: np.ndarray, name: str, info: Mapping | None
) -> tuple[dict, str | None]:
    """``(statistics, warning or None)`` of an HR image against the reference stored in the
    checkpoint (``info`` from :func:`irn.checkpoints.load_irn`; no reference: no warning)."""
    stats = forward_stats(model, hr)
    reference = dict((info or {}).get("forward_stats") or {})
    return stats, ood_warning(name, stats, reference)
