"""A figure of a trained IRN next to bicubic rescaling: HR crop, bicubic, IRN's HR', error maps.

Usage::

    python bench/figure_irn.py --checkpoint runs/irn_x4/best.pt                 # chelsea
    python bench/figure_irn.py --checkpoint IRN_x4.pth --image photo.png --crop 200 120 96 \\
        --out photo_x4.png --threads 1

One row of five panels, each the same crop of the (modcropped) image, enlarged ``--zoom`` times
with nearest-neighbour so single pixels stay visible:

1. the HR crop;
2. bicubic: the MATLAB-style bicubic downscale of the HR stored as an 8-bit LR, upscaled with the
   same bicubic (:func:`irn.evaluation.bicubic_baseline`, ``quantize_lr=True``);
3. IRN: ``HR' = f^-1(LR', z)`` with ``LR' = Quant(f(HR)[:, :3])`` stored as 8-bit and
   ``z ~ N(0, 1)`` drawn with ``--seed`` (:func:`irn.evaluation.evaluate_rescaling`, one draw:
   the image ``python evaluate.py --checkpoint C --draws 1 --seed S`` measures);
4. and 5. the error maps ``|bicubic - HR|`` and ``|HR' - HR|`` (mean over RGB, times
   ``--error-gain``, OpenCV's "inferno" colour map, black = no error), on one scale.

The labels give PSNR-Y of the whole image (BT.601 Y, ``scale`` border pixels cropped, the
protocol of docs/method.md sec. 5) and of the crop alone. The default image is chelsea from
scikit-image, one of the two held-out validation photos of ``train_irn.py`` without ``--data``.
Everything is computed by the project's own functions (``irn.checkpoints.load_irn``,
``irn.evaluation``, ``common.imresize``, ``common.metrics``); the figure is drawn with Pillow.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from common.atomic import atomic_save_pil  # noqa: E402
from common.images import load_image  # noqa: E402
from common.metrics import image_metrics, modcrop, quantize_to_uint8  # noqa: E402
from irn.checkpoints import load_irn  # noqa: E402
from irn.evaluation import bicubic_baseline, evaluate_rescaling  # noqa: E402

__all__ = ["DEFAULT_CROP", "Figure", "error_map", "make_figure", "main"]

# Chelsea's left eye and the fur above it (left, top, size in HR pixels).
DEFAULT_CROP = (112, 64, 128)
GAP = 6  # white pixels between panels
MARGIN = 6  # white border around the figure
HEADER = 44  # two label lines above each panel
FOOTER = 24  # one caption line under the panels
BACKGROUND = (255, 255, 255)


@dataclass
class Figure:
    """The drawn figure and what is in it (the test checks the layout against this)."""

    image: np.ndarray  # RGB uint8 [H, W, 3]
    panels: list[dict] = field(default_factory=list)  # {"title", "label", "box": (l, t, r, b)}
    caption: str = ""
    metrics: dict = field(default_factory=dict)


def error_map(a: np.ndarray, b: np.ndarray, gain: float) -> np.ndarray:
    """``|a - b|`` (uint8 RGB, mean over channels) times ``gain`` as an RGB "inferno" map."""
    err = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2) * float(gain)
    bgr = cv2.applyColorMap(np.clip(np.rint(err), 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _check_crop(crop: tuple[int, int, int], shape: tuple[int, ...], scale: int) -> None:
    left, top, size = crop
    h, w = shape[:2]
    if size < 8 or left < 0 or top < 0 or left + size > w or top + size > h:
        raise ValueError(
            f"--crop {left} {top} {size} does not fit the {w}x{h} image (x{scale}, after "
            "cropping to a multiple of the scale); LEFT + SIZE <= width, TOP + SIZE <= height, "
            "SIZE >= 8"
        )


def _draw(
    panels: list[tuple[np.ndarray, str, str]], caption: str, zoom: int
) -> tuple[np.ndarray, list[dict]]:
    size = panels[0][0].shape[0] * zoom
    width = 2 * MARGIN + len(panels) * size + (len(panels) - 1) * GAP
    height = 2 * MARGIN + HEADER + size + FOOTER
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    title_font, label_font = _font(15), _font(14)
    boxes = []
    for k, (image, title, label) in enumerate(panels):
        left = MARGIN + k * (size + GAP)
        top = MARGIN + HEADER
        big = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)
        canvas.paste(Image.fromarray(big), (left, top))
        draw.text((left + 2, MARGIN + 2), title, fill=(0, 0, 0), font=title_font)
        draw.text((left + 2, MARGIN + 22), label, fill=(60, 60, 60), font=label_font)
        boxes.append({"title": title, "label": label, "box": (left, top, left + size, top + size)})
    draw.text(
        (MARGIN + 2, height - MARGIN - FOOTER + 6), caption, fill=(60, 60, 60), font=label_font
    )
    return np.asarray(canvas).copy(), boxes


def make_figure(
    model: torch.nn.Module,
    hr: np.ndarray,
    crop: tuple[int, int, int],
    *,
    seed: int = 0,
    zoom: int = 2,
    error_gain: float = 4.0,
    name: str = "",
    model_label: str = "IRN",
) -> Figure:
    """The five-panel figure for ``hr`` (RGB float ``[H, W, 3]`` in [0, 1]) at ``crop``.

    ``crop = (left, top, size)`` in pixels of the modcropped HR. Returns the image with each
    panel's box and labels and the whole-image metrics of both methods.
    """
    scale = int(model.scale)
    hr = modcrop(np.asarray(hr, dtype=np.float32), scale)
    _check_crop(crop, hr.shape, scale)
    irn = evaluate_rescaling(model, hr, draws=1, seed=seed, return_images=True)
    bic = bicubic_baseline(hr, scale, quantize_lr=True, return_images=True)
    hr_u8 = quantize_to_uint8(hr.astype(np.float64))
    left, top, size = crop
    sl = (slice(top, top + size), slice(left, left + size))
    ref, bic_crop, irn_crop = hr_u8[sl], bic["hr_rec"][sl], irn["hr_rec"][sl]
    crop_bic = image_metrics(ref, bic_crop)["psnr_y"]
    crop_irn = image_metrics(ref, irn_crop)["psnr_y"]
    gain = f"{error_gain:g}"
    panels = [
        (ref, f"HR {name}".rstrip(), f"crop {size}x{size} at ({left}, {top}), x{zoom} zoom"),
        (bic_crop, "bicubic", f"PSNR-Y {bic['psnr_y']:.2f} dB (crop {crop_bic:.2f})"),
        (irn_crop, f"{model_label} HR'", f"PSNR-Y {irn['psnr_y']:.2f} dB (crop {crop_irn:.2f})"),
        (error_map(bic_crop, ref, error_gain), f"|bicubic - HR| x{gain}", "black = exact"),
        (error_map(irn_crop, ref, error_gain), f"|IRN HR' - HR| x{gain}", "same scale"),
    ]
    caption = (
        f"x{scale}; PSNR-Y of the whole image (BT.601 Y, {scale}-pixel border cropped), crop in "
        f"brackets; LR and LR' stored as 8-bit; IRN z ~ N(0, 1), seed {seed}"
    )
    image, boxes = _draw(panels, caption, zoom)
    metrics = {
        "scale": scale,
        "bicubic": {k: bic[k] for k in ("psnr_y", "ssim_y")} | {"crop_psnr_y": crop_bic},
        "irn": {k: irn[k] for k in ("psnr_y", "ssim_y", "lr_psnr_y")} | {"crop_psnr_y": crop_irn},
    }
    return Figure(image=image, panels=boxes, caption=caption, metrics=metrics)


def _default_image() -> tuple[np.ndarray, str]:
    import skimage.data

    img = np.asarray(skimage.data.chelsea())
    return img.astype(np.float32) / 255.0, "chelsea"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="ours (train_irn.py) or the authors' .pth")
    p.add_argument("--image", help="an RGB image file (default: scikit-image's chelsea)")
    p.add_argument(
        "--crop",
        type=int,
        nargs=3,
        metavar=("LEFT", "TOP", "SIZE"),
        help=f"square crop in HR pixels (default for chelsea {DEFAULT_CROP}; otherwise the "
        "centre square of a third of the shorter side)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of z ~ N(0, 1) (default 0)")
    p.add_argument("--zoom", type=int, default=2, help="nearest-neighbour enlargement (2)")
    p.add_argument("--error-gain", type=float, default=4.0, help="error map gain (4)")
    p.add_argument("--threads", type=int, help="torch threads (e.g. 1 on a shared machine)")
    p.add_argument("--out", default="docs/figures/irn_vs_bicubic_x4.png", help="PNG to write")
    return p


def main(argv: list[str] | None = None) -> Figure:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.zoom < 1:
        raise SystemExit(f"--zoom must be >= 1, got {args.zoom}")
    model, info = load_irn(args.checkpoint)
    if args.image:
        hr, name = load_image(args.image), Path(args.image).stem
    else:
        hr, name = _default_image()
    crop = tuple(args.crop) if args.crop else None
    if crop is None:
        if args.image:
            h, w = hr.shape[:2]
            size = max(8, min(h, w) // 3)
            crop = ((w - size) // 2, (h - size) // 2, size)
        else:
            crop = DEFAULT_CROP
    step = info.get("step")
    label = "IRN" if step is None else f"IRN (it. {step})"
    try:
        fig = make_figure(
            model,
            hr,
            crop,
            seed=args.seed,
            zoom=args.zoom,
            error_gain=args.error_gain,
            name=name,
            model_label=label,
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None
    out = Path(args.out)
    atomic_save_pil(out, Image.fromarray(fig.image))
    m = fig.metrics
    print(
        f"{out}: {name} x{m['scale']}, {args.checkpoint} ({info['kind']}, step {step}): "
        f"PSNR-Y bicubic {m['bicubic']['psnr_y']:.2f} dB, IRN {m['irn']['psnr_y']:.2f} dB "
        f"(LR' vs bicubic LR {m['irn']['lr_psnr_y']:.2f} dB)"
    )
    return fig


if __name__ == "__main__":
    main()
