"""Training and validation data for IRN (IRN sec. 4.1): HR patches and their bicubic LR references.

Training samples are *stateless*: sample ``k`` (the ``k``-th image of the run, counting over all
iterations and batch positions) is drawn from ``numpy.random.default_rng([seed, k])``. The patch a
run sees at iteration ``i`` therefore depends only on ``(seed, i)``: resuming at iteration ``i``
gives the same batches as the uninterrupted run, with any number of loader workers and, under
``torch.distributed``, any split of the global batch over ranks.

The LR reference of a patch is what downscaling the *whole* image with the MATLAB-style bicubic
would give at that crop, without resizing the whole image for every patch. We crop the HR with
a margin of :data:`LR_MARGIN` LR pixels on every side (less at the image border, where the
full-image resize mirrors too), resize that region and keep the interior. The bicubic kernel
reaches 2 LR pixels, so 3 are enough; ``tests/test_irn_data.py`` checks equality with the
full-image resize.

Rules for awkward images (each gives a warning naming the file):
* grayscale is replicated to RGB, 16-bit keeps its precision, RGBA drops alpha (``load_image``);
* the image is cropped to a multiple of the scale from the top-left (``modcrop``);
* an image smaller than the HR patch in either side is skipped; if every image is skipped the
  error names the largest patch size that would work.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.images import (
    ImageReadError,
    decode_image,
    list_images,
    oriented_size,
    to_float01,
)
from common.imresize import imresize
from common.metrics import modcrop

__all__ = [
    "LR_MARGIN",
    "NamedImage",
    "SAMPLE_TRAIN",
    "SAMPLE_VAL",
    "sample_photos",
    "SAMPLE_COLLECTIONS",
    "ColorAugment",
    "SmoothPatches",
    "smooth_region",
    "transformed_patch",
    "color_matrix",
    "apply_color",
    "load_folder",
    "bicubic_lr",
    "lr_patch_from_region",
    "PatchDataset",
    "StepSampler",
    "augment",
    "make_loader",
]

LR_MARGIN = 3

SAMPLE_TRAIN = (
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "coffee",
)
SAMPLE_VAL = ("chelsea", "stereo_motorcycle_right")
# "broad": every other colour photo the dependencies ship (scikit-learn's flower for training,
# its china for validation) and scikit-image's colour wheel, the saturated hues the photos lack.
SAMPLE_COLLECTIONS = {
    "classic": {"train": SAMPLE_TRAIN, "val": SAMPLE_VAL},
    "broad": {
        "train": (*SAMPLE_TRAIN, "colorwheel", "sklearn:flower"),
        "val": (*SAMPLE_VAL, "sklearn:china"),
    },
}


@dataclass
class NamedImage:
    """An image and where it came from: decoded (``image``, RGB HWC, float32 in [0, 1] or the
    file's own uint8/uint16 samples, as the in-memory cache keeps them) or a file still to be
    read (``path``), with its ``(height, width)``."""

    name: str
    image: np.ndarray | None = None
    path: Path | None = None
    size: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.image is not None:
            self.size = (int(self.image.shape[0]), int(self.image.shape[1]))

    def raw(self) -> np.ndarray:
        """The image in its stored sample type (no conversion, no copy when cached)."""
        return self.image if self.image is not None else decode_image(self.path)

    def load(self) -> np.ndarray:
        """The image as float32 RGB in [0, 1]."""
        return to_float01(self.raw())


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "stereo_motorcycle_right":
        img = skimage.data.stereo_motorcycle()[1]
    elif name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(name.split(":", 1)[1] + ".jpg")
    else:
        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return (img[..., :3].astype(np.float32) / 255.0).astype(np.float32)


def sample_photos(split: str, collection: str = "classic") -> list[NamedImage]:
    """The photos bundled with the dependencies: ``"train"`` or ``"val"`` of ``collection``.

    ``"classic"``: six scikit-image photos for training, chelsea and the right view of
    ``stereo_motorcycle`` for validation (issue 6's reference run; the default here, and
    evaluate.py's built-in set). ``"broad"`` (training's default, ``--sample-set``): those,
    plus scikit-image's colour wheel and scikit-learn's flower for training and its china for
    validation (three images, three colour families: browns, greys and reds, blue and green).
    """
    if collection not in SAMPLE_COLLECTIONS:
        raise ValueError(
            f"sample_photos: collection must be one of {sorted(SAMPLE_COLLECTIONS)}, "
            f"got {collection!r}"
        )
    names = SAMPLE_COLLECTIONS[collection].get(split)
    if names is None:
        raise ValueError(f"sample_photos: split must be 'train' or 'val', got {split!r}")
    return [NamedImage(_sample_name(n), image=_skimage_photo(n)) for n in names]


def _sample_name(name: str) -> str:
    return name if name.startswith("sklearn:") else f"skimage:{name}"


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, without decoding the pixels."""
    from PIL import Image

    from irn.limits import pil_unbounded

    try:
        with pil_unbounded(), Image.open(path) as im:  # size limit: irn.limits
            w, h = im.size
    except Exception as err:  # PIL raises many kinds; all mean "not an image we can read"
        raise ImageReadError(f"{path}: cannot read the image header ({err})") from None
    return oriented_size(path, (int(h), int(w)))  # as decode_image turns it


def load_folder(root: str | Path, what: str = "--data", decode: bool = False) -> list[NamedImage]:
    """Every image under ``root`` (recursive), checked before any work starts.

    Headers are read now (so an unreadable file fails at once, naming it); pixels are decoded now
    only with ``decode=True`` (in-memory cache), else each time a patch is drawn.

    Raises ``ValueError`` naming ``what`` (the flag) and the folder when it is missing, not a
    folder or holds no image, and :class:`ImageReadError` naming a file that cannot be read.
    """
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{what}: folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"{what}: {root} is not a folder")
    paths = list_images(root)
    if not paths:
        raise ValueError(
            f"{what}: no images found under {root} "
            "(looked for png, jpg, jpeg, bmp, tif, tiff, webp)"
        )
    if decode:  # the file's own samples (uint8: 3 bytes a pixel), converted per patch
        return [NamedImage(str(p), image=decode_image(p)) for p in paths]
    return [NamedImage(str(p), path=p, size=_image_size(p)) for p in paths]


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-style bicubic downscale (with antialiasing) of a modcropped HWC image (float in
    [0, 1], or uint8/uint16 samples, converted first as :func:`~common.images.to_float01`)."""
    if hr.dtype in (np.uint8, np.uint16):
        hr = to_float01(hr)
    return imresize(hr, scale=1.0 / scale, antialiasing=True).astype(np.float32)


def lr_patch_from_region(
    hr: np.ndarray, top: int, left: int, size: int, scale: int, margin: int = LR_MARGIN
) -> np.ndarray:
    """LR of the HR patch ``hr[top:top+size, left:left+size]`` as the full-image resize gives it.

    ``hr`` must be modcropped; ``top``, ``left`` and ``size`` multiples of ``scale``.
    """
    h, w = hr.shape[:2]
    m = margin * scale
    r0, c0 = max(0, top - m), max(0, left - m)
    r1, c1 = min(h, top + size + m), min(w, left + size + m)
    lr_region = bicubic_lr(hr[r0:r1, c0:c1], scale)
    i0, j0 = (top - r0) // scale, (left - c0) // scale
    n = size // scale
    return lr_region[i0 : i0 + n, j0 : j0 + n]


def augment(arrays: Sequence[np.ndarray], flags: tuple[bool, bool, bool]) -> list[np.ndarray]:
    """Horizontal flip, vertical flip, transpose (with the flips: all 8 rotations/reflections),
    applied identically to HR and LR (the bicubic kernel is symmetric, so they commute)."""
    hflip, vflip, rot = flags
    out = []
    for a in arrays:
        if hflip:
            a = a[:, ::-1]
        if vflip:
            a = a[::-1, :]
        if rot:
            a = a.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(a))
    return out


def color_matrix(
    perm: Sequence[int], hue: float, saturation: float, brightness: float
) -> np.ndarray:
    """The 3x3 matrix ``M`` of a colour change ``rgb' = M rgb``, composed of a channel
    permutation ``P``, a hue rotation by ``hue`` radians about the grey axis ``g = (1,1,1)/sqrt3``
    (Rodrigues: ``R = cos t I + sin t [g]x + (1 - cos t) g g^T``), a saturation factor ``s``
    scaling the distance from grey, and a brightness factor ``b``:
    ``M = b (G + s R (I - G)) P`` with ``G = g g^T`` the projection on grey.

    ``M`` is linear, so it commutes with the (linear) bicubic downscale; the clip to [0, 1] that
    follows it does not, which is why :class:`PatchDataset` applies it to the HR region before
    computing the LR.
    """
    eye = np.eye(3)
    p = eye[list(perm)]
    g = np.full(3, 1.0 / np.sqrt(3.0))
    grey = np.outer(g, g)
    cross = np.array([[0.0, -g[2], g[1]], [g[2], 0.0, -g[0]], [-g[1], g[0], 0.0]])
    rot = np.cos(hue) * eye + np.sin(hue) * cross + (1.0 - np.cos(hue)) * grey
    return brightness * (grey + saturation * rot @ (eye - grey)) @ p


def apply_color(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``clip(M rgb, 0, 1)`` for every pixel of an HWC float image (any patch or region)."""
    out = image.astype(np.float32) @ matrix.T.astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


