"""IRN against bicubic on held-out real photos, per photo (PSNR-Y at the model's scale).

The held-out photos are the wallpapers of Debian/Ubuntu's ``lomiri-wallpapers`` package, never
used for training: one command gets them (into /usr/share/backgrounds)::

    sudo apt-get install -y lomiri-wallpapers

The set is the 13 photographs among them (six renders and graphics and the composited
Infinite-Sea are left out), each cut to its centre 512x512 crop, fixed so every checkpoint is
measured on the same pixels::

    python bench/heldout.py --checkpoint runs/irn_x4/last.pt --threads 1
    python bench/heldout.py --checkpoint a.pt b.pt --temperature 0 --json heldout.json
    python bench/heldout.py --checkpoint a.pt --z-estimate 7     # evaluate.py's --z estimate
    # neither --temperature nor --z-estimate: as evaluate.py's --z auto
    python bench/heldout.py --write-dir heldout_png      # the crops as PNG, e.g. for evaluate.py
    python bench/heldout.py --set mate --checkpoint a.pt  # the independent second set

``--set mate`` is the second set, kept out of every choice made with the first: the 12 nature
photos of ``mate-backgrounds`` (``sudo apt-get install -y mate-backgrounds``), the photos the
sample-trained model first failed on (a dune, a meadow, a ladybird, a storm sky, ...).

The last line says whether the model meets the bar of docs/real_photos.md: on average within
1 dB of bicubic (or above) and never more than 3 dB below it on any photo. The "rmse" column
turns each PSNR-Y into the root-mean-square error of Y in 8-bit grey levels
(``255 * 10^(-PSNR / 20)``): on near-flat photos a few dB is a fraction of one level. The
"p99.9" column is the 99.9th percentile of ``|Y error|`` in grey levels (border of ``scale``
pixels left out, as the PSNR): the size of the worst 0.1 % of the pixels, where blotches and
colour casts show, which a mean can hide.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.checkpoint import load_checkpoint  # noqa: E402
from common.images import decode_image, to_float01  # noqa: E402
from common.metrics import modcrop, quantize_to_uint8, rgb_to_y  # noqa: E402
from irn.checkpoints import load_irn  # noqa: E402
from irn.data import sample_photos  # noqa: E402
from irn.evaluation import bicubic_baseline, evaluate_rescaling  # noqa: E402
from irn.ood import check_image, training_reference  # noqa: E402
from irn.tiling import DEFAULT_Z_WINDOW  # noqa: E402

HELDOUT_ROOT = Path("/usr/share/backgrounds")
INSTALL = "sudo apt-get install -y lomiri-wallpapers"
HELDOUT = (
    "Bridge_by_Sander_Klootwijk.jpg",
    "Dragonfly_by_Bolly.jpg",
    "Kleiber_by_Lukas_Baubkus.jpg",
    "Picture_0B_by_freespace.jpg",
    "Picture_1A_by_freespace.jpg",
    "Wine_by_Jakkub_Mede.jpg",
    "aitzgorri_by_Aitzol_Berasategi.jpg",
    "free_by_Peter_Nerlich.jpg",
    "friends_by_Aitzol_Berasategi.jpg",
    "life_by_Aitzol_Berasategi.jpg",
    "picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "seeding_by_Clements_Engelhardt.jpg",
    "sunset_by_Aitzol_Berasategi.jpg",
)
MATE_NATURE = (
    "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg",
    "LadyBird.jpg", "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg",
)  # fmt: skip
PHOTO_SETS = {
    # name: (default folder, files, how to get them)
    "lomiri": (HELDOUT_ROOT, HELDOUT, INSTALL),
    "mate": (
        HELDOUT_ROOT / "mate" / "nature",
        MATE_NATURE,
        "sudo apt-get install -y mate-backgrounds",
    ),
}
CROP = 512
MEAN_BAR, WORST_BAR = -1.0, -3.0


def rmse_levels(psnr_db: float) -> float:
    """The RMS error in 8-bit grey levels that a PSNR (peak 255) of ``psnr_db`` dB means."""
    return 255.0 * 10.0 ** (-psnr_db / 20.0)


def tail_error_levels(rec: np.ndarray, hr: np.ndarray, border: int) -> float:
    """99.9th percentile of ``|Y(rec) - Y(hr)|`` in 8-bit levels; uint8 HWC RGB images."""
    err = np.abs(rgb_to_y(rec.astype(np.float64), 255.0) - rgb_to_y(hr.astype(np.float64), 255.0))
    if border:
        err = err[border:-border, border:-border]
    return float(np.percentile(err, 99.9))


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size x size`` crop of an HWC image (the whole side when smaller)."""
    h, w = img.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(img[top : top + size, left : left + size])


