"""Image I/O at the project boundary (RGB inside the project; BGR/other layouts converted at I/O).

Everything inside the project is RGB. Files are read with OpenCV (``IMREAD_UNCHANGED``, as the
authors' data loader, so 16-bit files keep their precision and no EXIF rotation is applied) and
converted BGR -> RGB here; writing converts back. Loaded images are float32 ``[H, W, 3]`` in
[0, 1].
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch

from common.atomic import atomic_write_bytes
from common.metrics import quantize_to_uint8

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "apply_orientation",
    "decode_image",
    "exif_orientation",
    "oriented_size",
    "to_float01",
    "load_image",
    "load_image_tensor",
    "save_image",
    "list_images",
    "jpeg_roundtrip",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

PathLike = str | os.PathLike


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and what was expected."""


_EXPECTED = "an 8/16-bit PNG, JPEG, BMP, TIFF or WEBP image (gray, RGB or RGBA)"


def decode_image(path: PathLike) -> np.ndarray:
    """Read an image file as RGB ``[H, W, 3]`` in its stored sample type (uint8, uint16 or
    float32): what an in-memory training cache keeps (an 8-bit photo takes 3 bytes a pixel
    instead of float32's 12). :func:`to_float01` gives the values :func:`load_image` returns.

    Grayscale is replicated to 3 channels; palette images are expanded to their colours; an
    alpha channel is dropped with a ``UserWarning`` naming the file (no compositing).

    Raises:
        ImageReadError: missing, unreadable, empty, corrupt or unsupported file.
    """
    path = Path(path)
    try:
        # fromfile + imdecode (rather than imread) also handles non-ASCII paths on Windows.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"cannot read image file '{path}': {exc.strerror or exc}") from exc
    if data.size == 0:
        raise ImageReadError(f"image file '{path}' is empty; expected {_EXPECTED}")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageReadError(f"could not decode '{path}' ({exc}); expected {_EXPECTED}") from exc
    if img is None:
        raise ImageReadError(f"could not decode '{path}': corrupt or not {_EXPECTED}")
    if img.dtype == np.float64:
        img = img.astype(np.float32)
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageReadError(
            f"'{path}' has unsupported sample type {img.dtype}; expected {_EXPECTED}"
        )
    if img.dtype == np.float32:
        _check_float_range(img, path)
    img = apply_orientation(img, exif_orientation(data), path)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (2, 3, 4):
        raise ImageReadError(f"'{path}' has unsupported shape {img.shape}; expected {_EXPECTED}")
    channels = img.shape[2]
    if channels in (2, 4):
        warnings.warn(f"dropping the alpha channel of '{path}'", UserWarning, stacklevel=2)
    if channels == 2:  # gray + alpha
        return np.repeat(img[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB


def _check_float_range(img: np.ndarray, path: Path) -> None:
    """A float image must hold values in [0, 1] (the project's convention): a float TIFF of
    radiance or of 0..255 values would otherwise give a wrong LR without a word."""
    if not np.isfinite(img).all():
        raise ImageReadError(f"'{path}' is a float image holding NaN or inf; expected [0, 1]")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        raise ImageReadError(
            f"'{path}' is a float image with values in [{lo:.4g}, {hi:.4g}], outside [0, 1]; "
            "rescale it to [0, 1] (or save it as 8/16-bit) first"
        )


_ORIENTED: list[str] = []  # the first file whose EXIF orientation was applied (said once)


def _png_has_chunk(raw: memoryview, kind: bytes) -> bool:
    """Whether a PNG holds a chunk of type ``kind`` (walks the chunk headers, not the data)."""
    pos, end = 8, len(raw)
    while pos + 8 <= end:
        length = int.from_bytes(raw[pos : pos + 4], "big")
        chunk = raw[pos + 4 : pos + 8].tobytes()
        if chunk == kind:
            return True
        if chunk == b"IEND":
            return False
        pos += 12 + length
    return False


def _may_have_exif(data: bytes | np.ndarray) -> bool:
    """A cheap test on the encoded bytes, so files without EXIF (most PNGs) are not parsed a
    second time: JPEG's ``Exif`` APP1 segment sits at the start, a PNG's ``eXIf`` or a WEBP's
    ``EXIF`` chunk anywhere, and a TIFF is EXIF-structured itself."""
    raw = memoryview(data).cast("B")
    head = raw[:16].tobytes()
    if head.startswith(b"\xff\xd8"):
        return b"Exif\x00\x00" in raw[: 1 << 16].tobytes()
    if head.startswith(b"\x89PNG"):
        return _png_has_chunk(raw, b"eXIf")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return b"EXIF" in raw.tobytes()
    return head[:4] in (b"II*\x00", b"MM\x00*")


def exif_orientation(data: bytes | np.ndarray) -> int:
    """The EXIF orientation tag (1-8; 1 = as stored) of an encoded image, 1 without one."""
    from PIL import Image

    if not _may_have_exif(data):
        return 1
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            value = int(im.getexif().get(0x0112, 1))
    except Exception:  # no EXIF, or a format PIL does not read: as stored
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(img: np.ndarray, orientation: int, path: PathLike = "") -> np.ndarray:
    """``img`` (HWC or HW) turned as EXIF ``orientation`` says a viewer shows it (the
    transforms of the EXIF 2.3 standard, as PIL's ``ImageOps.exif_transpose``); the first time
    in a process a note says so, naming the file."""
    if orientation == 1:
        return img
    swap = (1, 0, 2) if img.ndim == 3 else (1, 0)
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(swap),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.transpose(swap)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }[orientation](img)
    if not _ORIENTED:
        _ORIENTED.append(str(path))
        print(
            f"note: applying the EXIF orientation of {path} (tag {orientation}) and of every "
            "other image that has one, as photo viewers show them",
            file=sys.stderr,
        )
    return np.ascontiguousarray(turned)


def oriented_size(path: PathLike, hw: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of the header's ``hw`` after the file's EXIF orientation."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return hw
    return (hw[1], hw[0]) if exif_orientation(head) in (5, 6, 7, 8) else hw


def to_float01(img: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] of a decoded image or a crop of one: uint8 / 255, uint16 / 65535 (every
    16-bit level is exact in float32), float32 as stored (assumed [0, 1]; a copy)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255.0)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / np.float32(65535.0)
    if img.dtype in (np.float32, np.float64):
        return img.astype(np.float32)
    raise TypeError(f"to_float01: unsupported sample type {img.dtype}")


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as float32 RGB ``[H, W, 3]`` in [0, 1].

    - uint8 files are divided by 255, uint16 files by 65535 (16-bit precision is kept exactly:
      float32 represents every ``k / 65535``); float TIFFs are returned as stored (assumed [0, 1]).
    - grayscale is replicated to 3 channels; palette images are expanded to their colours;
      an alpha channel is dropped with a ``UserWarning`` naming the file (no compositing).

    Raises:
        ImageReadError: missing, unreadable, empty, corrupt or unsupported file.
    """
    return to_float01(decode_image(path))


def load_image_tensor(path: PathLike) -> torch.Tensor:
    """``load_image`` as a float32 tensor ``[3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(load_image(path).transpose(2, 0, 1)))


def _to_uint8_hwc(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """RGB/gray float [0, 1] or uint8 (numpy HWC/HW, torch CHW) -> uint8 numpy HWC/HW."""
    if isinstance(img, torch.Tensor):
        if img.ndim == 3:
            img = img.permute(1, 2, 0)
        elif img.ndim != 2:
            raise ValueError(f"expected a torch image [C, H, W] or [H, W], got {tuple(img.shape)}")
        img = img.detach().cpu().numpy()
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(img)}")
    if img.dtype == np.uint8:
        arr = img
    elif np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise ValueError("image contains NaN or infinite values")
        arr = quantize_to_uint8(img)
    else:
        raise ValueError(f"expected a float image in [0, 1] or uint8, got dtype {img.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3):
        return arr
    raise ValueError(f"expected an RGB [H, W, 3] or gray [H, W] image, got shape {arr.shape}")


def _rgb_to_bgr(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr[:, :, ::-1]) if arr.ndim == 3 else arr


def _encode(arr_bgr: np.ndarray, ext: str, quality: int) -> bytes:
    ext = ext.lower()
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    elif ext in IMAGE_EXTENSIONS:
        params = []
    else:
        raise ValueError(f"unsupported image extension '{ext}'; use one of {IMAGE_EXTENSIONS}")
    ok, buf = cv2.imencode(ext, arr_bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {arr_bgr.shape} image as '{ext}'")
    return buf.tobytes()


def _check_quality(quality: int) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise ValueError(f"quality must be an int in [0, 100], got {quality!r}")
    if not 0 <= quality <= 100:
        raise ValueError(f"quality must be in [0, 100], got {quality}")
    return int(quality)


def save_image(path: PathLike, img: np.ndarray | torch.Tensor, quality: int = 95) -> Path:
    """Write an 8-bit image; the format follows the extension (PNG, JPEG with ``quality``, ...).

    ``img`` is RGB ``[H, W, 3]`` or gray ``[H, W]`` (numpy), or ``[C, H, W]`` (torch), either
    float in [0, 1] (quantised as ``quantize_to_uint8``: ``round(clamp(v, 0, 1) * 255)``) or uint8.
    Parent directories are created; the file is written to a temporary name in the same
    directory and moved into place with ``os.replace``, so readers never see a partial file.
    Returns the path written.
    """
    path = Path(path)
    quality = _check_quality(quality)
    data = _encode(_rgb_to_bgr(_to_uint8_hwc(img)), path.suffix, quality)
    atomic_write_bytes(path, data)
    return path


def list_images(root: PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All image files under ``root`` (recursive), sorted, matched by extension case-insensitively.

    Symlinked directories are followed (datasets are often linked in), each real directory once.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a directory.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder '{root}' does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"'{root}' is not a folder")
    exts = tuple(e.lower() for e in extensions)
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # symlink cycle or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        found.extend(Path(dirpath) / f for f in filenames if f.lower().endswith(exts))
    return sorted(found)


def _jpeg_uint8(arr: np.ndarray, quality: int) -> np.ndarray:
    """uint8 RGB HWC (or gray HW) -> JPEG bytes in memory -> uint8 of the same shape."""
    ok, buf = cv2.imencode(".jpg", _rgb_to_bgr(arr), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {arr.shape}")
    dec = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if arr.ndim == 2 else cv2.IMREAD_COLOR)
    return _rgb_to_bgr(dec)


def jpeg_roundtrip(img: np.ndarray | torch.Tensor, quality: int) -> np.ndarray | torch.Tensor:
    """JPEG-compress and decompress in memory with OpenCV at ``quality`` (Diss. sec. 3.4.2, IRN-C).

    Accepts numpy RGB ``[H, W, 3]`` / gray ``[H, W]`` (uint8, or float in [0, 1]) and torch float
    ``[3, H, W]`` / ``[B, 3, H, W]`` in [0, 1]. Float inputs are quantised like
    ``quantize_to_uint8`` first and returned as ``decoded / 255`` in the input dtype (and device);
    uint8 stays uint8. OpenCV's default 4:2:0 chroma subsampling is used. The result carries no
    gradient: for JPEG in the training loop use a
    straight-through estimator, ``y + (jpeg_roundtrip(y, q) - y).detach()``.
    """
    quality = _check_quality(quality)
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise ValueError(f"expected a float tensor in [0, 1], got {img.dtype}")
        if img.ndim not in (3, 4) or img.shape[-3] != 3:
            raise ValueError(
                f"expected a tensor [3, H, W] or [B, 3, H, W], got {tuple(img.shape)}"
            )
        batch = img.detach().reshape(-1, *img.shape[-3:])
        q = quantize_to_uint8(batch).permute(0, 2, 3, 1).cpu().numpy()
        dec = np.stack([_jpeg_uint8(q[i], quality) for i in range(q.shape[0])])
        out = torch.from_numpy(dec).permute(0, 3, 1, 2).to(device=img.device, dtype=img.dtype)
        return (out / 255.0).reshape(img.shape)
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(img)}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"expected an RGB [H, W, 3] or gray [H, W] image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return _jpeg_uint8(img, quality)
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"expected a float image in [0, 1] or uint8, got dtype {img.dtype}")
    dec = _jpeg_uint8(quantize_to_uint8(img), quality)
    return (dec.astype(img.dtype) / img.dtype.type(255.0)).astype(img.dtype)
