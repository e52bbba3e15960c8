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
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import (
    CheckpointError,
    is_unsafe_pickle,
    load_checkpoint,
    load_weights_strict,
    unreadable_message,
)
from common.config import ConfigError, config_from_dict
from common.haar import HaarDownsampling, haar_kernel
from irn.color import IRNColor, IRNColorConfig
from irn.model import IRN, IRNConfig

__all__ = [
    "checkpoint_kind",
    "is_color_checkpoint",
    "load_authors_checkpoint",
    "load_color_checkpoint",
    "load_irn",
    "read_init_weights",
    "to_authors_state_dict",
]

COLOR_TASK = "color"  # config["task"] of an IRN-Color training checkpoint

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
        # what the forward pass gave on the training images (irn/ood.py); {} in older files
        "forward_stats": dict((obj.get("extra") or {}).get("forward_stats") or {}),
        # the z' of training (--gaussian-scale); None in files that do not record it
        "gaussian_scale": obj["config"].get("gaussian_scale"),
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


# ---------------------------------------------------------------------------------------------
# The authors' checkpoint layout
# ---------------------------------------------------------------------------------------------

_AUTHORS_KEY = re.compile(
    r"^operations\.(\d+)\.(?:(haar_weights)|([FGH])\.conv([1-5])\.(weight|bias))$"
)
_LAYOUT = (
    "the authors' InvRescaleNet layout: operations.{i}.haar_weights (Haar levels) and "
    "operations.{i}.{F,G,H}.conv{1..5}.{weight,bias} (couplings)"
)


def to_authors_state_dict(model: IRN) -> OrderedDict[str, torch.Tensor]:
    """``model``'s weights in the authors' key layout, with their fixed ``haar_weights`` inserted.

    The result loads into the authors' ``InvRescaleNet`` and back through
    :func:`load_authors_checkpoint`. Tensors are shared with the model (as ``state_dict()``).
    Refused for x3 (no Haar layout) and for a clamp the authors' code cannot express.
    """
    if not isinstance(model, IRN):
        raise ValueError(f"to_authors_state_dict: expected an IRN, got {type(model).__name__}")
    cfg = model.config
    if cfg.scale == 3:
        raise ValueError(
            "to_authors_state_dict: IRN(x3) uses a learnable ConvDownsampling; only the Haar "
            "models (x2, x4, x8) have the authors' checkpoint layout"
        )
    if cfg.actnorm:
        raise ValueError(
            "to_authors_state_dict: this model has ActNorm layers (actnorm=True), which the "
            "authors' InvRescaleNet does not have"
        )
    if cfg.multiscale:
        raise ValueError(
            "to_authors_state_dict: this is a multi-scale IRN (multiscale=True), which the "
            "authors' InvRescaleNet does not have"
        )
    if cfg.clamp != 1.0 or cfg.clamp_tightness != 1.0:
        raise ValueError(
            f"to_authors_state_dict: the authors' code fixes clamp=1 and clamp_tightness=1, "
            f"this model has clamp={cfg.clamp}, clamp_tightness={cfg.clamp_tightness}"
        )
    ref = next(model.parameters())
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i, op in enumerate(model.operations):
        if isinstance(op, HaarDownsampling):
            kernel = haar_kernel(op.channels).to(dtype=ref.dtype, device=ref.device)
            out[f"operations.{i}.haar_weights"] = kernel
        else:
            for name, tensor in op.state_dict().items():
                out[f"operations.{i}.{name}"] = tensor
    return out


