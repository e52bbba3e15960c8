"""Validation curves of several ``train_irn.py`` runs side by side, read from their TensorBoard
events: each run's PSNR-Y / SSIM-Y at every validation step, the mean, standard deviation and
range over the runs, a reference curve's place in that range, and paired differences.

Seed noise is large early in training (several dB at iteration 200 on the sample photos), so one
run says little; this is how docs/results.md's curve tables and their statistics are made::

    python bench/curves.py runs/curve_seed10 runs/curve_seed1 runs/curve_seed2 \\
        --reference 25.72,27.03,28.05,28.35,28.70 \\
        --pair runs/curve_seed10:runs/curve_seed10_amp --pair runs/curve_seed1:runs/curve_seed1_amp

``--plot FILE.png`` draws the curves (Pillow, no plotting library): a colour per run, the
second run of a pair dashed in its first run's colour, the reference thick black,
``--bicubic`` as a grey level.

A run is a folder holding ``tb/`` (train_irn.py's default ``--logdir``) or a TensorBoard folder
itself. ``--pair A:B`` reports ``B - A`` at every step both validated, then the mean of the
pairs' differences and its standard error (sample standard deviation / sqrt(pairs)).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as ``python bench/curves.py``

from common.atomic import atomic_save_pil  # noqa: E402

__all__ = ["read_curve", "summarise", "plot_curves", "main"]

PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#e377c2", "#7f7f7f"]


def _event_dir(run: Path) -> Path:
    for cand in (run / "tb", run):
        if cand.is_dir() and any(cand.glob("events.out.tfevents.*")):
            return cand
    raise SystemExit(f"{run}: no TensorBoard events in {run}/tb or {run} (a train_irn.py --out?)")


def read_curve(run: str | Path, metric: str = "psnr_y") -> dict[int, tuple[float, float]]:
    """``{step: (metric, ssim_y)}`` of a run's validations, ``metric`` = ``psnr_y`` (default),
    ``ssim_y``, ``lr_psnr_y``, ... (the ``val/`` scalar; the last value logged per step, so a
    resumed run that validated a step twice counts once)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(_event_dir(Path(run))), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    if f"val/{metric}" not in tags:
        raise SystemExit(f"{run}: no validation in its events (val/{metric} missing)")
    psnr = {e.step: e.value for e in acc.Scalars(f"val/{metric}")}
    ssim = {e.step: e.value for e in acc.Scalars("val/ssim_y")} if "val/ssim_y" in tags else {}
    return {s: (psnr[s], ssim.get(s, math.nan)) for s in sorted(psnr)}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, sd


def summarise(
    curves: dict[str, dict[int, tuple[float, float]]],
    reference: list[float] | None = None,
    pairs: list[tuple[str, str]] | None = None,
    group: list[str] | None = None,
) -> dict:
    """The numbers :func:`main` prints: steps every run of ``group`` (default: all ``curves``)
    validated, per-step mean / sd / min / max of their PSNR-Y, the reference's offset from the
    mean and whether it lies in the range, and the paired differences (runs of ``curves``)."""
    group = list(curves) if group is None else group
    steps = sorted(set.intersection(*(set(curves[n]) for n in group)))
    if not steps:
        raise SystemExit("the runs share no validation step")
    stats = {}
    for s in steps:
        vals = [curves[n][s][0] for n in group]
        mean, sd = _mean_sd(vals)
        stats[s] = {"mean": mean, "sd": sd, "min": min(vals), "max": max(vals)}
    out: dict = {"steps": steps, "stats": stats}
    if reference is not None:
        if len(reference) != len(steps):
            raise SystemExit(
                f"--reference has {len(reference)} values; the runs share {len(steps)} "
                f"validation steps ({', '.join(map(str, steps))})"
            )
        out["reference"] = {
            s: {
                "value": r,
                "minus_mean": r - stats[s]["mean"],
                "in_range": stats[s]["min"] <= r <= stats[s]["max"],
            }
            for s, r in zip(steps, reference, strict=True)
        }
    if pairs:
        diffs = {}
        for a, b in pairs:
            ca, cb = curves[a], curves[b]
            diffs[(a, b)] = {s: cb[s][0] - ca[s][0] for s in sorted(set(ca) & set(cb))}
        last = steps[-1]
        at_last = [d[last] for d in diffs.values() if last in d]
        mean, sd = _mean_sd(at_last) if at_last else (math.nan, math.nan)
        out["pairs"] = {
            "diffs": diffs,
            "last_step": last,
            "mean": mean,
            "se": sd / math.sqrt(len(at_last)) if at_last else math.nan,
            "n": len(at_last),
        }
    return out


