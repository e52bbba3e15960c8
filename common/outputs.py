"""Check every output location before any data or model work.

A run that trains for an hour and then fails to write its checkpoint, or an evaluation that
overwrites the photo it reads, loses work. The entry scripts therefore check each place they will
write (run folder, TensorBoard folder, checkpoint, ``--json`` report, ``--save-images`` folder,
the output of ``rescale.py``) at start, with :func:`check_dir` and :func:`check_file`:

* a folder that exists as a file, or a file that exists as a folder;
* a path below an existing file (``out.png/run``);
* a folder that cannot be written (a file is created and removed there: the probe catches
  read-only mounts and ACLs that permission bits do not show);
* a file name whose extension the writer does not support;
* an output that is one of the input files (``os.path.samefile``, so another relative path or a
  link to the same file is caught too).

Each failure is an :class:`OutputError` whose one-line message names the flag and the path.
Nothing is created by the checks (a missing folder is probed in its nearest existing parent).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from common.atomic import remove_stale_temps

__all__ = [
    "OutputError",
    "check_dir",
    "check_file",
    "check_not_input",
    "check_run_outputs",
    "clean_stale_temps",
]

PathLike = str | os.PathLike


class OutputError(ValueError):
    """An output location cannot be used; the message names the flag and the path."""


def _existing_parent(path: Path, flag: str) -> Path:
    """The nearest existing ancestor of ``path`` (a folder), or ``OutputError`` when it is a
    file (``path`` would lie below a file)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: lies below {parent}, which is a file, not a folder")
    return parent


def _probe_write(folder: Path) -> None:
    """Create and remove a file in ``folder`` (``OSError`` when it cannot be written)."""
    fd, name = tempfile.mkstemp(prefix=".irn-probe-", dir=folder)
    os.close(fd)
    os.unlink(name)


def _check_writable(folder: Path, flag: str, path: Path) -> None:
    try:
        _probe_write(folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        where = "" if folder == path else f" (in {folder})"
        raise OutputError(f"{flag} {path}: cannot write there{where}: {reason}") from None


def check_not_input(path: PathLike, flag: str, inputs: Iterable[PathLike]) -> None:
    """``OutputError`` when ``path`` is the same file as one of ``inputs`` (through any path)."""
    path = Path(path)
    if not path.exists():
        return
    for source in inputs:
        source = Path(source)
        try:
            same = source.exists() and os.path.samefile(path, source)
        except OSError:
            same = False
        if same:
            raise OutputError(
                f"{flag} {path}: is the input file {source}; writing it would destroy the "
                "input (choose another output name)"
            )


def check_dir(path: PathLike, flag: str) -> Path:
    """Check that ``path`` is, or can be created as, a writable folder; returns it."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{flag} {path}: exists and is a file, not a folder")
        _check_writable(path, flag, path)
        return path
    _check_writable(_existing_parent(path, flag), flag, path)
    return path


def check_file(
    path: PathLike,
    flag: str,
    extensions: Iterable[str] | None = None,
    inputs: Iterable[PathLike] = (),
) -> Path:
    """Check that a file can be written at ``path`` (by an atomic rename in its folder): not a
    folder, not below a file, an extension in ``extensions`` (case-insensitive; ``None``: any),
    not one of ``inputs``, and its folder writable. Returns ``path``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder; expected a file name")
    if extensions is not None:
        allowed = tuple(e.lower() for e in extensions)
        if path.suffix.lower() not in allowed:
            raise OutputError(
                f"{flag} {path}: unsupported extension {path.suffix or '(none)'!r}; use one of "
                f"{', '.join(allowed)}"
            )
    check_not_input(path, flag, inputs)
    folder = path.parent if path.parent.exists() else _existing_parent(path, flag)
    if not folder.is_dir():
        raise OutputError(f"{flag} {path}: lies below {folder}, which is a file, not a folder")
    _check_writable(folder, flag, path)
    return path


def clean_stale_temps(
    folders: Iterable[PathLike | None], say: Callable[[str], Any] | None = print
) -> None:
    """:func:`common.atomic.remove_stale_temps` in each existing folder (``None`` skipped)."""
    seen: set[Path] = set()
    for folder in folders:
        if folder is None:
            continue
        folder = Path(folder)
        if folder in seen:
            continue
        seen.add(folder)
        remove_stale_temps(folder, say)


def check_run_outputs(
    out_dir: PathLike,
    logdir: PathLike | None = None,
    tensorboard: bool = True,
    say: Callable[[str], Any] | None = print,
) -> None:
    """The outputs of a training run: the run folder (``--out``), its checkpoint files, the
    TensorBoard folder (``--logdir``, default ``<out>/tb``); then the temporary files a killed
    run left in the run folder are removed (with a note)."""
    out_dir = check_dir(out_dir, "--out")
    for name in ("last.pt", "best.pt"):
        if (out_dir / name).is_dir():
            raise OutputError(f"--out {out_dir}: {out_dir / name} is a folder, not a checkpoint")
    if tensorboard:
        if logdir is None:
            check_dir(out_dir / "tb", "--out")
        else:
            check_dir(logdir, "--logdir")
    clean_stale_temps([out_dir], say)
