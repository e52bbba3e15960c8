"""Command-line flags generated from config dataclasses.

Every entry script describes its settings as a dataclass and lets this module derive the
argparse flags, so a field and its flag cannot drift apart::

    @configclass
    class TrainConfig:
        lr: float = field(default=2e-4, metadata={"help": "Adam learning rate."})
        milestones: tuple[int, ...] = field(
            default=(100_000, 200_000), metadata={"help": "Steps at which the lr is halved."}
        )

        def __post_init__(self) -> None:
            if self.lr <= 0:
                raise ConfigError("must be positive", field="lr")

    cfg = parse_config(TrainConfig)  # python train.py --lr 1e-4 --milestones 10 20

Field name ``batch_size`` becomes ``--batch-size``; the annotation picks the parser:

==============================  =================================================
annotation                      flag
==============================  =================================================
``int``, ``float``, ``str``,    ``--x VALUE``
``pathlib.Path``
``bool``                        ``--x`` / ``--no-x`` (``BooleanOptionalAction``)
``Literal["a", "b"]``, Enum     ``--x {a,b}`` (``choices``)
``tuple[int, ...]``,            ``--x 1 2 3`` (``nargs="*"``; tuples stay tuples)
``list[int]``
``tuple[int, int]``             ``--x 1 2`` (``nargs=2``)
``Optional[X]`` / ``X | None``  as for ``X``; the word ``none`` gives ``None``
a nested dataclass              its fields as ``--<name>-<field>`` flags
==============================  =================================================

Every field needs ``metadata={"help": "..."}``. :func:`configclass` checks this when the class
is defined and :func:`add_dataclass_arguments` checks it again when the parser is built, so no
flag can lack a help text.

Validation lives in ``__post_init__``: raise :class:`ConfigError` with ``field=...`` (or any
``ValueError`` whose message mentions the field name) and :func:`parse_config` reports it as
``error: --flag-name: message``.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import re
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

__all__ = [
    "ConfigError",
    "add_dataclass_arguments",
    "config_from_dict",
    "config_to_dict",
    "config_to_text",
    "configclass",
    "dataclass_from_args",
    "parse_config",
    "parse_config_with_args",
]

T = TypeVar("T")

_NONE_WORDS = frozenset({"none", "null"})
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """An invalid configuration value.

    Raise it from ``__post_init__`` with ``field="name"`` to say which field is wrong; the command
    line then reports the matching flag. ``flag`` is filled in by :func:`dataclass_from_args`.
    """

    def __init__(self, message: str, *, field: str | None = None, flag: str | None = None):
        self.message = message
        self.field = field
        self.flag = flag
        where = flag or field
        super().__init__(f"{where}: {message}" if where else message)


# ---------------------------------------------------------------------------------------------
# Annotation -> argparse specification
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Flag:
    """How one dataclass field maps to one argparse flag."""

    name: str  # field name
    flag: str  # "--batch-size"
    dest: str  # "batch_size"
    kwargs: dict[str, Any]  # passed to add_argument
    convert: Callable[[Any], Any]  # parsed value -> field value


def _normalise_prefix(prefix: str) -> str:
    """``"model"`` / ``"model-"`` / ``"model_"`` -> ``"model-"``; ``""`` stays empty."""
    prefix = prefix.strip("-_")
    return f"{prefix.replace('_', '-')}-" if prefix else ""


def _flag_name(name: str, prefix: str) -> str:
    return f"--{_normalise_prefix(prefix)}{name.replace('_', '-')}"


def _dest(name: str, prefix: str) -> str:
    return _flag_name(name, prefix)[2:].replace("-", "_")


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``Optional[X]`` / ``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0], True
        raise TypeError(f"unions other than Optional[X] are not supported: {tp}")
    return tp, False


def _parse_bool(text: str) -> bool:
    word = text.lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _named(fn: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    # argparse names ``fn.__name__`` in "invalid <name> value" messages.
    fn.__name__ = name
    return fn


def _scalar(tp: Any, where: str) -> tuple[Callable[[str], Any], list[Any] | None]:
    """Parser for one token of type ``tp`` plus its ``choices`` (``None`` if unrestricted)."""
    if tp is bool:
        return _named(_parse_bool, "bool"), None
    if tp in (int, float, str) or (isinstance(tp, type) and issubclass(tp, Path)):
        return tp, None
    if typing.get_origin(tp) is Literal:
        values = list(typing.get_args(tp))
        by_text = {str(v): v for v in values}

        def parse_literal(text: str) -> Any:
            if text in by_text:
                return by_text[text]
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(by_text)})"
            )

        return _named(parse_literal, "choice"), values
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = list(tp)

        def parse_enum(text: str) -> Any:
            for member in members:
                if text in (member.name, str(member.value)):
                    return member
            names = ", ".join(m.name for m in members)
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {names})")

        return _named(parse_enum, tp.__name__), members
    raise TypeError(f"{where}: unsupported annotation {tp!r} for a command-line flag")


def _with_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.lower() in _NONE_WORDS else parse(text)

    return _named(parse_optional, getattr(parse, "__name__", "value"))


def _field_help(cls: type, f: dataclasses.Field) -> str:
    text = f.metadata.get("help")
    if not isinstance(text, str) or not text.strip():
        raise TypeError(
            f"{cls.__name__}.{f.name}: every config field needs "
            f'field(..., metadata={{"help": "..."}}); it becomes the help text of its flag'
        )
    return text


def _field_default(f: dataclasses.Field, defaults: Any) -> Any:
    """Default of ``f``: taken from the ``defaults`` instance if given, else from the field."""
    if defaults is not None:
        return getattr(defaults, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _init_fields(cls: type) -> list[dataclasses.Field]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    return [f for f in dataclasses.fields(cls) if f.init]


def _type_hints(cls: type) -> dict[str, Any]:
    # Resolves string annotations (``from __future__ import annotations``) in cls's module.
    try:
        return typing.get_type_hints(cls)
    except NameError as err:
        raise TypeError(
            f"{cls.__name__}: cannot resolve an annotation ({err}); config dataclasses and the "
            "types they use must be defined at module level, before their first use"
        ) from err


def _flag_for(cls: type, f: dataclasses.Field, tp: Any, prefix: str, defaults: Any) -> _Flag:
    where = f"{cls.__name__}.{f.name}"
    flag = _flag_name(f.name, prefix)
    try:
        inner, optional = _split_optional(tp)
    except TypeError as err:
        raise TypeError(f"{where}: {err}") from None
    default = _field_default(f, defaults)
    kwargs: dict[str, Any] = {"dest": _dest(f.name, prefix), "help": _field_help(cls, f)}
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default

    def identity(value: Any) -> Any:
        return value

    convert: Callable[[Any], Any] = identity
    origin = typing.get_origin(inner)
    if inner is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin in (tuple, list) or inner in (tuple, list):
        args = typing.get_args(inner)
        if not args:
            raise TypeError(f"{where}: parameterise {inner!r}, e.g. tuple[int, ...]")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            elem, nargs = args[0], "*"
        elif origin is tuple and Ellipsis not in args:
            if len(set(args)) != 1:
                raise TypeError(f"{where}: fixed-length tuples must be homogeneous, got {inner}")
            elem, nargs = args[0], len(args)
        elif origin is list and len(args) == 1:
            elem, nargs = args[0], "*"
        else:
            raise TypeError(f"{where}: unsupported sequence annotation {inner!r}")
        parse, choices = _scalar(elem, where)
        if optional:
            parse = _with_none(parse)
            choices = None if choices is None else [*choices, None]
        kwargs.update(type=parse, nargs=nargs, metavar=_metavar(elem, choices))
        if choices is not None:
            kwargs["choices"] = choices
        container = tuple if origin is tuple else list

        def convert(value: Any, _container: type = container) -> Any:
            if value is None:
                return None
            items = list(value)
            if None in items:
                if optional and items == [None]:
                    return None
                raise ConfigError("'none' must be the only value", field=f.name, flag=flag)
            return _container(items)

    else:
        parse, choices = _scalar(inner, where)
        if optional:
            parse = _with_none(parse)
            choices = None if choices is None else [*choices, None]
        kwargs.update(type=parse, metavar=_metavar(inner, choices))
        if choices is not None:
            kwargs["choices"] = choices
    return _Flag(name=f.name, flag=flag, dest=kwargs["dest"], kwargs=kwargs, convert=convert)


def _metavar(tp: Any, choices: list[Any] | None) -> str:
    if choices is not None:
        words = [c.name if isinstance(c, enum.Enum) else str(c) for c in choices]
        return "{" + ",".join(words) + "}"
    return getattr(tp, "__name__", str(tp)).upper()


def _walk(cls: type, prefix: str, defaults: Any = None) -> list[tuple[_Flag | None, Any]]:
    """The flags of ``cls``'s own fields, in field order, as ``(flag, None)`` pairs.

    A nested dataclass field gives ``(None, (field, nested_cls, nested_prefix, nested_defaults))``
    instead; its flags are produced by walking ``nested_cls``.
    """
    hints = _type_hints(cls)
    out: list[tuple[_Flag | None, Any]] = []
    for f in _init_fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            _field_help(cls, f)
            nested_defaults = _field_default(f, defaults)
            if nested_defaults is dataclasses.MISSING:
                nested_defaults = None
            nested_prefix = _normalise_prefix(prefix) + f.name.replace("_", "-")
            out.append((None, (f, tp, nested_prefix, nested_defaults)))
        else:
            out.append((_flag_for(cls, f, tp, prefix, defaults), None))
    return out


def configclass(cls: type[T] | None = None, /, **dataclass_kwargs: Any) -> Any:
    """``@dataclass`` that also checks, at class definition, that every field can become a flag.

    Raises ``TypeError`` naming the field if a help text is missing or an annotation has no
    flag mapping. Accepts the same keyword arguments as :func:`dataclasses.dataclass`.
    """

    def wrap(c: type[T]) -> type[T]:
        dc = dataclasses.dataclass(c, **dataclass_kwargs)
        _check_class(dc, "")
        return dc

    return wrap if cls is None else wrap(cls)


def _check_class(cls: type, prefix: str) -> None:
    for flag, nested in _walk(cls, prefix):
        if flag is None:
            _f, ncls, nprefix, _ = nested
            _check_class(ncls, nprefix)


# ---------------------------------------------------------------------------------------------
# Public argparse API
# ---------------------------------------------------------------------------------------------


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, prefix: str = "", defaults: Any = None
) -> argparse.ArgumentParser:
    """Add one flag per field of dataclass ``cls`` to ``parser`` (in a group named after it).

    ``prefix="model"`` turns field ``depth`` into ``--model-depth`` (dest ``model_depth``), so
    several dataclasses can share one parser. ``defaults`` (an instance of ``cls``) overrides the
    field defaults. Nested dataclass fields get their own group with flags
    ``--<field>-<subfield>``. Raises ``TypeError`` for a field without help text or with an
    unsupported annotation. Returns ``parser``.
    """
    doc = (cls.__doc__ or "").strip().splitlines()
    description = doc[0] if doc and not doc[0].startswith(f"{cls.__name__}(") else None
    title = f"{cls.__name__} ({_normalise_prefix(prefix)[:-1]})" if prefix else cls.__name__
    group = parser.add_argument_group(title, description)
    entries = _walk(cls, prefix, defaults)
    for flag, _nested in entries:
        if flag is not None:
            group.add_argument(flag.flag, **flag.kwargs)
    for flag, nested in entries:  # nested groups after the flat fields
        if flag is None:
            _f, ncls, nprefix, ndefaults = nested
            add_dataclass_arguments(parser, ncls, nprefix, ndefaults)
    return parser


def _field_named_in(message: str, names: Sequence[str]) -> str | None:
    """The field (by name or flag spelling) mentioned earliest in ``message``, if any."""
    best: tuple[int, int, str] | None = None
    for name in names:
        for spelling in (name, name.replace("_", "-")):
            m = re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", message)
            if m and (best is None or (m.start(), -len(spelling)) < best[:2]):
                best = (m.start(), -len(spelling), name)
    return None if best is None else best[2]


def dataclass_from_args(cls: type[T], args: argparse.Namespace, prefix: str = "") -> T:
    """Build ``cls`` from a namespace parsed with :func:`add_dataclass_arguments`.

    Validation errors raised by ``__post_init__`` come back as :class:`ConfigError` with ``flag``
    set to the offending flag when the field can be identified (``ConfigError(field=...)`` or a
    message naming the field).
    """
    kwargs: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for flag, nested in _walk(cls, prefix):
        if flag is None:
            f, ncls, nprefix, _ = nested
            kwargs[f.name] = dataclass_from_args(ncls, args, nprefix)
            flags[f.name] = _flag_name(f.name, prefix)
            continue
        if not hasattr(args, flag.dest):
            raise AttributeError(
                f"namespace has no {flag.dest!r}; was the parser built with "
                f"add_dataclass_arguments({cls.__name__}, prefix={prefix!r})?"
            )
        kwargs[flag.name] = flag.convert(getattr(args, flag.dest))
        flags[flag.name] = flag.flag
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if err.flag is not None:
            raise
        name = err.field if err.field in flags else _field_named_in(err.message, list(flags))
        raise ConfigError(err.message, field=name, flag=flags.get(name)) from err
    except ValueError as err:
        name = _field_named_in(str(err), list(flags))
        raise ConfigError(str(err), field=name, flag=flags.get(name)) from err


def parse_config_with_args(
    cls: type[T],
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> tuple[T, argparse.Namespace]:
    """Like :func:`parse_config` but also return the namespace (for flags outside ``cls``)."""
    if parser is None:
        # The dataclass docstring already heads its argument group.
        parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_arguments(parser, cls)
    args = parser.parse_args(argv)
    try:
        cfg = dataclass_from_args(cls, args)
    except ConfigError as err:
        where = err.flag or "invalid configuration"
        parser.error(f"{where}: {err.message}")  # exits with status 2
        raise  # unreachable unless parser.error was overridden not to exit
    return cfg, args


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of dataclass ``cls``.

    Builds the flags with :func:`add_dataclass_arguments` (on ``parser`` if given) and turns a
    ``ValueError`` from ``__post_init__`` into ``parser.error("--flag-name: message")``.
    """
    cfg, _ = parse_config_with_args(cls, argv, parser)
    return cfg