def plot_curves(
    lines: list[tuple[str, dict[int, float], bool, int]],
    path: str | Path,
    reference: dict[int, float] | None = None,
    bicubic: float | None = None,
    title: str = "validation PSNR-Y",
) -> Path:
    """A PNG line chart of ``(label, {step: psnr}, dashed, colour index)`` curves (Pillow)."""
    from PIL import Image, ImageDraw, ImageFont

    w, h, left, right, top, bottom = 900, 560, 70, 250, 40, 50
    font = ImageFont.load_default(size=14)
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    values = [v for _, c, _, _ in lines for v in c.values()]
    values += list((reference or {}).values()) + ([bicubic] if bicubic is not None else [])
    steps = sorted({s for _, c, _, _ in lines for s in c} | set(reference or {}))
    if not values or not steps:
        raise SystemExit("--plot: nothing to draw")
    lo, hi = math.floor(min(values)), math.ceil(max(values))
    hi = hi if hi > lo else lo + 1
    x0, x1 = steps[0], steps[-1]
    pad = 20  # pixels between the frame and the first / last step

    def xy(step: float, v: float) -> tuple[float, float]:
        x = left + pad + (step - x0) / max(x1 - x0, 1) * (w - left - right - 2 * pad)
        return x, top + (hi - v) / (hi - lo) * (h - top - bottom)

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in range(lo, hi + 1):
        _, y = xy(0, v)
        d.line([left, y, w - right, y], fill="#e6e6e6")
        d.text((left - 8, y), f"{v}", fill="black", font=font, anchor="rm")
    for s in steps:
        x, _ = xy(s, lo)
        d.text((x, h - bottom + 8), str(s), fill="black", font=font, anchor="mt")
    d.text((w / 2 - right / 2, 12), title, fill="black", font=font, anchor="mt")
    d.text((left + (w - left - right) / 2, h - 18), "iteration", fill="black", font=font,
           anchor="mt")  # fmt: skip
    legend: list[tuple[str, str, int, bool]] = []
    if bicubic is not None:
        _, y = xy(0, bicubic)
        d.line([left, y, w - right, y], fill="#999999", width=2)
        legend.append((f"bicubic {bicubic:.2f}", "#999999", 2, False))

    def polyline(curve: dict[int, float], color: str, width: int, dashed: bool) -> None:
        pts = [xy(s, curve[s]) for s in sorted(curve)]
        for (xa, ya), (xb, yb) in zip(pts, pts[1:], strict=False):
            if not dashed:
                d.line([xa, ya, xb, yb], fill=color, width=width)
                continue
            n = max(int(math.hypot(xb - xa, yb - ya) // 8), 1)
            for i in range(0, n, 2):
                fa, fb = i / n, min(i + 1, n) / n
                seg = [xa + (xb - xa) * fa, ya + (yb - ya) * fa]
                seg += [xa + (xb - xa) * fb, ya + (yb - ya) * fb]
                d.line(seg, fill=color, width=width)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)

    for label, curve, dashed, k in lines:
        color = PALETTE[k % len(PALETTE)]
        polyline(curve, color, 2, dashed)
        legend.append((label, color, 2, dashed))
    if reference:
        polyline(reference, "black", 4, False)
        legend.append(("reference", "black", 4, False))
    for i, (label, color, width, dashed) in enumerate(legend):
        y = top + 10 + 20 * i
        xa = w - right + 15
        if dashed:
            for k in range(0, 30, 10):
                d.line([xa + k, y, xa + k + 5, y], fill=color, width=width)
        else:
            d.line([xa, y, xa + 30, y], fill=color, width=width)
        d.text((xa + 38, y), label, fill="black", font=font, anchor="lm")
    path = Path(path)
    atomic_save_pil(path, img)
    return path


def _parse_pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"--pair {text!r}: expected RUN_A:RUN_B")
    return a, b


def _parse_reference(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--reference {text!r}: expected comma-separated PSNR-Y values"
        ) from None


