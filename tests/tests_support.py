"""Small synthetic images for end-to-end tests (no download, a few KiB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.images import save_image


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    f = rng.uniform(3, 9, size=3)
    base = np.stack([np.sin(yy / f[0]), np.cos(xx / f[1]), np.sin((xx + yy) / f[2])], -1)
    return ((base + 1) / 2 * 0.85 + 0.15 * rng.random((h, w, 3))).astype(np.float32)


def tiny_images(root: Path) -> tuple[Path, Path]:
    """Three training PNGs (32-40 px) and two validation PNGs (48-72 px) under ``root``."""
    train_dir, val_dir = root / "train", root / "val"
    for i, (h, w) in enumerate([(32, 40), (36, 32), (40, 40)]):
        save_image(train_dir / f"t{i}.png", smooth_image(h, w, i))
    for i, (h, w) in enumerate([(64, 72), (48, 56)]):
        save_image(val_dir / f"v{i}.png", smooth_image(h, w, 10 + i))
    return train_dir, val_dir
