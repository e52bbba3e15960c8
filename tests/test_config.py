"""Tests for common/config.py: flags generated from dataclasses."""

from __future__ import annotations

import argparse
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional  # noqa: UP035 - Optional[X] is part of what is tested

import pytest

from common.config import (
    ConfigError,
    add_dataclass_arguments,
    config_from_dict,
    config_to_dict,
    config_to_text,
    configclass,
    dataclass_from_args,
    parse_config,
    parse_config_with_args,
)


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


@configclass
class ModelCfg:
    """Model settings."""

    depth: int = field(default=8, metadata={"help": "Number of blocks."})
    act: Literal["relu", "lrelu"] = field(default="lrelu", metadata={"help": "Activation."})


@configclass
class TrainCfg:
    """Training settings."""

    lr: float = field(default=2e-4, metadata={"help": "Learning rate."})
    name: str = field(default="run", metadata={"help": "Run name."})
    amp: bool = field(default=False, metadata={"help": "Mixed precision."})
    shuffle: bool = field(default=True, metadata={"help": "Shuffle the data."})
    clip: Optional[float] = field(default=None, metadata={"help": "Gradient clip."})  # noqa: UP045
    seed: int | None = field(default=0, metadata={"help": "Seed (none = random)."})
    milestones: tuple[int, ...] = field(default=(10, 20), metadata={"help": "LR milestones."})
    crop: tuple[int, int] = field(default=(32, 32), metadata={"help": "Crop height, width."})
    weights: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "Weights."})
    scale: Literal[2, 4] = field(default=4, metadata={"help": "Upscaling factor."})
    mode: Literal["fast", "slow"] | None = field(default=None, metadata={"help": "Mode."})
    out_dir: Path = field(default=Path("out"), metadata={"help": "Output directory."})
    colour: Colour = field(default=Colour.RED, metadata={"help": "A colour."})
    model: ModelCfg = field(default_factory=lambda: ModelCfg(depth=4), metadata={"help": "Net."})

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"must be positive, got {self.lr}", field="lr")
        if len(self.milestones) and sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")


def test_defaults_round_trip():
    assert parse_config(TrainCfg, []) == TrainCfg()


def test_every_kind_of_flag():
    cfg = parse_config(
        TrainCfg,
        "--lr 1e-3 --name x --amp --no-shuffle --clip 0.5 --seed none --milestones 5 7 9 "
        "--crop 16 24 --weights 0.5 2 --scale 2 --mode slow --out-dir /tmp/o --colour GREEN "
        "--model-depth 3 --model-act relu".split(),
    )
    assert cfg == TrainCfg(
        lr=1e-3,
        name="x",
        amp=True,
        shuffle=False,
        clip=0.5,
        seed=None,
        milestones=(5, 7, 9),
        crop=(16, 24),
        weights=[0.5, 2.0],
        scale=2,
        mode="slow",
        out_dir=Path("/tmp/o"),
        colour=Colour.GREEN,
        model=ModelCfg(depth=3, act="relu"),
    )
    assert isinstance(cfg.milestones, tuple) and isinstance(cfg.crop, tuple)
    assert cfg.scale == 2 and isinstance(cfg.scale, int)


def test_empty_variadic_tuple_and_optional_back_to_none():
    cfg = parse_config(TrainCfg, ["--milestones", "--clip", "None", "--mode", "none"])
    assert cfg.milestones == () and cfg.clip is None and cfg.mode is None


def test_nested_defaults_come_from_default_factory():
    assert parse_config(TrainCfg, []).model.depth == 4


def test_invalid_choice_and_type_are_argparse_errors(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--scale", "3"])
    assert "--scale" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--crop", "1"])
    assert "--crop" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--model-depth", "two"])
    assert "--model-depth" in capsys.readouterr().err


def test_post_init_error_names_flag_explicit_field(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(TrainCfg, ["--lr", "-1"])
    assert exc.value.code == 2
    assert "--lr: must be positive, got -1.0" in capsys.readouterr().err


def test_post_init_error_names_flag_from_message(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--milestones", "9", "3"])
    assert "--milestones: milestones must be increasing" in capsys.readouterr().err


@configclass
class Inner:
    width: int = field(default=1, metadata={"help": "Width."})

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError("width must be >= 1")


@configclass
class Outer:
    inner: Inner = field(default_factory=Inner, metadata={"help": "Inner."})


def test_nested_post_init_error_names_prefixed_flag(capsys):
    with pytest.raises(SystemExit):
        parse_config(Outer, ["--inner-width", "0"])
    assert "--inner-width: width must be >= 1" in capsys.readouterr().err


def test_dataclass_from_args_raises_config_error_with_flag():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainCfg)
    with pytest.raises(ConfigError) as exc:
        dataclass_from_args(TrainCfg, parser.parse_args(["--lr", "0"]))
    assert exc.value.flag == "--lr" and exc.value.field == "lr"


def test_missing_help_raises_at_definition():
    with pytest.raises(TypeError, match=r"NoHelp\.x.*help"):

        @configclass
        class NoHelp:
            x: int = 1


def test_missing_help_raises_when_building_parser():
    @dataclass
    class PlainNoHelp:
        y: int = field(default=1, metadata={"other": 1})

    with pytest.raises(TypeError, match=r"PlainNoHelp\.y"):
        add_dataclass_arguments(argparse.ArgumentParser(), PlainNoHelp)


def test_unsupported_annotation_raises():
    with pytest.raises(TypeError, match="unsupported"):

        @configclass
        class Bad:
            d: dict = field(default_factory=dict, metadata={"help": "A dict."})


def test_every_flag_has_help():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainCfg)
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(actions) == 15  # 13 own fields + 2 nested
    assert all(a.help for a in actions)


def test_prefix_and_extra_parser_flags():
    parser = argparse.ArgumentParser()
    parser.add_argument("--resume", default="", help="Checkpoint to resume from.")
    add_dataclass_arguments(parser, ModelCfg, prefix="net")
    args = parser.parse_args(["--net-depth", "2", "--resume", "auto"])
    assert dataclass_from_args(ModelCfg, args, prefix="net") == ModelCfg(depth=2)
    cfg, args = parse_config_with_args(ModelCfg, ["--depth", "5"])
    assert cfg.depth == 5 and args.depth == 5


def test_required_field():
    @configclass
    class Req:
        data: str = field(metadata={"help": "Data path."})

    assert parse_config(Req, ["--data", "a"]).data == "a"
    with pytest.raises(SystemExit):
        parse_config(Req, [])


def test_dict_round_trip_and_text():
    cfg = TrainCfg(out_dir=Path("/x"), colour=Colour.GREEN, model=ModelCfg(depth=2))
    plain = config_to_dict(cfg)
    assert plain["out_dir"] == "/x" and plain["colour"] == "GREEN"
    assert plain["model"] == {"depth": 2, "act": "lrelu"}
    assert config_from_dict(TrainCfg, plain) == cfg
    with pytest.raises(ConfigError, match="bogus"):
        config_from_dict(TrainCfg, {**plain, "bogus": 1})
    with pytest.warns(UserWarning, match="name"):
        assert config_from_dict(TrainCfg, {k: v for k, v in plain.items() if k != "name"}) == cfg
    text = config_to_text(cfg)
    assert "| `model.depth` | `2` |" in text and "| `milestones` | `(10, 20)` |" in text
