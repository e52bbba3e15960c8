"""bench/bench_irn.py (smoke test at a tiny size) and the speed options it measures."""

from __future__ import annotations

import json

import pytest
import torch
from flow_checks import perturb_
from tests_support import tiny_images

import train_irn
from bench import bench_irn
from common.subnets import DenseBlock, set_dense_block_options
from irn.model import IRN, IRNConfig


def test_parse_config():
    assert bench_irn.parse_config("baseline") == {
        "amp": False,
        "memory_saving": False,
        "channels_last": False,
        "fast": False,
        "compile": False,
        "multiscale": False,
        "learned": False,
    }
    opts = bench_irn.parse_config("amp+memsave")
    assert opts["amp"] and opts["memory_saving"] and opts["channels_last"] and opts["fast"]
    assert not bench_irn.parse_config("fp32+nchw")["channels_last"]
    with pytest.raises(ValueError, match="unknown token"):
        bench_irn.parse_config("fp16")


def test_bench_main_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--batch-size", "2", "--patch-size", "16", "--blocks", "1", "--gc", "4"]
    argv += ["--configs", "baseline,fp32,amp+memsave", "--rounds", "2", "--threads", "1"]
    argv += ["--json", str(out)]
    result = bench_irn.main(argv)
    text = capsys.readouterr().out
    assert "baseline" in text and "amp+memsave" in text and "load average" in text
    saved = json.loads(out.read_text())
    rows = {r["config"]: r for r in saved["rows"]}
    assert set(rows) == {"baseline", "fp32", "amp+memsave"}
    for r in rows.values():
        assert r["step_s"] > 0 and r["peak_gib"] > 0 and r["flops"] > 0
    assert rows["baseline"]["speed_vs_baseline"] == 1.0
    assert len(saved["times"]["fp32"]) == 2
    # the same convolutions; memory saving recomputes the layers once more
    assert rows["fp32"]["flops"] == rows["baseline"]["flops"]
    assert rows["amp+memsave"]["flops"] > rows["baseline"]["flops"]
    assert result["memory"]["baseline"]["peak_kind"] == "peak RSS"


def test_bench_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        bench_irn.main(["--configs", "baseline,turbo"])
    assert "unknown token" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_irn.main(["--patch-size", "30"])


@pytest.mark.usefixtures("double")
def test_dense_block_speed_options_keep_the_values():
    torch.manual_seed(0)
    block = perturb_(DenseBlock(5, 3, gc=4), std=0.1)
    x = torch.randn(2, 5, 6, 7, requires_grad=True)
    outs, grads = [], []
    for channels_last in (False, True):
        for fast in (False, True):
            block.channels_last, block.fast = channels_last, fast
            y = block(x)
            assert y.is_contiguous()  # callers always get NCHW
            outs.append(y.detach())
            grads.append(torch.autograd.grad(y.sin().sum(), [x, *block.parameters()]))
    for y, g in zip(outs[1:], grads[1:], strict=True):
        assert torch.allclose(y, outs[0], rtol=0, atol=1e-12)
        assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g, grads[0], strict=True))


def test_fast_path_keeps_concatenations_in_bf16_under_autocast():
    """Without it a float32 input makes torch.cat promote every concatenation to float32."""
    block = DenseBlock(3, 9, gc=4)
    seen = []
    block.conv3.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    x = torch.randn(1, 3, 8, 8)
    for fast in (False, True):
        block.fast = fast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            block(x)
    assert seen == [torch.float32, torch.bfloat16]


def test_set_dense_block_options_counts_blocks():
    model = IRN(IRNConfig(scale=2, blocks_per_level=2, gc=4))
    assert set_dense_block_options(model, channels_last=False, fast=False) == 6
    assert all(
        not b.channels_last and not b.fast
        for b in model.modules()
        if b is not model and isinstance(b, DenseBlock)
    )


def test_train_flag_channels_last(tmp_path):
    """Default: the convolutions see NHWC inputs; --no-channels-last: NCHW; same training."""
    train_dir, _ = tiny_images(tmp_path)
    argv = ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "2", "--patch-size", "16"]
    argv += ["--data", str(train_dir), "--iters", "2", "--val-every", "100", "--no-tensorboard"]
    layouts: dict[str, set[bool]] = {"on": set(), "off": set()}
    original = DenseBlock.forward

    def spy(self, x):
        key = "on" if self.channels_last else "off"
        hook = self.conv2.register_forward_pre_hook(
            lambda m, args: layouts[key].add(
                args[0].is_contiguous(memory_format=torch.channels_last)
                and not args[0].is_contiguous()
            )
        )
        try:
            return original(self, x)
        finally:
            hook.remove()

    DenseBlock.forward = spy
    try:
        on = train_irn.main([*argv, "--out", str(tmp_path / "on")])
        off = train_irn.main([*argv, "--out", str(tmp_path / "off"), "--no-channels-last"])
    finally:
        DenseBlock.forward = original
    assert layouts == {"on": {True}, "off": {False}}
    blocks_on = [m for m in on["model"].modules() if isinstance(m, DenseBlock)]
    blocks_off = [m for m in off["model"].modules() if isinstance(m, DenseBlock)]
    assert all(b.channels_last for b in blocks_on) and not any(b.channels_last for b in blocks_off)
    for a, b in zip(on["history"], off["history"], strict=True):
        assert a["total"] == pytest.approx(b["total"], rel=1e-5)


def test_bench_loader_tiny(tmp_path, capsys):
    from bench import bench_loader

    out = bench_loader.main(
        ["--images", "2", "--image-size", "96", "80", "--patch-size", "32", "--batch-size", "2",
         "--workers", "0", "--batches", "2", "--configs", "fp32", "--json",
         str(tmp_path / "l.json")]
    )  # fmt: skip
    whats = [r["what"] for r in out["rows"]]
    assert whats == ["loader, disk, 0 workers", "loader, memory, 0 workers", "training step, fp32"]
    assert all(r["samples_per_s"] > 0 for r in out["rows"])
    assert out["rows"][0]["times_the_step"] > 0
    assert json.loads((tmp_path / "l.json").read_text())["rows"] == out["rows"]
    assert "samples/s" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_loader.main(["--data", str(tmp_path / "nope")])
    assert "--data: " in capsys.readouterr().err
    for bad, message in (
        (["--workers", "-1"], "--workers: counts must be >= 0"),
        (["--patch-size", "30"], "--patch-size 30 must be a multiple"),
    ):
        with pytest.raises(SystemExit):
            bench_loader.main(bad)
        assert message in capsys.readouterr().err


def test_loss_sequence_compare_names_the_first_differing_step():
    from bench import loss_sequence

    before = {"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0], "c": [1.0]}
    now = {"a": [1.0, 2.0, 3.0], "b": [1.0, 2.5]}
    assert loss_sequence.compare(now, before) == [
        "a: bit-identical (3 losses)",
        "b: DIFFERS from step 2",
        "c: missing",
    ]
    assert loss_sequence.compare({"a": [1.0, 2.0]}, {"a": [1.0, 2.0, 3.0]}) == [
        "a: DIFFERS from step 3"
    ]
