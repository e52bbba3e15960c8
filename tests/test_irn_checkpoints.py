"""``irn.checkpoints.load_irn``: our training checkpoints and the authors' state_dicts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from flow_checks import perturb_

from common.checkpoint import CheckpointError, make_checkpoint, save_checkpoint
from irn.checkpoints import (
    checkpoint_kind,
    load_authors_checkpoint,
    load_irn,
    to_authors_state_dict,
)
from irn.model import IRN, IRNConfig

TINY = IRNConfig(scale=4, blocks_per_level=1, gc=4)


def tiny_irn(scale: int = 4, seed: int = 0) -> IRN:
    """A small IRN with non-zero weights everywhere (so every coupling does something)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = IRN(IRNConfig(scale=scale, blocks_per_level=1, gc=4))
    return perturb_(model, std=0.05, seed=seed)


def ours_checkpoint(model: IRN, step: int = 123) -> dict:
    """What train_irn.py writes: the IRNConfig nested under config["model"]."""
    config = {"lr": 2e-4, "batch_size": 16, "model": dataclasses.asdict(model.config)}
    return make_checkpoint(model=model, config=config, step=step, include_rng=False)


def test_ours_file_round_trip(tmp_path):
    model = tiny_irn().eval()
    path = save_checkpoint(tmp_path / "ckpt.pt", ours_checkpoint(model))
    loaded, info = load_irn(path)
    assert info["kind"] == "ours" and info["step"] == 123 and info["scale"] == 4
    assert info["path"] == str(path)
    assert info["config"]["gc"] == 4 and info["config"]["blocks_per_level"] == 1
    assert not loaded.training
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])


def test_ours_object_and_bare_config():
    model = tiny_irn(scale=2)
    ckpt = ours_checkpoint(model)
    assert checkpoint_kind(ckpt) == "ours"
    _, info = load_irn(ckpt)
    assert info["kind"] == "ours" and info["path"] is None and info["scale"] == 2
    # a config that is the IRNConfig itself (no "model" level) is accepted too
    bare = {"model": model.state_dict(), "config": dataclasses.asdict(model.config), "step": 1}
    loaded, info = load_irn(bare)
    assert info["config"]["scale"] == 2 and loaded.scale == 2


@pytest.mark.parametrize("name", ["irn_reference_x2_small.pt", "irn_reference_x4_small.pt"])
def test_authors_fixture(fixtures_dir, name):
    path = fixtures_dir / name
    ref = torch.load(path, weights_only=True)
    model, info = load_irn(path)
    assert info["kind"] == "authors" and info["step"] is None
    assert info["scale"] == ref["scale"] and info["config"]["blocks_per_level"] == 2
    with torch.no_grad():
        y, _ = model(ref["input_hr"])
    torch.testing.assert_close(y, ref["forward_out"], rtol=1e-5, atol=1e-5)


def test_authors_plain_state_dict_file(tmp_path):
    model = tiny_irn()
    path = tmp_path / "IRN_x4.pth"
    torch.save(to_authors_state_dict(model), path)
    loaded, info = load_irn(path)
    assert info["kind"] == "authors" and loaded.config.gc == 4
    assert torch.equal(
        loaded.state_dict()["operations.1.F.conv1.weight"],
        model.state_dict()["operations.1.F.conv1.weight"],
    )
    reference = load_authors_checkpoint(path)
    assert reference.config == loaded.config


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.pt"):
        load_irn(tmp_path / "nowhere.pt")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_irn(bad)


def test_unknown_layout_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"other\.pt: not an IRN checkpoint"):
        load_irn(path)
    bare = tmp_path / "bare.pt"
    torch.save(tiny_irn().state_dict(), bare)
    with pytest.raises(CheckpointError, match="without its config"):
        load_irn(bare)


def test_ours_with_wrong_weights_or_config(tmp_path):
    model = tiny_irn()
    ckpt = ours_checkpoint(model)
    ckpt["config"]["model"]["gc"] = 8  # the weights were made with gc = 4
    path = save_checkpoint(tmp_path / "mismatch.pt", ckpt)
    with pytest.raises(CheckpointError, match=r"mismatch\.pt: the weights under 'model'"):
        load_irn(path)
    ckpt = ours_checkpoint(model)
    ckpt["config"] = {"lr": 1.0}
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_irn(ckpt)
    ckpt = ours_checkpoint(model)
    ckpt["config"]["model"]["scale"] = 5
    with pytest.raises(CheckpointError, match="does not describe an IRN"):
        load_irn(ckpt)
    ckpt = ours_checkpoint(model)
    ckpt["model"]["operations.1.F.conv1.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        load_irn(ckpt)


def test_tiny_config_constant_matches_helper():
    assert tiny_irn().config == TINY
