"""Train and evaluate each of the dissertation's IRN variants at the same small budget (issue 8).

Usage::

    python bench/run_variants.py --iters 200 --batch-size 4 --patch-size 64 --out runs/variants
    python bench/run_variants.py --only irn irn-c        # a subset
    python bench/run_variants.py --list                   # the variants and their flags

Each variant is ``python train_irn.py <common flags> <variant flags>`` on the scikit-image sample
photos (no ``--data``), then ``python evaluate.py`` on the held-out sample photos twice: the plain
protocol (docs/method.md sec. 5) and with LR' JPEG-compressed at quality 90 (the dissertation's
"compression-resistant rescaling"). Variants trained to upscale something else are also evaluated
that way: IRN-SR with ``--lr-source bicubic`` (super-resolution of the bicubic LR) and
zero-sample with ``--z zero``. The results go to ``<out>/variants.json`` and a Markdown table
``<out>/variants.md`` with the exact commands. Runs already finished (``<out>/<name>/last.pt`` at
the requested iteration) are not trained again, so an interrupted sweep can be continued.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as ``python bench/run_variants.py``

from common.atomic import atomic_write_json, atomic_write_text  # noqa: E402

# name -> (training flags, extra evaluation flags, what it is)
VARIANTS: dict[str, tuple[list[str], list[str], str]] = {
    "irn": ([], [], "the authors' IRN"),
    "irn-y": (["--y-channel-usage", "0.5"], [], "IRN-Y: half the loss on the Y channel"),
    "irn-2t": (["--clamp-tightness", "2"], [], "IRN-2T: clamp 2*sigmoid(2u)-1"),
    "irn-c": (["--jpeg-quality-range", "80", "100"], [], "IRN-C: JPEG q~U[80,100] in the loop"),
    "irn-sr": (["--sr-mode"], ["--lr-source", "bicubic"], "IRN-SR: upscale the bicubic LR"),
    "zero-sample": (["--zero-sample"], ["--z", "zero"], "train and upscale with z = 0"),
    "l1-guide-l2-recon": (
        ["--guide-loss", "l1", "--recon-loss", "l2"],
        [],
        "the dissertation's table 2.1 losses",
    ),
    "loss-flip": (
        ["--loss-flip-period", "50", "--loss-flip-scale", "4"],
        [],
        "loss flipping, 50-iteration phases, f = 4",
    ),
    "actnorm": (["--actnorm"], [], "ActNorm after each coupling"),
    "clip-value": (["--clip-value", "0.1"], [], "gradient value clipping at 0.1"),
    "quantized-losses": (
        ["--quantize-guide-loss", "--quantize-recon-loss"],
        [],
        "losses on the 8-bit LR' and HR'",
    ),
}


def _run(cmd: list[str], log: Path) -> None:
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))


def _finished(ckpt: Path, iters: int) -> bool:
    if not ckpt.exists():
        return False
    return int(torch.load(ckpt, weights_only=True, map_location="cpu")["step"]) >= iters


def _mean(path: Path) -> dict[str, float]:
    return json.loads(path.read_text())["datasets"][0]["mean"]


def markdown_table(rows: list[dict]) -> str:
    """The variants' results as a Markdown table (README / docs)."""
    lines = [
        "| variant | training flags | HR' PSNR-Y / SSIM-Y | HR' PSNR-RGB | LR' PSNR-Y | "
        "HR' PSNR-Y after JPEG q=90 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, j = r["plain"], r["jpeg90"]
        lr = f"{p['lr_psnr_y']:.2f}" if "lr_psnr_y" in p else "-"
        evaluated = ["; eval", *r["eval_flags"]] if r["eval_flags"] else []
        flags = " ".join(r["train_flags"] + evaluated)
        lines.append(
            f"| {r['variant']} | `{flags or '(defaults)'}` | {p['psnr_y']:.2f} / "
            f"{p['ssim_y']:.4f} | {p['psnr_rgb']:.2f} | {lr} | {j['psnr_y']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--draws", type=int, default=5, help="z draws per evaluated image")
    parser.add_argument("--out", type=Path, default=Path("runs/variants"))
    parser.add_argument("--only", nargs="*", default=None, help="variant names (see --list)")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (flags, eval_flags, what) in VARIANTS.items():
            print(f"{name:18s} {what}: {' '.join(flags) or '(defaults)'} {' '.join(eval_flags)}")
        return 0
    names = list(VARIANTS) if not args.only else args.only
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--only: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--iters", str(args.iters), "--batch-size", str(args.batch_size)]
    common += ["--patch-size", str(args.patch_size), "--threads", str(args.threads)]
    common += ["--seed", str(args.seed), "--val-every", str(args.iters), "--no-tensorboard"]
    rows = []
    for name in names:
        flags, eval_flags, what = VARIANTS[name]
        run_dir = args.out / name
        train_cmd = [
            sys.executable, "train_irn.py", *common, *flags, "--out", str(run_dir), "--overwrite"
        ]  # fmt: skip
        started = time.perf_counter()
        if not _finished(run_dir / "last.pt", args.iters):
            print(f"[{name}] training: {' '.join(train_cmd[1:])}", flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            _run(train_cmd, run_dir / "train.log")
        train_s = time.perf_counter() - started
        evals = {}
        for tag, extra in (("plain", []), ("jpeg90", ["--jpeg-quality", "90"])):
            out_json = run_dir / f"eval_{tag}.json"
            eval_cmd = [sys.executable, "evaluate.py", "--checkpoint", str(run_dir / "last.pt")]
            eval_cmd += ["--draws", str(args.draws), "--threads", str(args.threads)]
            eval_cmd += [*eval_flags, *extra, "--json", str(out_json)]
            _run(eval_cmd, run_dir / f"eval_{tag}.log")
            evals[tag] = _mean(out_json)
        row = {
            "variant": name,
            "what": what,
            "train_flags": flags,
            "eval_flags": eval_flags,
            "train_seconds": round(train_s, 1),
            "plain": evals["plain"],
            "jpeg90": evals["jpeg90"],
        }
        rows.append(row)
        p, j = evals["plain"], evals["jpeg90"]
        print(
            f"[{name}] HR' Y {p['psnr_y']:.2f} RGB {p['psnr_rgb']:.2f} | LR' Y "
            f"{p.get('lr_psnr_y', float('nan')):.2f} | JPEG90 HR' Y {j['psnr_y']:.2f}",
            flush=True,
        )
    settings = vars(args) | {"out": str(args.out)}
    atomic_write_json(args.out / "variants.json", {"settings": settings, "rows": rows})
    table = markdown_table(rows)
    atomic_write_text(args.out / "variants.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
