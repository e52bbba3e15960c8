"""Atomic file writes: a reader, or the next run after a ``kill -9``, never finds half a file.

Every file the project writes (checkpoints, images, JSON reports, figures) goes through
:func:`atomic_write`: the data is written to a temporary file in the destination's folder, named
``.<name>.<pid>.<random>.irn-tmp`` so that it is recognisably ours, flushed and ``fsync``-ed, and
only then renamed over the destination with ``os.replace`` (atomic on POSIX and Windows within
one file system). Any exception removes the temporary file and leaves an earlier file at the
destination untouched. Only a hard kill (``SIGKILL``, power loss) between the first byte and the
rename can leave a temporary file behind; :func:`remove_stale_temps` deletes those of processes
that no longer run, and the training, evaluation and rescaling scripts call it on their output
folders at start.

Example::

    atomic_write_bytes("out/lr.png", png_bytes)
    atomic_write_json("report.json", {"psnr": 31.2})
    atomic_torch_save("runs/x/last.pt", state)
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "TEMP_SUFFIX",
    "atomic_save_figure",
    "atomic_save_pil",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_temp_name",
    "remove_stale_temps",
    "temp_path",
]

TEMP_SUFFIX = ".irn-tmp"
# Ours: ".<name>.<pid>.<hex>.irn-tmp"; earlier versions wrote ".<name>[.<pid>].<hex>.tmp".
_TEMP = re.compile(r"^\..+?\.(?:(?P<pid>\d+)\.)?[0-9a-f]{8,32}(?:\.irn-tmp|\.tmp)$")

PathLike = str | os.PathLike


def temp_path(path: PathLike) -> Path:
    """The temporary name :func:`atomic_write` uses next to ``path`` (unique per call)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def _fsync_dir(directory: Path) -> None:
    """Persist a rename on POSIX; a directory cannot be opened this way on Windows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary temporary file next to ``path``, then move it to ``path``.

    The temporary file is flushed and fsynced before ``os.replace``; on any exception (also
    ``KeyboardInterrupt``) it is removed and the exception propagates, leaving what was at
    ``path`` before. Parent folders are created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    # O_EXCL: never clobber another file; mode 0o666 lets the umask apply as for open().
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 2, **kwargs: Any) -> Path:
    """``json.dumps(obj)`` (plus a newline) to ``path`` atomically; the text is built first,
    so an object that cannot be serialised leaves no file at all."""
    text = json.dumps(obj, indent=indent, **kwargs) + "\n"
    return atomic_write_text(path, text)


def atomic_torch_save(path: PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_pil(path: PathLike, image: Any, format: str | None = None, **kwargs: Any) -> Path:
    """``PIL.Image.save`` to ``path`` atomically (format from ``path``'s extension unless
    ``format`` is given)."""
    from PIL import Image

    fmt = format or Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported image extension {Path(path).suffix!r}")
    return atomic_write(path, lambda f: image.save(f, format=fmt, **kwargs))


def atomic_save_figure(path: PathLike, figure: Any, **kwargs: Any) -> Path:
    """A matplotlib ``figure.savefig`` to ``path`` atomically (format from the extension)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda f: figure.savefig(f, format=fmt, **kwargs))


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file name of :func:`atomic_write` (or of earlier
    versions of this project)."""
    return _TEMP.match(name) is not None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (someone else's) or we cannot tell: leave its files alone
    return True


def remove_stale_temps(
    folder: PathLike, say: Callable[[str], Any] | None = print, recursive: bool = False
) -> list[Path]:
    """Delete temporary files of :func:`atomic_write` left in ``folder`` by killed processes
    (their process id no longer runs; files of earlier versions without one always); print one
    line saying how many and how large (``say=None``: silent). A missing folder is fine.
    Returns the deleted paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    entries = folder.rglob(".*") if recursive else folder.glob(".*")
    removed, size = [], 0
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or not entry.is_file():
            continue
        pid = match.group("pid")
        if pid is not None and _alive(int(pid)):
            continue
        try:
            size += entry.stat().st_size
            entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    if removed and say is not None:
        names = ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        say(
            f"note: removed {len(removed)} unfinished temporary file(s) of an interrupted run "
            f"in {folder} ({size / 2**20:.1f} MB: {names})"
        )
    return sorted(removed)