def heldout_photos(
    root: Path | None = None, crop: int = CROP, photo_set: str = "lomiri"
) -> list[tuple[str, np.ndarray]]:
    """``(short name, centre crop as float32 RGB in [0, 1])`` for each photo of ``photo_set``
    (:data:`PHOTO_SETS`), read from ``root`` (default: where its package installs them)."""
    default_root, files, install = PHOTO_SETS[photo_set]
    root = default_root if root is None else root
    missing = [n for n in files if not (root / n).is_file()]
    if missing:
        raise SystemExit(
            f"bench/heldout.py: {len(missing)} photos of the {photo_set!r} set missing under "
            f"{root} (e.g. {missing[0]}); get them with: {install}"
        )
    return [
        (Path(n).stem.split("_by_")[0], centre_crop(to_float01(decode_image(root / n)), crop))
        for n in files
    ]


def reference_for(ckpt: str, info: dict, model: torch.nn.Module) -> dict:
    """The checkpoint's stored forward statistics, or (older checkpoints) those of the built-in
    training photos of its ``--sample-set`` computed now."""
    if info.get("forward_stats"):
        return info["forward_stats"]
    config = load_checkpoint(ckpt).get("config", {})
    if config.get("data") is not None:
        return {}
    sample_set = config.get("sample_set", "classic")
    return training_reference(model, sample_photos("train", sample_set))


