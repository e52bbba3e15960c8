"""Tests for common/checkpoint.py: atomic save, safe load, RNG state, resume, pruning."""

from __future__ import annotations

import random
from dataclasses import field
from pathlib import Path

import numpy as np
import pytest
import torch

from common.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    CheckpointError,
    checkpoint_path,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights_strict,
    make_checkpoint,
    prune_checkpoints,
    resolve_resume,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from common.config import config_from_dict, configclass
from common.runtime import make_grad_scaler


@configclass
class TinyCfg:
    """A config for the tests."""

    width: int = field(default=3, metadata={"help": "Features."})
    milestones: tuple[int, ...] = field(default=(2, 4), metadata={"help": "LR milestones."})
    out_dir: Path = field(default=Path("out"), metadata={"help": "Output directory."})


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- save / load ------------------------------------------------------------------------------


def test_save_creates_dirs_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a" / "b" / "x.pt"
    save_checkpoint(path, {"w": torch.arange(3), "step": 1})
    assert _files(path.parent) == ["x.pt"]
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(3))


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert _files(tmp_path) == ["last.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_interrupted_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert _files(tmp_path) == ["last.pt"] and load_checkpoint(path)["step"] == 1


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncate"])
def test_corrupt_file_raises_checkpoint_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "truncate":
        save_checkpoint(path, {"w": torch.zeros(1000)})
        content = path.read_bytes()[:500]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad\.pt.*expected") as exc:
        load_checkpoint(path)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_missing_file_and_wrong_content(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found: .*nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt holds a list, expected a dict"):
        load_checkpoint(tmp_path / "list.pt")
    save_checkpoint(tmp_path / "nostep.pt", {"model": {}})
    with pytest.raises(CheckpointError, match=r"nostep\.pt lacks key\(s\) \['step'\]"):
        load_checkpoint(tmp_path / "nostep.pt", required_keys=("step",))


def test_unsafe_pickle_is_refused(tmp_path):
    torch.save({"obj": Path("x")}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match=r"unsafe\.pt"):
        load_checkpoint(tmp_path / "unsafe.pt")


# -- RNG --------------------------------------------------------------------------------------


def _draw() -> tuple:
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [np.random.randn()],
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    )


def test_rng_round_trip_through_file(tmp_path):
    random.gauss(0, 1)  # leaves a cached gaussian in both generators' state
    np.random.randn()
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    first = _draw()
    assert _draw() != first
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draw() == first


# -- training-state round trip -----------------------------------------------------------------


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.5)
    scaler = make_grad_scaler("cpu", enabled=True)
    return model, opt, sched, scaler


def _train_step(model, opt, sched, scaler) -> torch.Tensor:
    x = torch.randn(8, 4)  # data and dropout both consume the RNG
    loss = model(x).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()
    return loss.detach()


def test_resume_gives_identical_next_steps(tmp_path):
    model, opt, sched, scaler = _setup()
    for _ in range(3):
        _train_step(model, opt, sched, scaler)
    state = make_checkpoint(
        model=model,
        config=TinyCfg(),
        optimizer=opt,
        scheduler=sched,
        scaler=scaler,
        step=3,
        extra={"best_psnr": 30.5},
    )
    path = save_checkpoint(tmp_path / LAST_NAME, state)
    expected = [_train_step(model, opt, sched, scaler) for _ in range(3)]
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}

    random.random(), np.random.rand(), torch.rand(5)  # disturb every generator
    model2, opt2, sched2, scaler2 = _setup(seed=123)
    step = restore_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2, scaler=scaler2)
    assert step == 3
    got = [_train_step(model2, opt2, sched2, scaler2) for _ in range(3)]
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    for key, value in model2.state_dict().items():
        assert torch.equal(value, expected_weights[key])
    assert sched2.get_last_lr() == sched.get_last_lr()

    ckpt = load_checkpoint(path)
    assert set(ckpt) == {
        "model", "config", "optimizer", "scheduler", "scaler", "step", "rng", "extra"
    }  # fmt: skip
    assert ckpt["extra"] == {"best_psnr": 30.5}
    assert config_from_dict(TinyCfg, ckpt["config"]) == TinyCfg()