def _read(source: Any, map_location: Any) -> tuple[Mapping[str, Any], str]:
    """The raw mapping and a name for messages, from a path or a mapping."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ValueError(f"{name}: no such checkpoint file")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            if is_unsafe_pickle(err):
                raise ValueError(unreadable_message(path, err)) from None
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(
                f"{name}: cannot be read as a PyTorch checkpoint with "
                f"torch.load(weights_only=True) ({type(err).__name__}: {first}); expected a "
                f"state_dict in {_LAYOUT}"
            ) from err
    elif isinstance(source, Mapping):
        obj, name = source, "state_dict argument"
    else:
        raise ValueError(
            "load_authors_checkpoint: expected a file path or a state_dict, "
            f"got {type(source).__name__}"
        )
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{name}: expected a state_dict (a dict of tensors), got {type(obj).__name__}"
        )
    return obj, name


def _unwrap(obj: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
    """The state_dict inside ``obj``, ``module.`` prefixes (DataParallel) stripped."""
    if not obj:
        raise ValueError(f"{name}: empty checkpoint; expected a state_dict in {_LAYOUT}")
    sd = obj
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                sd = obj[key]
                break
        else:
            raise ValueError(
                f"{name}: not a state_dict (some values are not tensors) and no 'state_dict' or "
                f"'model' entry holding one; top-level keys: {sorted(map(str, obj))[:10]}"
            )
        name = f"{name}[{key!r}]"
    if not sd:
        raise ValueError(f"{name}: empty state_dict; expected {_LAYOUT}")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{name}: entries that are not tensors: {bad[:5]}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _infer_config(sd: Mapping[str, torch.Tensor], name: str) -> IRNConfig:
    """Scale, couplings per level, channels and growth from the keys and shapes."""
    unknown = [k for k in sd if not _AUTHORS_KEY.match(k)]
    if unknown:
        raise ValueError(
            f"{name}: not an IRN checkpoint in the authors' layout: {len(unknown)} unexpected "
            f"key(s), e.g. {unknown[:5]}; expected only {_LAYOUT}"
        )
    ops: dict[int, set[str]] = {}
    for key in sd:
        index, rest = key.split(".", 2)[1:]
        ops.setdefault(int(index), set()).add(rest)
    haar = sorted(i for i, names in ops.items() if "haar_weights" in names)
    if not haar:
        raise ValueError(
            f"{name}: no operations.{{i}}.haar_weights entry; expected {_LAYOUT}. (This project's "
            "own IRN checkpoints omit them: rebuild with IRN(IRNConfig(**ckpt['config'])) and "
            "load_state_dict instead; x3 models have no authors' layout here.)"
        )
    n_ops = max(ops) + 1
    absent = [i for i in range(n_ops) if i not in ops]
    if absent:
        raise ValueError(
            f"{name}: missing every key of operation(s) {absent[:5]} (expected "
            f"operations.{{i}}.haar_weights or operations.{{i}}.F/G/H.conv1..5 for each i "
            f"in 0..{n_ops - 1})"
        )
    mixed = [i for i in haar if len(ops[i]) > 1]
    if mixed:
        raise ValueError(f"{name}: operations.{mixed[0]} holds both haar_weights and a coupling")
    if haar[0] != 0:
        raise ValueError(f"{name}: expected operations.0.haar_weights (the first Haar level)")
    if len(haar) > 3:
        raise ValueError(
            f"{name}: {len(haar)} Haar levels (x{2 ** len(haar)}); supported: 1, 2, 3 (x2, x4, x8)"
        )
    bounds = [*haar, n_ops]
    per_level = [bounds[j + 1] - bounds[j] - 1 for j in range(len(haar))]
    if len(set(per_level)) != 1 or per_level[0] < 1:
        raise ValueError(
            f"{name}: couplings after each Haar level are {per_level}; expected the same "
            "number (>= 1) at every level"
        )
    first = sd["operations.0.haar_weights"]
    if first.dim() != 4 or first.shape[0] % 4 or tuple(first.shape[1:]) != (1, 2, 2):
        raise ValueError(
            f"{name}: operations.0.haar_weights has shape {tuple(first.shape)}; expected "
            "[4*C, 1, 2, 2]"
        )
    in_channels = first.shape[0] // 4
    for level, i in enumerate(haar):
        key = f"operations.{i}.haar_weights"
        expected = haar_kernel(in_channels * 4**level)
        got = sd[key]
        if tuple(got.shape) != tuple(expected.shape):
            raise ValueError(
                f"{name}: {key} has shape {tuple(got.shape)}; expected {tuple(expected.shape)} "
                f"at Haar level {level}"
            )
        if not torch.equal(got.detach().to("cpu", torch.float32), expected):
            raise ValueError(
                f"{name}: {key} is not the canonical Haar kernel (common.haar_kernel"
                f"({in_channels * 4**level})); refusing a modified Haar transform"
            )
    growth = [v.shape[0] for k, v in sd.items() if re.search(r"\.conv[1-4]\.weight$", k)]
    if not growth:
        raise ValueError(f"{name}: no coupling convolution weights found; expected {_LAYOUT}")
    return IRNConfig(
        scale=2 ** len(haar),
        blocks_per_level=per_level[0],
        gc=int(growth[0]),
        in_channels=int(in_channels),
    )


def load_authors_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any], map_location: Any = "cpu"
) -> IRN:
    """Build an :class:`IRN` from the IRN authors' released weights (x2, x4, x8).

    Accepts a file path (read with ``torch.load(..., weights_only=True)``), a state_dict, or a
    dict holding one under ``"state_dict"`` or ``"model"``. A ``module.`` prefix (DataParallel)
    is stripped. The scale and couplings per level are inferred from the positions of the
    ``operations.{i}.haar_weights`` entries, the channel count from their shapes and the
    subnet growth from the convolution shapes; every ``haar_weights`` must equal the canonical
    :func:`~common.haar.haar_kernel`. Unknown, missing, misshapen, non-finite or non-float
    entries are refused with a ``ValueError`` naming the source and what was expected.
    ``clamp`` and ``clamp_tightness`` are not stored by the authors and take their value 1.

    Returns:
        The model in eval mode (moved to ``map_location`` when it is a device or a string).
    """
    obj, name = _read(path_or_state_dict, map_location)
    sd = _unwrap(obj, name)
    cfg = _infer_config(sd, name)
    model = IRN(cfg)
    expected = to_authors_state_dict(model)
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ValueError(
            f"{name}: {len(missing)} missing key(s) for an IRN x{cfg.scale} with "
            f"{cfg.blocks_per_level} couplings per level: {missing[:5]}"
        )
    extra = [k for k in sd if k not in expected]
    if extra:  # pragma: no cover - excluded by the key pattern and the structure checks
        raise ValueError(f"{name}: unexpected key(s) {extra[:5]}")
    wrong = [
        f"{k}: {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if tuple(sd[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError(
            f"{name}: {len(wrong)} tensor(s) with the wrong shape for an IRN x{cfg.scale} "
            f"(in_channels={cfg.in_channels}, gc={cfg.gc}): {wrong[:3]}"
        )
    not_float = [k for k, v in sd.items() if not v.is_floating_point()]
    if not_float:
        raise ValueError(f"{name}: non-floating-point tensors: {not_float[:5]}")
    not_finite = [k for k, v in sd.items() if not torch.isfinite(v).all()]
    if not_finite:
        raise ValueError(f"{name}: tensors containing NaN or inf: {not_finite[:5]}")
    weights = {k: v for k, v in sd.items() if not k.endswith(".haar_weights")}
    model.load_state_dict(weights, strict=True)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# IRN-Color checkpoints
# ---------------------------------------------------------------------------------------------


def _color_config_dict(obj: Any) -> Mapping[str, Any] | None:
    """``obj["config"]`` if ``obj`` is a training checkpoint with ``config["task"] == "color"``."""
    if not isinstance(obj, Mapping):
        return None
    config = obj.get("config")
    if isinstance(config, Mapping) and config.get("task") == COLOR_TASK:
        return config
    return None


def is_color_checkpoint(path_or_obj: str | os.PathLike | Mapping[str, Any]) -> bool:
    """Whether a checkpoint (file or loaded dict) was written by ``train_irn_color.py`` (or by
    the former ``train_irn.py --task color``).

    A file that cannot be read gives False (the caller's own loader reports the error).
    """
    if isinstance(path_or_obj, Mapping):
        return _color_config_dict(path_or_obj) is not None
    try:
        obj = load_checkpoint(path_or_obj, map_location="cpu", mmap=True)
    except CheckpointError:
        return False
    return _color_config_dict(obj) is not None


def load_color_checkpoint(
    path_or_obj: str | os.PathLike | Mapping[str, Any], map_location: Any = "cpu"
) -> tuple[IRNColor, dict[str, Any]]:
    """Rebuild an :class:`IRNColor` (eval mode) from a ``train_irn_color.py`` checkpoint.

    The architecture comes from ``config["model"]`` (the :class:`IRNColorConfig` fields), the
    weights from ``"model"`` (loaded strictly).

    Returns:
        ``(model, info)`` with ``info = {"kind": "ours", "task": "color", "step", "config",
        "path"}``.

    Raises:
        CheckpointError: naming the file when it is unreadable, not a colour checkpoint, or its
            weights do not fit the architecture it describes.
    """
    if isinstance(path_or_obj, Mapping):
        name, path, obj = "checkpoint object", None, path_or_obj
    else:
        name, path = str(path_or_obj), str(path_or_obj)
        obj = load_checkpoint(path_or_obj, map_location=map_location)
    config = _color_config_dict(obj)
    if config is None:
        raise CheckpointError(
            f"{name}: not an IRN-Color checkpoint (expected config['task'] == 'color', as "
            "written by train_irn_color.py)"
        )
    stored = config.get("model")
    if not isinstance(stored, Mapping):
        raise CheckpointError(
            f"{name}: config has no 'model' entry with the IRNColorConfig fields"
        )
    try:
        cfg = config_from_dict(IRNColorConfig, stored)
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{name}: config['model'] does not describe an IRNColor ({err}); stored: "
            f"{dict(stored)}"
        ) from None
    model = load_weights_strict(
        IRNColor(cfg), obj.get("model"), name, f"IRNColor({cfg})", map_location
    )
    step = obj.get("step")
    info = {
        "kind": "ours",
        "task": COLOR_TASK,
        "step": int(step) if isinstance(step, int) else None,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "path": path,
    }
    return model.eval(), info


# ---------------------------------------------------------------------------------------------
# --init-weights: fine-tuning from any checkpoint of the same architecture
# ---------------------------------------------------------------------------------------------


def read_init_weights(path: str, model_cfg: Any) -> tuple[dict[str, torch.Tensor], str]:
    """``--init-weights``: the state_dict in ``path`` (a training checkpoint of this project, or
    the IRN authors' release for an IRN) and a description of it, refused unless the
    architecture it describes is ``model_cfg`` (an :class:`IRNConfig` or an
    :class:`~irn.color.IRNColorConfig`).

    ``init`` is not compared: it only decides how fresh weights are drawn, and these are
    replaced by the file's (``--init kaiming`` may fine-tune an xavier-initialised model).

    Raises:
        SystemExit: naming the flag, the file and each field where the checkpoint's model and
            the flags differ (or the job when an IRN-Color checkpoint meets an IRN, and back).
        CheckpointError: the file is missing, unreadable or not a checkpoint of either kind.
    """
    try:
        loaded, info = _load_for_init(path, model_cfg)
    except CheckpointError as err:
        raise CheckpointError(f"--init-weights: {err}") from None
    stored = loaded.config
    diffs = [
        f"{name}: checkpoint {getattr(stored, name)!r}, flags {getattr(model_cfg, name)!r}"
        for name in model_cfg.__dataclass_fields__
        if name != "init" and getattr(stored, name) != getattr(model_cfg, name)
    ]
    if diffs:
        raise SystemExit(
            f"--init-weights {path}: the checkpoint's model differs from the flags' "
            f"({'; '.join(diffs)}); pass the model flags that match it"
        )
    if info["kind"] == "authors":
        what = "the IRN authors' released weights"
    elif info["step"] is not None:
        what = f"weights after {info['step']} iterations"
    else:
        what = "weights"
    return loaded.state_dict(), f"{what} from {path}"


def _load_for_init(path: str, model_cfg: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model in ``path`` for :func:`read_init_weights`, of the job ``model_cfg`` names."""
    flag = f"--init-weights {path}"
    if isinstance(model_cfg, IRNColorConfig):
        if not is_color_checkpoint(path):
            load_checkpoint(path)  # a missing or unreadable file: its own message
            raise SystemExit(
                f"{flag}: not an IRN-Color checkpoint (written by train_irn_color.py); "
                "fine-tune an IRN with train_irn.py"
            )
        return load_color_checkpoint(path)
    if is_color_checkpoint(path):
        raise SystemExit(f"{flag}: an IRN-Color checkpoint; fine-tune it with train_irn_color.py")
    return load_irn(path)