@dataclass(frozen=True)
class ColorAugment:
    """Random colour changes for training patches (the built-in photos hold almost no saturated
    greens or blues): with probability ``p`` a uniformly drawn channel permutation, a hue
    rotation uniform in ``[-hue_deg, hue_deg]`` degrees, a saturation factor uniform in
    ``saturation`` and a brightness factor uniform in ``brightness`` (:func:`color_matrix`)."""

    p: float = 0.8
    hue_deg: float = 60.0
    saturation: tuple[float, float] = (0.5, 1.5)
    brightness: tuple[float, float] = (0.6, 1.4)

    def draw(self, rng: np.random.Generator) -> np.ndarray | None:
        """A colour matrix from ``rng``, or ``None`` (no change) with probability ``1 - p``."""
        if rng.random() >= self.p:
            return None
        perm = rng.permutation(3)
        hue = np.deg2rad(rng.uniform(-self.hue_deg, self.hue_deg))
        return color_matrix(
            perm, hue, rng.uniform(*self.saturation), rng.uniform(*self.brightness)
        )


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


@dataclass(frozen=True)
class SmoothPatches:
    """Nearly flat training patches (sky, walls, studio backgrounds), which the built-in photos
    hardly hold: with probability ``p`` the patch's region is replaced by a smooth copy of
    itself (:func:`smooth_region`, the downscale factor drawn from ``factors``).

    Why: on a flat image the forward pass of a network that never saw one leaves a small
    constant offset in every ``z`` channel (the couplings' ``G(LR')`` of a flat ``LR'`` is not
    zero), and upscaling with ``z = 0`` turns it into a fixed 4x4 pattern of about a grey level,
    which on a photo that bicubic reconstructs to half a grey level costs several dB
    (docs/real_photos.md)."""

    p: float = 0.25
    factors: tuple[int, ...] = (8, 16, 32)

    def draw(self, rng: np.random.Generator) -> int | None:
        """A downscale factor from ``rng``, or ``None`` (patch kept) with probability ``1 - p``."""
        if rng.random() >= self.p:
            return None
        return int(self.factors[int(rng.integers(0, len(self.factors)))])