def test_restore_errors_are_checkpoint_errors(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "w.pt", make_checkpoint(model=model, step=5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="no 'optimizer' state"):
        restore_checkpoint(path, model=model, optimizer=opt)
    assert restore_checkpoint(path, model=model) == 5
    with pytest.raises(CheckpointError, match=r"w\.pt: weights do not fit Linear"):
        restore_checkpoint(path, model=torch.nn.Linear(3, 2))


def test_load_weights_strict_names_the_file_and_refuses_bad_weights():
    good = torch.nn.Linear(2, 2).state_dict()
    model = load_weights_strict(torch.nn.Linear(2, 2), good, "a.pt", "Linear(2, 2)", "cpu")
    assert torch.equal(model.weight, good["weight"])
    with pytest.raises(
        CheckpointError,
        match=r"a\.pt: the weights under 'model' do not fit "
        r"Linear\(3, 2\): .*size mismatch",
    ):
        load_weights_strict(torch.nn.Linear(3, 2), good, "a.pt", "Linear(3, 2)")
    bad = {k: v.clone() for k, v in good.items()}
    bad["bias"][1] = float("nan")
    with pytest.raises(CheckpointError, match=r"a\.pt: weights containing NaN or inf: \['bias'\]"):
        load_weights_strict(torch.nn.Linear(2, 2), bad, "a.pt", "Linear(2, 2)")
    with pytest.raises(CheckpointError, match=r"a\.pt: no 'model' state_dict \(found list\)"):
        load_weights_strict(torch.nn.Linear(2, 2), [1], "a.pt", "Linear(2, 2)")


def test_unloadable_extra_is_rejected_at_save_time():
    with pytest.raises(TypeError, match=r"extra\['a'\] is a numpy.ndarray"):
        make_checkpoint(model=torch.nn.Linear(1, 1), extra={"a": np.zeros(2)})


def test_enabled_scaler_state_round_trips():
    # The CPU build cannot run a CUDA scaler; an enabled CPU GradScaler has the same state.
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    state = make_checkpoint(model=torch.nn.Linear(1, 1), scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0)
    restore_checkpoint(state, scaler=fresh)
    assert fresh.state_dict() == scaler.state_dict()
    empty = make_checkpoint(model=torch.nn.Linear(1, 1), scaler=make_grad_scaler("cpu", True))
    with pytest.warns(UserWarning, match="without an active GradScaler"):
        restore_checkpoint(empty, scaler=fresh)


def test_disabled_scaler_state_round_trips():
    scaler = make_grad_scaler("cpu", enabled=True)
    assert not scaler.is_enabled() and scaler.state_dict() == {}
    scaler.load_state_dict(scaler.state_dict())


# -- output directory --------------------------------------------------------------------------


def test_find_latest_and_prune(tmp_path):
    assert find_latest_checkpoint(tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None
    for step in (100, 2000, 300):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    save_checkpoint(tmp_path / BEST_NAME, {"step": 99999})
    (tmp_path / "ckpt_notes.txt").write_text("not a checkpoint")
    assert checkpoint_path(tmp_path, 300).name == "ckpt_00000300.pt"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [100, 300, 2000]
    assert find_latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 2000)

    save_checkpoint(tmp_path / LAST_NAME, {"step": 2500})
    assert find_latest_checkpoint(tmp_path) == tmp_path / LAST_NAME
    save_checkpoint(tmp_path / LAST_NAME, {"step": 1000})  # e.g. a stale last.pt
    assert find_latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 2000)
    (tmp_path / LAST_NAME).write_bytes(b"corrupt")
    with pytest.warns(UserWarning, match="last.pt"):
        assert find_latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 2000)
    save_checkpoint(tmp_path / LAST_NAME, {"step": 2000})  # ties go to last.pt
    assert resolve_resume("auto", tmp_path) == tmp_path / LAST_NAME

    deleted = prune_checkpoints(tmp_path, keep=2)
    assert deleted == [checkpoint_path(tmp_path, 100)]
    assert prune_checkpoints(tmp_path, keep=0) == [
        checkpoint_path(tmp_path, 300),
        checkpoint_path(tmp_path, 2000),
    ]
    assert _files(tmp_path) == ["best.pt", "ckpt_notes.txt", "last.pt"]
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep=-1)


def test_resolve_resume(tmp_path):
    assert resolve_resume("", tmp_path) is None and resolve_resume(None, tmp_path) is None
    with pytest.raises(CheckpointError, match="missing.pt"):
        resolve_resume(str(tmp_path / "missing.pt"), tmp_path)
    path = save_checkpoint(tmp_path / "x.pt", {"step": 1})
    assert resolve_resume(str(path), tmp_path) == path