def measure(
    model: torch.nn.Module,
    photos,
    temperature: float,
    draws: int,
    amp: bool,
    reference: dict,
    z_estimate: int | None = None,
) -> list:
    """Per photo: IRN's and bicubic's PSNR-Y (dB), their difference and the OOD warning; z
    sampled at ``temperature`` or, with ``z_estimate`` (a window), estimated from the LR."""
    rows = []
    latent = {"temperature": temperature} if z_estimate is None else {"z_estimate": z_estimate}
    for name, hr in photos:
        stats, warning = check_image(model, hr, name, {"forward_stats": reference})
        irn = evaluate_rescaling(
            model, hr, draws=draws, amp=amp, return_images=True, **latent
        )  # fmt: skip
        scale = int(model.scale)
        bic = bicubic_baseline(hr, scale, return_images=True)
        truth = quantize_to_uint8(modcrop(hr, scale))
        rows.append(
            {
                "photo": name,
                "irn": irn["psnr_y"],
                "bicubic": bic["psnr_y"],
                "diff": irn["psnr_y"] - bic["psnr_y"],
                "lr_psnr_y": irn["lr_psnr_y"],
                "p999_irn": tail_error_levels(irn["hr_rec"], truth, scale),
                "p999_bicubic": tail_error_levels(bic["hr_rec"], truth, scale),
                **stats,
                "warned": warning is not None,
            }
        )
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean difference, its standard error, the worst photo and whether the bar is met."""
    d = np.array([r["diff"] for r in rows], dtype=np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    worst = rows[int(d.argmin())]
    ok = bool(d.mean() >= MEAN_BAR and d.min() >= WORST_BAR)
    return {"mean_diff": float(d.mean()), "se": se, "worst": worst["photo"],
            "worst_diff": float(d.min()), "meets_bar": ok}  # fmt: skip


def table(label: str, rows: list[dict], summary: dict) -> str:
    head = "| photo | IRN PSNR-Y | bicubic | IRN - bicubic | rmse IRN / bicubic (levels) "
    head += "| p99.9 IRN / bicubic | LR' PSNR-Y | z rms | LR' rmse | clip | warned |"
    lines = [f"## {label}", "", head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        levels = f"{rmse_levels(r['irn']):.2f} / {rmse_levels(r['bicubic']):.2f} | "
        levels += f"{r['p999_irn']:.1f} / {r['p999_bicubic']:.1f}"
        lines.append(
            f"| {r['photo']} | {r['irn']:.2f} | {r['bicubic']:.2f} | {r['diff']:+.2f} | "
            f"{levels} | "
            f"{r['lr_psnr_y']:.2f} | {r['z_rms']:.3f} | {r['lr_rmse']:.2f} | "
            f"{100 * r['clip']:.2f}% | {'yes' if r['warned'] else 'no'} |"
        )
    lines += [
        "",
        f"mean IRN - bicubic {summary['mean_diff']:+.2f} dB (SE {summary['se']:.2f}, "
        f"{len(rows)} photos); worst {summary['worst']} {summary['worst_diff']:+.2f} dB; "
        f"bar (mean >= {MEAN_BAR:+.0f}, every photo >= {WORST_BAR:+.0f}): "
        f"{'met' if summary['meets_bar'] else 'not met'}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="*", default=[], help="IRN checkpoints to measure.")
    p.add_argument(
        "--set", dest="photo_set", choices=sorted(PHOTO_SETS), default="lomiri",
        help="lomiri: the 13 held-out photos of lomiri-wallpapers; mate: the 12 nature photos "
        "of mate-backgrounds, an independent second check.",
    )  # fmt: skip
    p.add_argument(
        "--root", default=None,
        help="Folder of the set's photos (default: where its package installs them).",
    )  # fmt: skip
    p.add_argument(
        "--temperature", type=float, default=None,
        help="Std of a sampled z (0: z = 0). Neither this nor --z-estimate given: as evaluate.py "
        "--z auto (the estimate for a checkpoint trained with --gaussian-scale 0, else 1).",
    )  # fmt: skip
    p.add_argument(
        "--z-estimate", type=int, default=None, metavar="WINDOW",
        help="Upscale with z estimated from the LR (evaluate.py --z estimate --z-window WINDOW) "
        "instead of a sample.",
    )  # fmt: skip
    p.add_argument("--draws", type=int, default=1, help="Samples of z averaged per photo.")
    p.add_argument("--amp", action="store_true", help="Run the network under autocast.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--json", default=None, help="Write the per-photo rows to this file.")
    p.add_argument("--write-dir", default=None, help="Write the crops as PNG into this folder.")
    p.add_argument("--photos", nargs="*", default=None, help="Only these photos (short names).")
    args = p.parse_args(argv)
    if args.z_estimate is not None and args.z_estimate < 0:
        p.error(f"--z-estimate {args.z_estimate}: the window must be >= 0 (0 = whole image)")
    if args.z_estimate is not None and args.temperature is not None:
        p.error("--temperature applies to a sampled z; --z-estimate replaces it: give one")
    return args


def latent_choice(args: argparse.Namespace, info: dict) -> tuple[float, int | None, str]:
    """``(temperature, z_estimate window or None, description)`` for one checkpoint: the
    flags, or (neither given) the estimate for a checkpoint trained with ``--gaussian-scale 0``
    and a sample at temperature 1 for any other, as ``evaluate.py --z auto``."""
    window, temperature = args.z_estimate, args.temperature
    if window is None and temperature is None and info.get("gaussian_scale") == 0:
        window = DEFAULT_Z_WINDOW
    if window is not None:
        return 1.0, window, f"z estimated, window {window}"
    temperature = 1.0 if temperature is None else temperature
    return temperature, None, f"temperature {temperature:g}"


def write_crops(photos, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, hr in photos:
        Image.fromarray(np.round(hr * 255.0).astype(np.uint8)).save(folder / f"{name}.png")
    print(f"wrote {len(photos)} crops to {folder}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    photos = heldout_photos(None if args.root is None else Path(args.root), CROP, args.photo_set)
    if args.photos:
        photos = [(n, hr) for n, hr in photos if n in args.photos]
    if args.write_dir:
        write_crops(photos, Path(args.write_dir))
    results = {}
    for ckpt in args.checkpoint:
        model, info = load_irn(ckpt)
        reference = reference_for(ckpt, info, model)
        temperature, window, how = latent_choice(args, info)
        rows = measure(model, photos, temperature, args.draws, args.amp, reference, window)
        summary = summarise(rows)
        print(table(f"{ckpt} ({how})", rows, summary), flush=True)
        results[ckpt] = {"rows": rows, "summary": summary, "temperature": temperature,
                         "z_estimate": window, "set": args.photo_set}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
