"""The first losses of fixed-seed training runs, to show a refactor computes the same numbers.

Record them before a change and compare after it; every case must be bit-identical (the runs
are deterministic on one machine)::

    python bench/loss_sequence.py before.json            # on the old code
    python bench/loss_sequence.py after.json --compare before.json

The cases cover the paths of a training step: IRN as is, with micro-batches and JPEG in the
loop, with bf16 autocast, with memory-saving backprop and the loss flip schedule, IRN-Color and
Glow. Each IRN case is 20 iterations at batch 4 / patch 32 on the sample photos (one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_glow  # noqa: E402
import train_irn  # noqa: E402
import train_irn_color  # noqa: E402
from common.atomic import atomic_write_json

COMMON = [
    "--iters",
    "20",
    "--batch-size",
    "4",
    "--patch-size",
    "32",
    "--val-every",
    "1000",
    "--save-every",
    "1000",
    "--no-tensorboard",
    "--seed",
    "3",
    "--threads",
    "1",
    "--sample-set",
    "classic",
    "--color-augment",
    "off",
]  # the recording's data; fmt: skip
CASES = {
    "irn": (train_irn.main, []),
    "irn_micro_jpeg": (train_irn.main, ["--micro-batch", "2", "--jpeg-quality-range", "70", "95"]),
    "irn_amp": (train_irn.main, ["--amp"]),
    "irn_memsave_flip": (
        train_irn.main,
        ["--memory-saving", "--loss-flip-period", "5", "--loss-flip-scale", "2"],
    ),
    "color": (train_irn_color.main, []),
}
GLOW = ["--epochs", "1", "--no-fd", "--no-tensorboard", "--seed", "3", "--threads", "1"]


def record() -> dict[str, list[float]]:
    """Each case's training losses (IRN: the first 20 totals; Glow: its first 20 steps)."""
    out = {}
    for name, (main, extra) in CASES.items():
        with tempfile.TemporaryDirectory() as folder:
            result = main([*COMMON, *extra, "--out", folder])
        out[name] = [h["total"] for h in result["history"]]
    with tempfile.TemporaryDirectory() as folder:
        out["glow"] = train_glow.main([*GLOW, "--out", folder])["losses"][:20]
    return out


def compare(now: dict[str, list[float]], before: dict[str, list[float]]) -> list[str]:
    """One line per case: bit-identical, or the first step where the losses differ."""
    lines = []
    for name, old in before.items():
        new = now.get(name)
        if new == old:
            lines.append(f"{name}: bit-identical ({len(old)} losses)")
            continue
        if new is None:
            lines.append(f"{name}: missing")
            continue
        pairs = enumerate(zip(old, new, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(old), len(new)))
        lines.append(f"{name}: DIFFERS from step {first + 1}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="JSON file for the recorded losses")
    parser.add_argument("--compare", type=Path, help="an earlier recording to compare with")
    args = parser.parse_args(argv)
    if args.compare is not None and not args.compare.is_file():
        parser.error(f"--compare {args.compare}: no such file")
    now = record()
    atomic_write_json(args.out, now, indent=1)
    if args.compare is None:
        return 0
    lines = compare(now, json.loads(args.compare.read_text()))
    print("\n".join(lines))
    return 0 if all("bit-identical" in line for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