def smooth_region(region: np.ndarray, factor: int) -> np.ndarray:
    """A smooth version of an HWC float region with the same size: area-averaged down by
    ``factor`` (at least one pixel each side), bilinearly up again, rounded to 8-bit levels (the
    steps of a gradient in a real 8-bit photo)."""
    h, w = region.shape[:2]
    small = cv2.resize(
        region, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA
    )
    up = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(region.shape)
    return (np.round(np.clip(up, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def transformed_patch(
    img: np.ndarray,
    top: int,
    left: int,
    size: int,
    scale: int,
    matrix: np.ndarray | None = None,
    smooth: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """HR patch and LR of the image recoloured by ``matrix`` (:func:`apply_color`, if given) and
    then smoothed by ``smooth`` (:func:`smooth_region`, if given), as if the whole image had been
    changed: the region the LR needs (the patch and its margin) is changed, then cropped and
    downscaled as in :func:`lr_patch_from_region`."""
    h, w = img.shape[:2]
    m = LR_MARGIN * scale
    r0, c0 = max(0, top - m), max(0, left - m)
    r1, c1 = min(h, top + size + m), min(w, left + size + m)
    region = to_float01(img[r0:r1, c0:c1])
    if matrix is not None:
        region = apply_color(region, matrix)
    if smooth is not None:
        region = smooth_region(region, smooth)
    t, lft = top - r0, left - c0
    hr = region[t : t + size, lft : lft + size]
    return hr, lr_patch_from_region(region, t, lft, size, scale)


def colored_patch(
    img: np.ndarray, top: int, left: int, size: int, scale: int, matrix: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """HR patch and LR of the image recoloured by ``matrix`` (:func:`transformed_patch`)."""
    return transformed_patch(img, top, left, size, scale, matrix=matrix)


class PatchDataset(Dataset):
    """Random ``patch_size`` HR crops with their LR references, indexed by global sample number.

    ``dataset[k]`` is a dict ``{"hr": [3, P, P], "lr": [3, P/s, P/s]}`` (float32 in [0, 1]) fully
    determined by ``(seed, k)``: an epoch is a seeded permutation of the images (as the authors'
    shuffled loader), and the crop position and augmentation come from ``default_rng([seed, k])``.
    ``color`` (a :class:`ColorAugment`) recolours the image before the crop and ``smooth`` (a
    :class:`SmoothPatches`) then replaces some patches by smooth ones (off: ``None``).
    """

    def __init__(
        self,
        images: Sequence[NamedImage],
        patch_size: int,
        scale: int,
        seed: int = 10,
        augment: bool = True,
        color: ColorAugment | None = None,
        smooth: SmoothPatches | None = None,
    ) -> None:
        if patch_size % scale:
            raise ValueError(f"--patch-size {patch_size} must be a multiple of --scale {scale}")
        self.patch_size = patch_size
        self.scale = scale
        self.seed = seed
        self.augment = augment
        self.color = color
        self.smooth = smooth
        kept, skipped = [], []
        for item in images:
            h, w = item.size[0] - item.size[0] % scale, item.size[1] - item.size[1] % scale
            if min(h, w) < patch_size:
                skipped.append((item.name, (h, w)))
            else:
                kept.append(item)
        for name, shape in skipped:
            warnings.warn(
                f"{name}: {shape[0]}x{shape[1]} is smaller than the {patch_size}x{patch_size} "
                "training patch; skipped",
                stacklevel=2,
            )
        if not kept:
            largest = max((min(s) for _, s in skipped), default=0)
            largest -= largest % scale
            raise ValueError(
                f"no training image is at least --patch-size {patch_size} on each side; "
                f"use --patch-size {largest} or smaller, or larger images"
            )
        self.images = kept

    def __len__(self) -> int:  # samples are indexed without end; a nominal length for tools
        return 2**62

    def _image_index(self, k: int) -> int:
        n = len(self.images)
        epoch, pos = divmod(k, n)
        perm = np.random.default_rng([self.seed, 1, epoch]).permutation(n)
        return int(perm[pos])

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        # the stored samples: only the patch and its LR region are converted to float
        img = modcrop(self.images[self._image_index(k)].raw(), self.scale)
        rng = np.random.default_rng([self.seed, 2, k])
        s, p = self.scale, self.patch_size
        top = int(rng.integers(0, (img.shape[0] - p) // s + 1)) * s
        left = int(rng.integers(0, (img.shape[1] - p) // s + 1)) * s
        matrix = self.color.draw(rng) if self.color is not None else None
        smooth = self.smooth.draw(rng) if self.smooth is not None else None
        if matrix is not None or smooth is not None:
            hr, lr = transformed_patch(img, top, left, p, s, matrix, smooth)
        else:
            hr = to_float01(img[top : top + p, left : left + p])
            lr = lr_patch_from_region(img, top, left, p, s)
        if self.augment:
            flags = tuple(bool(b) for b in rng.integers(0, 2, size=3))
            hr, lr = augment([hr, lr], flags)
        return {"hr": _to_tensor(hr), "lr": _to_tensor(lr)}


class StepSampler(Sampler[int]):
    """Yields the global sample numbers of iterations ``start_step, start_step + 1, ...``.

    Iteration ``i`` of a run with global batch ``B`` uses samples ``i*B .. i*B + B - 1``; rank
    ``r`` of ``world_size`` takes its contiguous share, so the global batch is the same for any
    number of processes.
    """

    def __init__(
        self,
        batch_size: int,
        start_step: int = 0,
        total_steps: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"--batch-size {batch_size} must be divisible by the number of processes "
                f"({world_size})"
            )
        self.global_batch = batch_size
        self.local_batch = batch_size // world_size
        self.start_step = start_step
        self.total_steps = total_steps
        self.rank = rank

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            base = step * self.global_batch + self.rank * self.local_batch
            yield from range(base, base + self.local_batch)
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            return 2**62
        return max(0, self.total_steps - self.start_step) * self.local_batch


def make_loader(
    dataset: PatchDataset,
    sampler: StepSampler,
    workers: int,
    pin_memory: bool = False,
    seed: int = 10,
) -> DataLoader:
    """The training loader: ``sampler``'s global sample numbers, batched by its per-process
    batch, decoded and cropped by ``workers`` processes (0 = in the training process). Its own
    seeded generator keeps the global RNG untouched (the samples do not use it anyway)."""
    return DataLoader(
        dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )


def validation_pairs(images: Sequence[NamedImage], scale: int) -> list[dict]:
    """Modcropped HR and its bicubic LR for each validation image (method.md sec. 5)."""
    out = []
    for item in images:
        hr = modcrop(item.load(), scale)
        if min(hr.shape[:2]) < scale:
            raise ValueError(f"{item.name}: too small for scale {scale}")
        out.append({"name": item.name, "hr": hr, "lr": bicubic_lr(hr, scale)})
    return out


def memory_bytes(images: Sequence[NamedImage]) -> int:
    """Bytes the images take decoded as 8-bit RGB, what the in-memory cache costs (16-bit files
    take twice that)."""
    return int(sum(h * w * 3 for h, w in (i.size for i in images)))


def describe(images: Sequence[NamedImage]) -> str:
    sizes = [f"{w}x{h}" for h, w in (i.size for i in images)]
    more = "..." if len(sizes) > 4 else ""
    return f"{len(images)} images ({', '.join(sizes[:4])}{more})"
