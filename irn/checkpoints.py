"""Load an IRN from either kind of checkpoint, telling which one it was.

Two kinds are recognised:

* **ours** (written by ``train_irn.py`` through :func:`common.checkpoint.make_checkpoint`): a dict
  ``{"model": IRN state_dict, "config": {..., "model": {IRNConfig fields}}, "step": int, ...}``.
  The architecture is rebuilt from ``config["model"]`` (or from ``config`` itself when it holds
  exactly :class:`~irn.model.IRNConfig` fields), the weights are loaded strictly.
* **authors**: the IRN authors' released ``.pth`` files, plain state_dicts of their
  ``InvRescaleNet`` (``operations.{i}.haar_weights`` ...), also when wrapped under
  ``"state_dict"`` or ``"model"``; read by :func:`irn.model.load_authors_checkpoint`.

Usage::

    model, info = load_irn("runs/irn_x4/best.pt")   # info["kind"] == "ours"
    model, info = load_irn("IRN_x4.pth")             # info["kind"] == "authors"
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import CheckpointError, load_checkpoint, load_weights_strict
from common.config import ConfigError, config_from_dict
from irn.model import IRN, IRNConfig, load_authors_checkpoint

__all__ = ["load_irn", "checkpoint_kind"]

_IRN_FIELDS = tuple(f.name for f in dataclasses.fields(IRNConfig))
_OURS = (
    "this project's training checkpoint {'model': IRN state_dict, 'config': {'model': "
    "{IRNConfig fields}}, 'step': ...}"
)
_AUTHORS = "the IRN authors' released state_dict (operations.{i}.haar_weights, ...F.conv1...)"


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _has_haar(sd: Mapping[str, Any]) -> bool:
    return any(str(k).endswith("haar_weights") for k in sd)


def checkpoint_kind(obj: Mapping[str, Any]) -> str:
    """``"ours"``, ``"authors"`` or ``"unknown"`` for a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        return "unknown"
    if isinstance(obj.get("model"), Mapping) and isinstance(obj.get("config"), Mapping):
        return "ours"
    if _is_state_dict(obj) and _has_haar(obj):
        return "authors"
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if _is_state_dict(inner) and _has_haar(inner):
            return "authors"
    return "unknown"


def _config_dict(cfg: IRNConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in _IRN_FIELDS}


def _model_config(config: Mapping[str, Any], name: str) -> IRNConfig:
    """The IRNConfig stored in our checkpoint's ``config``."""
    model_cfg = config.get("model")
    if not isinstance(model_cfg, Mapping):
        if set(config) and set(config) <= set(_IRN_FIELDS):
            model_cfg = config  # a bare asdict(IRNConfig)
        else:
            raise CheckpointError(
                f"{name}: its 'config' has no 'model' entry with the IRNConfig fields "
                f"(config keys: {sorted(map(str, config))[:12]}); expected {_OURS}"
            )
    try:
        return config_from_dict(IRNConfig, model_cfg)
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{name}: config['model'] does not describe an IRN ({err}); stored: {dict(model_cfg)}"
        ) from None


def _load_ours(obj: Mapping[str, Any], name: str, map_location: Any) -> tuple[IRN, dict[str, Any]]:
    cfg = _model_config(obj["config"], name)
    state = obj["model"]
    model = load_weights_strict(
        IRN(cfg), state, name, f"IRN({cfg}) built from its config", map_location
    )
    step = obj.get("step")
    info = {
        "kind": "ours",
        "step": int(step) if isinstance(step, int) else None,
        "config": _config_dict(cfg),
    }
    return model.eval(), info


def load_irn(
    path_or_obj: str | os.PathLike | Mapping[str, Any], map_location: Any = "cpu"
) -> tuple[IRN, dict[str, Any]]:
    """Build an :class:`IRN` in eval mode from our checkpoint or the authors' state_dict.

    Args:
        path_or_obj: a file (read with ``torch.load(..., weights_only=True)``) or an already
            loaded checkpoint dict / state_dict.
        map_location: where tensors are loaded and the model is moved.

    Returns:
        ``(model, info)`` with ``info = {"kind": "ours" | "authors", "path": str | None,
        "scale": int, "step": int | None, "config": {IRNConfig fields}}``.

    Raises:
        CheckpointError: (a ``ValueError``) naming the file when it is missing, unreadable,
            neither kind, or its weights do not fit the architecture it describes.
    """
    if isinstance(path_or_obj, (str, os.PathLike)):
        path: Path | None = Path(path_or_obj)
        name = str(path)
        obj = load_checkpoint(path, map_location=map_location)
    elif isinstance(path_or_obj, Mapping):
        path, name, obj = None, "checkpoint object", path_or_obj
    else:
        raise CheckpointError(
            f"load_irn: expected a file path or a checkpoint dict, got {type(path_or_obj)}"
        )
    kind = checkpoint_kind(obj)
    if kind == "ours":
        model, info = _load_ours(obj, name, map_location)
    elif kind == "authors":
        try:
            model = load_authors_checkpoint(obj, map_location=map_location)
        except ValueError as err:
            raise CheckpointError(str(err).replace("state_dict argument", name)) from None
        info = {"kind": "authors", "step": None, "config": _config_dict(model.config)}
    else:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        hint = ""
        if _is_state_dict(obj) and any(".F.conv1." in str(k) for k in obj):
            hint = (
                " It looks like a bare IRN state_dict without its config: save it with "
                "common.checkpoint.make_checkpoint(model=..., config=...) or in the authors' "
                "layout with irn.model.to_authors_state_dict."
            )
        raise CheckpointError(
            f"{name}: not an IRN checkpoint (top-level keys: {keys}); expected {_OURS} or "
            f"{_AUTHORS}.{hint}"
        )
    info["path"] = None if path is None else str(path)
    info["scale"] = int(model.scale)
    return model, info