# ---------------------------------------------------------------------------------------------
# Serialisation for checkpoints and TensorBoard
# ---------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` restricted to plain types (``Path`` -> str, Enum -> name).

    The result loads with ``torch.load(..., weights_only=True)``; tuples stay tuples.
    """
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def _from_plain(tp: Any, value: Any) -> Any:
    inner, optional = _split_optional(tp)
    if value is None:
        return None
    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
        return config_from_dict(inner, value)
    origin = typing.get_origin(inner)
    if origin in (tuple, list):
        args = typing.get_args(inner)
        elem = args[0] if args else Any
        items = [_from_plain(elem, v) for v in value]
        return tuple(items) if origin is tuple else items
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return value if isinstance(value, inner) else inner[value]
    if isinstance(inner, type) and issubclass(inner, Path):
        return inner(value)
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any], strict: bool = True) -> T:
    """Rebuild dataclass ``cls`` from :func:`config_to_dict` output (e.g. ``ckpt["config"]``).

    Unknown keys raise :class:`ConfigError` when ``strict`` (they are dropped otherwise); fields
    missing from ``data`` (added after the checkpoint was written) keep their defaults, with a
    warning. ``__post_init__`` validation runs as usual.
    """
    hints = _type_hints(cls)
    names = [f.name for f in _init_fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown and strict:
        raise ConfigError(f"{cls.__name__} has no field(s) {unknown}")
    missing = [n for n in names if n not in data]
    if missing:
        warnings.warn(
            f"{cls.__name__}: {missing} not in the stored config; using the defaults",
            stacklevel=2,
        )
    kwargs = {n: _from_plain(hints[n], data[n]) for n in names if n in data}
    return cls(**kwargs)


def _flatten(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            rows.extend(_flatten(value, f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", value))
    return rows


def config_to_text(cfg: Any) -> str:
    """A markdown table ``| field | value |`` of ``cfg`` (nested fields as ``a.b``).

    Meant for ``TensorBoardLogger.text("config", config_to_text(cfg))``.
    """

    def cell(value: Any) -> str:
        text = str(_plain(value)).replace("|", "\\|").replace("\n", " ")
        return f"`{text}`"

    lines = [f"**{type(cfg).__name__}**", "", "| field | value |", "|---|---|"]
    lines += [f"| `{name}` | {cell(value)} |" for name, value in _flatten(cfg)]
    return "\n".join(lines)
