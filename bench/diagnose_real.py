"""Why a model trained on the built-in photos fails on real photos: the measurements.

For each held-out photo (bench/heldout.py) and each validation photo, with one checkpoint::

    python bench/diagnose_real.py --checkpoint runs/irn_x4/last.pt --threads 1

prints PSNR-Y of the reconstruction ``f^-1(LR, z)`` from

* ``float+z``: the float ``LR'`` and the true ``z`` of the forward pass (the network's exactness);
* ``8bit+z``: the stored 8-bit ``LR'`` and the true ``z`` (sensitivity to the rounding);
* ``8bit+0``: the 8-bit ``LR'`` with ``z = 0``;
* ``8bit+N``: the 8-bit ``LR'`` with ``z ~ N(0, 1)`` (the evaluation protocol, one draw);
* ``8bit+zbar``: the 8-bit ``LR'`` with every ``z`` channel set to its own spatial mean (an
  oracle: how much of what ``z = 0`` loses is a constant offset per channel);

then bicubic's PSNR-Y and the forward statistics of irn/ood.py (whole 512 crop). ``--colours``
adds the colour coverage table: the share of saturated green, blue and red pixels in the
built-in training and validation photos and in the held-out photos.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.heldout import HELDOUT_ROOT, heldout_photos  # noqa: E402
from common.metrics import modcrop  # noqa: E402
from irn.checkpoints import load_irn  # noqa: E402
from irn.data import sample_photos  # noqa: E402
from irn.evaluation import bicubic_baseline, image_metrics_lowmem  # noqa: E402
from irn.ood import _crop_stats  # noqa: E402

HUES = {"green": (75.0, 165.0), "blue": (-165.0, -75.0), "red": (-20.0, 20.0)}  # hue, degrees


@torch.no_grad()
def reconstructions(model: torch.nn.Module, hr: np.ndarray, seed: int = 0) -> dict[str, float]:
    """PSNR-Y of the reconstructions of the module docstring."""
    s = int(model.scale)
    hr = modcrop(hr, s)
    x = torch.from_numpy(hr.transpose(2, 0, 1).astype(np.float32))[None]
    y, _ = model(x)
    lr, z = y[:, :3], y[:, 3:]
    lr8 = torch.round(lr.clamp(0, 1) * 255.0) / 255.0
    gen = torch.Generator().manual_seed(seed)
    cases = {
        "float+z": (lr, z),
        "8bit+z": (lr8, z),
        "8bit+0": (lr8, torch.zeros_like(z)),
        "8bit+N": (lr8, torch.randn(z.shape, generator=gen)),
        "8bit+zbar": (lr8, z.mean((2, 3), keepdim=True).expand_as(z)),
    }
    ref = np.round(hr * 255.0).astype(np.uint8)
    out = {}
    for name, (a, b) in cases.items():
        rec, _ = model.inverse(torch.cat([a, b], 1))
        rec8 = torch.round(rec.clamp(0, 1) * 255.0)[0].numpy().transpose(1, 2, 0)
        out[name] = image_metrics_lowmem(ref, rec8.astype(np.uint8), crop_border=s)["psnr_y"]
    return out


@torch.no_grad()
def z_offset_rms(model: torch.nn.Module, hr: np.ndarray) -> float:
    """rms over channels of the spatial mean of each ``z`` channel: the constant part of ``z``
    (compare with ``z rms``; on a flat photo most of ``z`` can be this offset)."""
    hr = modcrop(hr, int(model.scale))
    x = torch.from_numpy(hr.transpose(2, 0, 1).astype(np.float32))[None]
    z = model(x)[0][:, 3:]
    return float(z.mean((2, 3)).pow(2).mean().sqrt())


def colour_share(img: np.ndarray) -> dict[str, float]:
    """Share of pixels with saturation > 0.3 and value > 0.15 whose hue is in each band."""
    mx, mn = img.max(-1), img.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-12), 0.0)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    hue = np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2 * r - g - b))  # red 0, green 120
    vivid = (sat > 0.3) & (mx > 0.15)
    return {k: float(np.mean(vivid & (hue >= lo) & (hue < hi))) for k, (lo, hi) in HUES.items()}


def colour_table(root: Path) -> str:
    groups = {
        "classic training (6)": [i.load() for i in sample_photos("train", "classic")],
        "broad training (8)": [i.load() for i in sample_photos("train", "broad")],
        "broad validation (3)": [i.load() for i in sample_photos("val", "broad")],
        "held-out (13 crops)": [hr for _, hr in heldout_photos(root)],
    }
    lines = ["| images | green | blue | red |", "|---|---|---|---|"]
    for name, imgs in groups.items():
        shares = [colour_share(i) for i in imgs]
        cells = [f"{100 * np.mean([s[k] for s in shares]):.1f}%" for k in HUES]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def diagnose(model: torch.nn.Module, photos) -> str:
    lines = [
        "| photo | float+z | 8bit+z | 8bit+0 | 8bit+N | 8bit+zbar | bicubic | z rms | "
        "z offset rms | LR' rmse | clip |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, hr in photos:
        rec = reconstructions(model, hr)
        bic = bicubic_baseline(hr, int(model.scale))["psnr_y"]
        st = _crop_stats(model, modcrop(hr, int(model.scale)))
        cells = " | ".join(f"{rec[k]:.1f}" for k in rec)
        lines.append(
            f"| {name} | {cells} | {bic:.1f} | {st['z_rms']:.4f} | {z_offset_rms(model, hr):.4f} "
            f"| {st['lr_rmse']:.2f} | "
            f"{100 * st['clip']:.2f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="IRN checkpoint to diagnose.")
    p.add_argument("--root", default=str(HELDOUT_ROOT), help="Folder of the wallpapers.")
    p.add_argument("--colours", action="store_true", help="Also print the colour coverage.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--photos", nargs="*", default=None, help="Only these photos (short names).")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.colours:
        print(colour_table(Path(args.root)), flush=True)
    if args.checkpoint:
        model, _ = load_irn(args.checkpoint)
        val = [(i.name, i.load()) for i in sample_photos("val", "broad")]
        photos = heldout_photos(Path(args.root)) + val
        if args.photos:
            photos = [(n, hr) for n, hr in photos if n in args.photos]
        print(diagnose(model, photos), flush=True)


if __name__ == "__main__":
    main()