def _print_pairs(res: dict, f: str) -> None:
    """The paired differences of :func:`summarise`, per pair and as mean / standard error."""
    pr = res["pairs"]
    print()
    for (a, b), d in pr["diffs"].items():
        print(f"{b} - {a}: " + ", ".join(f"{s}: {v:+{f}}" for s, v in d.items()))
    for s in res["steps"]:
        at = [d[s] for d in pr["diffs"].values() if s in d]
        if len(at) > 1:
            mean, sd = _mean_sd(at)
            print(f"mean difference at {s}: {mean:+.4f}, standard error "
                  f"{sd / math.sqrt(len(at)):.4f} ({len(at)} pairs)")  # fmt: skip
    print(
        f"mean difference at {pr['last_step']} over {pr['n']} pair(s): {pr['mean']:+.3f} dB"
        + (f", standard error {pr['se']:.3f} dB" if pr["n"] > 1 else "")
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "runs",
        nargs="*",
        help="train_irn.py --out folders (or TensorBoard folders) whose statistics are printed; "
        "none: every run named by --pair",
    )
    p.add_argument("--reference", type=_parse_reference, help="PSNR-Y per shared step, a,b,c")
    p.add_argument("--pair", type=_parse_pair, action="append", default=[], help="RUN_A:RUN_B")
    p.add_argument("--plot", help="write the curves as a PNG chart to this file")
    p.add_argument("--bicubic", type=float, help="bicubic PSNR-Y, drawn as a level in --plot")
    p.add_argument("--title", default="validation PSNR-Y", help="title of --plot")
    p.add_argument(
        "--metric",
        default="psnr_y",
        help="validation scalar to summarise: psnr_y, ssim_y, lr_psnr_y, psnr_rgb, ...",
    )
    args = p.parse_args(argv)
    names = list(dict.fromkeys([*args.runs, *(r for pair in args.pair for r in pair)]))
    if not names:
        p.error("give at least one run folder")
    curves = {n: read_curve(n, args.metric) for n in names}
    grouped = {n: curves[n] for n in (args.runs or names)}
    res = summarise(curves, args.reference, args.pair, list(grouped))
    f = ".4f" if "ssim" in args.metric else ".2f"  # digits of the printed values
    steps = res["steps"]
    print("| run | " + " | ".join(map(str, steps)) + " |")
    print("|---" * (len(steps) + 1) + "|")
    for n, c in grouped.items():
        print(f"| {n} | " + " | ".join(f"{c[s][0]:{f}} / {c[s][1]:.4f}" for s in steps) + " |")
    st = res["stats"]
    k = len(grouped)
    print(f"| mean of {k} | " + " | ".join(f"{st[s]['mean']:{f}}" for s in steps) + " |")
    if k > 1:
        print("| sd | " + " | ".join(f"{st[s]['sd']:{f}}" for s in steps) + " |")
        ranges = [f"{st[s]['min']:{f}}-{st[s]['max']:{f}}" for s in steps]
        print("| range | " + " | ".join(ranges) + " |")
    if "reference" in res:
        ref = res["reference"]
        print("| reference | " + " | ".join(f"{ref[s]['value']:.2f}" for s in steps) + " |")
        print(
            "| reference - mean | "
            + " | ".join(
                f"{ref[s]['minus_mean']:+.2f}{'' if ref[s]['in_range'] else ' (outside)'}"
                for s in steps
            )
            + " |"
        )
    if "pairs" in res:
        _print_pairs(res, f)
    if args.plot:
        # a pair's second run: dashed, in the colour of its first
        partner = {b: a for a, b in args.pair if b not in grouped}
        firsts = [n for n in names if n not in partner]

        def root(n: str) -> str:  # a chain a:b, b:c colours c like a
            seen = set()
            while n in partner and n not in seen:
                seen.add(n)
                n = partner[n]
            return n if n in firsts else firsts[0]

        lines = [
            (Path(n).name, {s: v[0] for s, v in curves[n].items()}, n in partner,
             firsts.index(root(n)))
            for n in names
        ]  # fmt: skip
        ref = None
        if args.reference is not None:
            ref = dict(zip(steps, args.reference, strict=True))
        print(f"plot: {plot_curves(lines, args.plot, ref, args.bicubic, args.title)}")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
