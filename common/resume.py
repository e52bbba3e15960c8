"""What a resumed run does with the flags it is given, and when it has nothing to do.

A checkpoint carries the optimiser state (Adam's moments and its learning rate) and the
learning-rate schedule; loading them would silently override ``--lr``, ``--lr-milestones`` and
the like given on the command line, while the checkpoints written afterwards would record the
flags. :func:`reconcile_resume_flags` makes the choice explicit:

* an optimiser or schedule flag (``locked``) left at its default takes the checkpoint's value,
  said in one line;
* one given with another value than the checkpoint's is refused, naming the flag (fine-tuning
  with a fresh optimiser is ``--init-weights``);
* every other setting that differs from the checkpoint's (loss weights, clipping, validation
  cadence, ...) applies from the resumed iteration on, listed in one line.

So the configuration stored in later checkpoints always describes the state they hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from common.config import config_to_dict

__all__ = ["NOT_COMPARED", "OPTIMISER_FIELDS", "nothing_to_do", "reconcile_resume_flags"]

# Restored from the checkpoint's optimiser / scheduler state, not from the flags.
OPTIMISER_FIELDS = ("lr", "beta1", "beta2", "weight_decay", "lr_milestones", "lr_gamma")
# Settings of the session rather than of the run: a resume may change them without a word.
NOT_COMPARED = (
    "resume", "overwrite", "init_weights", "out", "logdir", "device", "threads", "workers",
    "iters", "epochs", "tensorboard", "cache", "amp_dtype",
)  # fmt: skip


def _norm(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_norm(v) for v in value)
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def reconcile_resume_flags(
    cfg: Any, stored: Mapping[str, Any], source: str, locked: Iterable[str] = OPTIMISER_FIELDS
) -> tuple[Any, list[str]]:
    """``(cfg with the checkpoint's optimiser settings, lines to print)`` for resuming from the
    checkpoint ``source`` whose stored config is ``stored``.

    Raises:
        SystemExit: a ``locked`` flag was given with a value other than the checkpoint's.
    """
    given = config_to_dict(cfg)
    adopt: dict[str, Any] = {}
    kept, changed = [], []
    for f in dataclasses.fields(cfg):
        name = f.name
        if name in NOT_COMPARED or (name not in stored and name in set(locked)):
            continue
        # a setting newer than the checkpoint: it was trained with that setting's default
        old = _norm(stored[name]) if name in stored else _norm(_default(f))
        new = _norm(given[name])
        if old == new:
            continue
        if name in set(locked):
            if new != _norm(_default(f)):
                raise SystemExit(
                    f"{_flag(name)} {given[name]}: the checkpoint {source} was trained with "
                    f"{_flag(name)} {stored[name]}, and resuming restores its optimiser and "
                    f"schedule; resume without {_flag(name)} (or with the checkpoint's value), "
                    "or fine-tune with --init-weights for a fresh optimiser"
                )
            adopt[name] = old
            kept.append(f"{_flag(name)} {stored[name]}")
        else:
            before = stored[name] if name in stored else f"{_default(f)} (default; not recorded)"
            changed.append(f"{_flag(name)} {before} -> {given[name]}")
    lines = []
    if kept:
        lines.append(f"Resumed optimiser settings from the checkpoint: {', '.join(kept)}.")
    if changed:
        lines.append(f"Settings changed on resume (applied from now on): {', '.join(changed)}.")
    return (dataclasses.replace(cfg, **adopt) if adopt else cfg), lines


def nothing_to_do(source: str, step: int, total: int, flag: str = "--iters") -> str:
    """The message of a resume at or past the end of training (nothing is written)."""
    return (
        f"Nothing to do: {source} is at step {step} of the {total} that {flag} asks for; "
        f"nothing was trained or written. Raise {flag} to train further."
    )
