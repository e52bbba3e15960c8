"""Inputs and outputs of the evaluation scripts (``evaluate.py``, ``evaluate_color.py``).

* Datasets: each ``--data`` folder is one dataset, searched recursively; a folder holding an
  ``HR`` or ``*_HR`` subfolder (``Set5/{HR,LR_bicubic}``, ``DIV2K/DIV2K_valid_HR``) is evaluated
  on those subfolders only; no ``--data``: the scikit-image validation photos.
* The per-image loop over every dataset (:func:`run_datasets`), with progress and skipped
  images listed.
* Plain-text tables, file names safe on every file system, and the JSON report, written
  atomically (a temporary file moved into place with ``os.replace``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from common.atomic import atomic_write_bytes, remove_stale_temps
from common.images import ImageReadError
from common.outputs import OutputError, check_dir, check_file, clean_stale_temps
from common.runtime import ProgressLogger
from irn.cli import fail
from irn.data import NamedImage, load_folder, sample_photos

__all__ = [
    "Column",
    "Dataset",
    "atomic_write_bytes",
    "check_outputs",
    "checkpoint_settings",
    "dataset_tables",
    "find_dataset",
    "format_rows",
    "jsonable",
    "load_datasets",
    "run_datasets",
    "safe_name",
    "write_json",
]

# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """One ``--data`` folder (or the sample photos) and its images."""

    name: str
    path: str | None
    folders: list[str]
    images: list[NamedImage]


def _is_hr_dir(path: Path) -> bool:
    name = path.name.lower()
    return path.is_dir() and (name == "hr" or name.endswith("_hr"))


def find_dataset(root: Path) -> Dataset:
    """The images of one ``--data`` folder: its ``HR``/``*_HR`` subfolders if it has any, else
    everything under it (recursive). Raises ``ValueError``/``ImageReadError`` naming the flag or
    the file."""
    if not root.exists():
        raise ValueError(f"--data: folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"--data: {root} is not a folder")
    hr_dirs = sorted(p for p in root.iterdir() if _is_hr_dir(p))
    folders = hr_dirs or [root]
    images: list[NamedImage] = []
    for folder in folders:
        for item in load_folder(folder, what="--data"):
            item.name = str(Path(item.name).relative_to(root))
            images.append(item)
    name = root.resolve().parent.name if root.name.lower() == "hr" else root.name
    return Dataset(name or str(root), str(root), [str(f) for f in folders], images)


def load_datasets(
    parser: argparse.ArgumentParser,
    data: Sequence[Path],
    out: IO[str],
    sample_set: str = "broad",
) -> list[Dataset]:
    """The ``--data`` folders as datasets (or the built-in validation photos of ``sample_set``,
    announced on ``out``); two folders with the same name get ``#i`` suffixes so they stay
    apart."""
    try:
        if data:
            datasets = [find_dataset(Path(d)) for d in data]
        else:
            photos = sample_photos("val", sample_set)
            print(
                f"No --data given: evaluating on the built-in validation photos of the "
                f"{sample_set} set ({', '.join(i.name for i in photos)}).",
                file=out,
            )
            datasets = [Dataset(f"sample-{sample_set}", None, [], photos)]
    except (ValueError, OSError) as err:  # ImageReadError is a ValueError
        fail(parser, str(err))
    names = [d.name for d in datasets]
    for i, d in enumerate(datasets):
        if names.count(d.name) > 1:
            d.name = f"{d.name}#{i + 1}"
    return datasets


TooSmall = Callable[[np.ndarray], "str | None"]
EvaluateImage = Callable[[Dataset, NamedImage, np.ndarray, ProgressLogger], dict]


def _run_dataset(
    parser: argparse.ArgumentParser,
    ds: Dataset,
    too_small: TooSmall,
    evaluate_image: EvaluateImage,
    bar: ProgressLogger,
    postfix: str,
) -> tuple[list[dict], list[dict]]:
    """The rows and the skipped images of one dataset (see :func:`run_datasets`)."""
    rows: list[dict] = []
    skipped: list[dict] = []
    for item in ds.images:
        try:
            image = item.load()
        except ImageReadError as err:
            bar.close()
            fail(parser, f"--data: {err}")
        reason = too_small(image)
        if reason is not None:
            bar.write(f"skipping {item.name}: {reason}")
            skipped.append({"name": item.name, "reason": reason})
        else:
            row = evaluate_image(ds, item, image, bar)
            rows.append(row)
            bar.set_postfix(**{postfix: row[postfix]})
        bar.update()
        del image
    return rows, skipped


def run_datasets(
    parser: argparse.ArgumentParser,
    datasets: Sequence[Dataset],
    too_small: TooSmall,
    evaluate_image: EvaluateImage,
    dataset_mean: Callable[[Sequence[dict]], dict],
    postfix: str,
) -> list[dict]:
    """Every image of every dataset: loaded (an unreadable file stops the run, naming it),
    skipped with the reason ``too_small(image)`` gives (``None``: keep it), otherwise
    ``evaluate_image(dataset, item, image, progress_bar) -> row``. Returns one entry per dataset
    with its rows, ``dataset_mean(rows)`` and the skipped images."""
    total = sum(len(d.images) for d in datasets)
    results: list[dict] = []
    with ProgressLogger(total, desc="images", log_every=1) as bar:
        for ds in datasets:
            rows, skipped = _run_dataset(parser, ds, too_small, evaluate_image, bar, postfix)
            results.append(
                {
                    "name": ds.name,
                    "path": ds.path,
                    "hr_folders": ds.folders,
                    "num_images": len(rows),
                    "mean": dataset_mean(rows),
                    "images": rows,
                    "skipped": skipped,
                }
            )
    return results


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

Column = tuple[str, str, str]  # (metric key, title, format), e.g. ("psnr_y", "PSNR-Y", "{:7.2f}")


def _cells(row: dict, columns: Sequence[Column]) -> str:
    out = []
    for key, title, fmt in columns:
        value = row.get(key)
        out.append(f"{'-':>{len(title)}}" if value is None else fmt.format(value))
    return "  ".join(out)


def format_rows(
    title: str,
    rows: Sequence[tuple[str, str, dict]],
    columns: Sequence[Column],
    first: str = "image",
    second: str = "size",
) -> str:
    """A plain-text table of ``(name, size, metrics)`` rows under a header (a missing metric
    shows as ``-``; names longer than 40 characters keep their end)."""
    width = min(40, max([len(first), *(len(name) for name, _, _ in rows)]))
    head = f"{first:<{width}} {second:>11}  " + "  ".join(t for _, t, _ in columns)
    lines = [title, head, "-" * len(head)]
    for name, size, row in rows:
        shown = name if len(name) <= width else "..." + name[-(width - 3) :]
        lines.append(f"{shown:<{width}} {size:>11}  {_cells(row, columns)}")
    return "\n".join(lines)


def dataset_tables(
    results: Sequence[dict],
    table: Callable[[str, Sequence[tuple[str, str, dict]]], str],
    size_key: str = "size",
) -> list[str]:
    """One table per dataset of :func:`run_datasets`' results: a row per image (its
    ``row[size_key]`` as ``WxH``) and the mean, formatted by ``table(title, rows)``."""
    tables = []
    for res in results:
        rows = [(r["name"], f"{r[size_key][1]}x{r[size_key][0]}", r) for r in res["images"]]
        if res["images"]:
            rows.append((f"mean ({res['num_images']} images)", "", res["mean"]))
        title = f"\n{res['name']}" + (f" ({res['path']})" if res["path"] else "")
        tables.append(table(title, rows))
    return tables


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """A relative path safe on every file system (``skimage:chelsea`` -> ``skimage_chelsea``)."""
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in Path(name).parts if p not in ("..", "/")]
    return "/".join(p for p in parts if p) or "image"


def check_outputs(
    parser: argparse.ArgumentParser,
    json_path: Path | None,
    save_images: Path | None,
    datasets: Sequence[Dataset],
    other_inputs: Sequence[Path | None] = (),
) -> list[Path]:
    """``--json`` and ``--save-images`` checked before any work (:mod:`common.outputs`: wrong
    kind, below a file, unwritable, extension, the report being an input file); the temporary
    files a killed run left there are removed. Returns the input image paths."""
    images = [i.path for d in datasets for i in d.images if i.path is not None]
    inputs = images + [p for p in other_inputs if p is not None]
    try:
        if json_path is not None:
            check_file(json_path, "--json", (".json",), inputs)
        if save_images is not None:
            check_dir(save_images, "--save-images")
    except OutputError as err:
        fail(parser, str(err))
    clean_stale_temps([None if json_path is None else json_path.parent])
    if save_images is not None and save_images.is_dir():
        remove_stale_temps(save_images, recursive=True)
    return images


def jsonable(value: Any) -> Any:
    """``value`` with paths as strings, numpy scalars as Python numbers and non-finite floats
    as ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return jsonable(value.item())
    return value


def write_json(
    path: Path, settings: dict, results: list[dict], elapsed: float, out: IO[str]
) -> None:
    """The report ``{"settings", "datasets", "seconds"}``, written atomically; says so on
    ``out``."""
    document = {"settings": settings, "datasets": results, "seconds": elapsed}
    text = json.dumps(jsonable(document), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    print(f"wrote {path}", file=out)


def checkpoint_settings(
    script: str, argv: Sequence[str], checkpoint: Path | None, info: dict | None, device: Any
) -> dict:
    """The settings every report carries: the checkpoint (file, kind, step, model config), the
    device, the torch version and the command."""
    return {
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "checkpoint_kind": None if info is None else info["kind"],
        "checkpoint_step": None if info is None else info.get("step"),
        "model_config": None if info is None else info["config"],
        "device": str(device),
        "torch_version": torch.__version__,
        "command": [script, *argv],
    }
