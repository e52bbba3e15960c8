"""How fast round-off grows into a different training run: the loss sequences of two runs of
``train_irn.py`` that compute the same thing in exact arithmetic, step by step.

The second run splits each batch into ``--micro-batch`` chunks (the same patches, the same z',
the same summed objective; ``tests/test_train_irn.py`` holds the two equal to 2e-5 over a few
steps), so the two runs differ only in the order of floating-point sums. Their relative loss
difference starts at 0 and grows about tenfold every few iterations on IRN x4: after a few dozen
iterations they are different runs, which is why a single run's validation curve moves by dB
early on, whatever the seed::

    python bench/divergence.py --amp --seed 3 --iters 40          # docs/results.md's numbers
    python bench/divergence.py --iters 40 -- --scale 2            # any train_irn.py flags after --

Prints ``step, loss A, loss B, |A - B| / |A|`` and the first step where the relative difference
passes 1e-4, 1e-2 and 1e-1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_irn  # noqa: E402

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=4, help="chunks of the second run")
    p.add_argument("--amp", action="store_true", help="both runs with --amp")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("extra", nargs="*", help="more train_irn.py flags (after --)")
    args = p.parse_args(argv)
    if args.batch_size % args.micro_batch or args.micro_batch == args.batch_size:
        p.error(f"--micro-batch {args.micro_batch} must divide --batch-size and be smaller")
    common = [
        "--seed", str(args.seed), "--batch-size", str(args.batch_size),
        "--patch-size", str(args.patch_size), "--iters", str(args.iters),
        "--val-every", str(10**9), "--log-every", "1", "--threads", str(args.threads),
        "--no-tensorboard", "--overwrite", *(["--amp"] if args.amp else []), *args.extra,
    ]  # fmt: skip
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, chunk in (("whole", []), ("chunked", ["--micro-batch", str(args.micro_batch)])):
            out = train_irn.main([*common, *chunk, "--out", str(Path(tmp) / name)])
            losses[name] = [float(h["total"]) for h in out["history"]]
    if len(losses["whole"]) != len(losses["chunked"]):
        raise SystemExit(
            f"the runs logged {len(losses['whole'])} and {len(losses['chunked'])} steps (a "
            "non-finite loss skipped a step); nothing to compare step by step"
        )
    rows = []
    whole, chunked = f"batch of {args.batch_size}", f"chunks of {args.micro_batch}"
    print(f"step  {'loss, ' + whole:>18}  {'loss, ' + chunked:>18}  rel. diff")
    for i, (a, b) in enumerate(zip(losses["whole"], losses["chunked"], strict=True), 1):
        rel = abs(a - b) / abs(a)
        rows.append((i, a, b, rel))
        print(f"{i:4d}  {a:18.6g}  {b:18.6g}  {rel:9.2e}")
    first = {}
    for level in (1e-4, 1e-2, 1e-1):
        first[level] = next((i for i, _, _, r in rows if r > level), None)
        print(f"relative difference first above {level:g}: step {first[level]}")
    return {"rows": rows, "first_above": first}


if __name__ == "__main__":
    main()
