"""Is the training data loader a bottleneck? Samples/s of the loader alone vs the training step.

The loader is ``train_irn.py``'s own (:class:`irn.data.PatchDataset` through
:func:`irn.data.make_loader`): a random HR crop, its MATLAB-bicubic LR (computed on the crop plus
a margin, equal to the full image's), flips and rotations. It is timed reading the images from
disk (PNG decode per sample, as ``--cache off``) and from memory (``--cache on``), for each
``--workers`` count; the training step (``bench_irn``'s: downscale, quantise, upscale, three
losses, backward, clip, Adam) at the same batch and patch for float32 and bf16 AMP::

    python bench/bench_loader.py                          # DIV2K-sized PNGs made from the samples
    python bench/bench_loader.py --data DIV2K/DIV2K_train_HR --workers 0 2 4
    python bench/bench_loader.py --skip-step --batches 20  # the loader only

Without ``--data``, ``--images`` PNG files of 2040x1356 (the size of most DIV2K training
images) are written to a temporary folder: the six training photos of scikit-image, resized to
that size with OpenCV, so decoding costs what a real photo costs. Printed: one row per loader
mode and step configuration with samples/s; "step / loader" is how many times faster the loader
delivers samples than the step consumes them (> 1: the loader keeps up). ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.atomic import atomic_write_json  # noqa: E402
from common.images import save_image  # noqa: E402
from irn.data import (  # noqa: E402
    PatchDataset,
    StepSampler,
    load_folder,
    make_loader,
    sample_photos,
)

__all__ = ["main", "loader_rate", "write_sample_pngs"]


def write_sample_pngs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` PNGs of ``size`` (width, height) made from the scikit-image training photos."""
    import cv2

    photos = sample_photos("train")
    paths = []
    for i in range(count):
        img = photos[i % len(photos)].image
        big = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC).clip(0, 1)
        path = folder / f"{i:04d}.png"
        save_image(path, (big * 255 + 0.5).astype(np.uint8))
        paths.append(path)
    return paths


def loader_rate(
    images: list, patch: int, scale: int, batch: int, workers: int, batches: int, seed: int = 10
) -> float:
    """Samples/s of the training loader over ``batches`` batches, after one untimed batch
    (worker start-up is excluded)."""
    dataset = PatchDataset(images, patch, scale, seed=seed)
    sampler = StepSampler(batch, 0, batches + 1)
    it = iter(make_loader(dataset, sampler, workers, seed=seed))
    next(it)
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += b["hr"].shape[0]
    return n / (time.perf_counter() - t0)


def step_rate(scale: int, batch: int, patch: int, config: str, steps: int) -> float:
    """Samples/s of ``bench_irn``'s training step ``config`` (median of ``steps`` after one)."""
    import statistics

    from bench import bench_irn

    ns = argparse.Namespace(
        scale=scale, batch_size=batch, patch_size=patch, blocks=None, gc=32, seed=0,
        checkpoint=None,
    )  # fmt: skip
    built = bench_irn.build(ns, config, torch.device("cpu"))
    built["step"]()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        built["step"]()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="HR images (default: made up).")
    p.add_argument("--images", type=int, default=12, help="PNGs to make without --data.")
    p.add_argument("--image-size", type=int, nargs=2, default=(2040, 1356), metavar=("W", "H"))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=144)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="Loader processes.")
    p.add_argument("--batches", type=int, default=8, help="Timed loader batches per mode.")
    p.add_argument("--steps", type=int, default=1, help="Timed training steps per config.")
    p.add_argument("--configs", nargs="*", default=["fp32", "amp"], help="bench_irn configs.")
    p.add_argument("--skip-step", action="store_true", help="Time the loader only.")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the step.")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data: {args.data} is not a folder")
    if min(args.workers) < 0:
        p.error(f"--workers: counts must be >= 0, got {args.workers}")
    for flag in ("images", "batch_size", "patch_size", "batches", "steps"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: must be >= 1, got {getattr(args, flag)}")
    if args.patch_size % args.scale:
        p.error(f"--patch-size {args.patch_size} must be a multiple of --scale {args.scale}")
    torch.set_num_threads(args.threads)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data
        if folder is None:
            folder = Path(tmp)
            w, h = args.image_size
            write_sample_pngs(folder, args.images, (w, h))
        from_disk = load_folder(folder, "--data")
        in_memory = load_folder(folder, "--data", decode=True)
        for name, items in (("disk", from_disk), ("memory", in_memory)):
            for workers in args.workers:
                rate = loader_rate(
                    items, args.patch_size, args.scale, args.batch_size, workers, args.batches
                )
                rows.append({"what": f"loader, {name}, {workers} workers", "samples_per_s": rate})
                print(f"{rows[-1]['what']:34s} {rate:9.1f} samples/s", flush=True)
    if not args.skip_step:
        for config in args.configs:
            rate = step_rate(args.scale, args.batch_size, args.patch_size, config, args.steps)
            rows.append({"what": f"training step, {config}", "samples_per_s": rate})
            print(f"{rows[-1]['what']:34s} {rate:9.2f} samples/s", flush=True)
    steps = [r for r in rows if r["what"].startswith("training step")]
    if steps:
        fastest = max(r["samples_per_s"] for r in steps)
        print(f"\nloader samples/s divided by the fastest step's ({fastest:.2f} samples/s):")
        for r in rows:
            if r["what"].startswith("loader"):
                r["times_the_step"] = r["samples_per_s"] / fastest
                print(f"  {r['what']:34s} {r['times_the_step']:8.1f}x")
    result = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "rows": rows}  # fmt: skip
    if args.json is not None:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
