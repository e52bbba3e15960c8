"""The CUDA ``--amp`` path (fp16 autocast + gradient scaler) executed on the CPU.

``--amp --amp-dtype fp16`` runs on the CPU exactly the code a CUDA run takes under ``--amp``:
fp16 subnets, ``torch.amp.GradScaler`` scaling the loss, unscaling before the norm clip,
skipping steps whose scaled gradients overflow, and its state in checkpoints. Every training
run here is ``train_irn.main`` on the scikit-image sample photos at a tiny width.

Tolerances (stated here, measured with these very runs): the fp16 losses of the first four
steps are within 1e-5 relative of float32's (measured: the first is identical, as the
zero-initialised last convolutions make every subnet output exactly 0; the next three differ
by at most 3e-7); ``--memory-saving`` and ``--micro-batch`` under fp16 + scaler give the plain
fp16 run's losses within 5e-5 and gradient norms within 2e-4 relative (the bounds the float32
tests of those options use).
"""

from __future__ import annotations

import math

import pytest
import torch
from flow_checks import perturb_
from tests_support import tiny_images

import train_irn
from common import training as common_training
from common.config import config_from_dict
from common.runtime import (
    amp_setting,
    describe_amp,
    make_grad_scaler,
    scaler_step,
    seed_everything,
)
from common.utils import sum_except_batch
from irn.losses import distribution_loss, pixel_loss
from irn.model import IRN, IRNConfig

TINY = ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "4", "--patch-size", "16"]
FP16 = ["--amp", "--amp-dtype", "fp16"]
ITERS = 4
FP16_MAX = torch.finfo(torch.float16).max  # 65504


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    """Tiny validation images (training uses the sample photos; validation runs at the end)."""
    return tiny_images(tmp_path_factory.mktemp("val"))[1]


def train(out, val_dir, *extra):
    argv = [*TINY, "--val-data", str(val_dir), "--iters", str(ITERS), "--val-every", "100"]
    # the CPU on every machine: these tests run the CUDA code path on the CPU
    return train_irn.main([*argv, "--device", "cpu", "--threads", "1", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def float32_run(tmp_path_factory, val_dir):
    return train(tmp_path_factory.mktemp("f32"), val_dir, "--no-tensorboard")


@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory, val_dir):
    """fp16 + scaler from scale 128: small enough that no step of this tiny model overflows."""
    out = tmp_path_factory.mktemp("fp16")
    res = train(out, val_dir, *FP16, "--amp-init-scale", "128", "--no-tensorboard")
    return res, torch.load(out / "last.pt", weights_only=True)


def totals(result) -> list[float]:
    return [h["total"] for h in result["history"]]


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_fp16_scaler_training_is_finite_and_tracks_float32(float32_run, fp16_run, capsys):
    res, ckpt = fp16_run
    assert len(res["history"]) == ITERS
    for h in res["history"]:
        assert all(math.isfinite(h[k]) for k in ("total", "guide", "recon", "distr", "grad_norm"))
        assert h["scaler_skipped"] == 0.0
    # no overflow and fewer than growth_interval (2000) steps: the scale stays where it began
    assert res["scaler_skipped"] == 0 and res["loss_scale"] == 128.0
    assert ckpt["scaler"]["scale"] == 128.0 and ckpt["scaler"]["_growth_tracker"] == ITERS
    assert ckpt["extra"]["scaler_skipped"] == 0
    diffs = [rel(a, b) for a, b in zip(totals(res), totals(float32_run), strict=True)]
    print("fp16 vs float32 relative loss differences:", ", ".join(f"{d:.1e}" for d in diffs))
    assert diffs[0] == 0.0  # zero-initialised last convolutions: every subnet outputs 0
    assert max(diffs) <= 1e-5


def test_first_line_names_the_fp16_path_with_its_scaler(tmp_path, val_dir, capsys):
    train(tmp_path / "r", val_dir, *FP16, "--no-tensorboard")
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("Precision: fp16 autocast on cpu")
    assert "gradient scaler from scale 65536" in first and "CUDA --amp code path" in first


def fresh_model(ckpt) -> IRN:
    """The model ``build_run`` draws before any step (same seed, same config)."""
    seed_everything(ckpt["config"]["seed"])
    return IRN(config_from_dict(IRNConfig, ckpt["config"]["model"]))


def test_forced_overflow_skips_without_touching_weights_or_the_guard(tmp_path, val_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "overflow"
    # 1e38 times any gradient of order 1 overflows fp16 (and float32): every step is skipped;
    # --max-nonfinite 1 would stop the run at the first non-finite loss.
    res = train(out, val_dir, *FP16, "--amp-init-scale", "1e38", "--max-nonfinite", "1")
    assert res["step"] == ITERS and res["scaler_skipped"] == ITERS
    expected = torch.tensor(1e38, dtype=torch.float32).item() * 0.5**ITERS
    assert res["loss_scale"] == pytest.approx(expected, rel=1e-6)
    assert all(math.isfinite(h["total"]) for h in res["history"])  # losses were fine
    ckpt = torch.load(out / "last.pt", weights_only=True)
    fresh = fresh_model(ckpt).state_dict()
    for name, value in ckpt["model"].items():
        assert torch.equal(value, fresh[name]), name
    # Adam never stepped (the fused kernel creates its state but skips on the scaler's inf flag)
    assert all(float(st["step"]) == 0 for st in ckpt["optimizer"]["state"].values())
    assert ckpt["extra"]["guard"] == {"consecutive": 0, "total_skipped": 0}
    assert ckpt["extra"]["scaler_skipped"] == ITERS
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    events = acc.Scalars("train/scaler_skipped")
    assert [e.step for e in events] == list(range(ITERS))
    assert {e.value for e in events} == {1.0}


def test_interrupt_and_resume_auto_is_bit_identical_with_the_scaler_state(
    tmp_path, val_dir, monkeypatch
):
    # from scale 1024 the first step overflows, the rest do not: the checkpoint at the
    # interruption holds a lowered scale (512) and a growth tracker of 1, which a fresh scaler
    # would not reproduce (it would skip step 2 again)
    extra = (*FP16, "--amp-init-scale", "1024", "--no-tensorboard")
    full = train(tmp_path / "full", val_dir, *extra)
    assert full["scaler_skipped"] == 1 and full["loss_scale"] == 512.0

    calls = {"n": 0}
    real = common_training.any_process

    def interrupt_before_third_batch(flag, world=1, device=None):
        calls["n"] += 1
        return True if calls["n"] == 3 else real(flag, world, device)

    monkeypatch.setattr(common_training, "any_process", interrupt_before_third_batch)
    first = train(tmp_path / "cut", val_dir, *extra)
    monkeypatch.undo()
    assert first["interrupted"] and first["step"] == 2
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert cut["scaler"]["scale"] == 512.0 and cut["scaler"]["_growth_tracker"] == 1
    rest = train(tmp_path / "cut", val_dir, *extra, "--resume", "auto")
    assert totals(first) + totals(rest) == totals(full)  # bit-identical
    assert first["scaler_skipped"] + rest["scaler_skipped"] - 1 == full["scaler_skipped"]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["scaler"] == b["scaler"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name


def test_invertible_arithmetic_stays_float32_at_batch_16_patch_144():
    """The paper's training size, at a tiny width: under fp16 autocast every coupling output,
    the log-dets, the quantised LR and the losses are float32, and the image-sized sums they
    take would overflow fp16 (so a half-precision reduction anywhere would show as inf)."""
    from common.quantize import quantize_ste
    from irn.training import StepNoise

    torch.manual_seed(0)
    model = perturb_(IRN(IRNConfig(scale=4, blocks_per_level=1, gc=4)), std=0.01, seed=0)
    hr = torch.rand(16, 3, 144, 144)
    lr_ref = torch.nn.functional.avg_pool2d(hr, 4)
    outputs = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: outputs.append(o))
        for m in model.modules()
        if type(m).__name__.endswith("Coupling")
    ]
    assert hooks, "no coupling found to check"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        y, logdet = model(hr)
        x_rec, logdet_inv = model.inverse(y)
        assert torch.is_autocast_enabled("cpu")
    for h in hooks:
        h.remove()
    assert all(t.dtype == torch.float32 for o in outputs for t in o)
    assert y.dtype == x_rec.dtype == logdet.dtype == logdet_inv.dtype == torch.float32
    assert logdet.shape == (16,) and torch.isfinite(logdet).all()
    assert quantize_ste(y[:, :3].half()).dtype == torch.float32
    cfg = train_irn.IRNTrainConfig(batch_size=16, patch_size=144)
    z = torch.randn(16, 45, 36, 36, generator=torch.Generator().manual_seed(1)) * 1.2
    losses = train_irn.compute_losses(
        model, hr, lr_ref, cfg, StepNoise(z), 16.0, amp=torch.float16
    )
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    # the sums behind L_distr (45*36*36 terms a sample) and a log-det exceed fp16's range
    zh = (z * 1.3).half()
    assert torch.isinf((zh * zh).reshape(16, -1).sum(1)).any()  # what an fp16 sum would give
    reference = (zh.double() ** 2).sum() / 16
    assert distribution_loss(zh).dtype == torch.float32
    assert rel(distribution_loss(zh).item(), reference.item()) <= 1e-6
    ones = torch.full((16, 3, 144, 144), 2.0, dtype=torch.float16)
    assert sum_except_batch(ones).dtype == torch.float32
    assert (sum_except_batch(ones) == 2.0 * 3 * 144 * 144).all()  # > 65504: no overflow
    assert pixel_loss(ones, torch.zeros_like(ones), "l2").item() == 4.0 * 3 * 144 * 144
    assert 4.0 * 3 * 144 * 144 > FP16_MAX


def test_fp16_round_trip_below_one_8bit_level():
    """The authors' x4 architecture with every weight perturbed (no identity coupling) on a
    chelsea crop: the fp16 round trip f^-1(f(x)) stays within one 8-bit level."""
    from test_amp import photo

    torch.manual_seed(0)
    model = perturb_(IRN(IRNConfig(scale=4)), std=0.01, seed=0).eval()
    x = photo(96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        y, ld = model(x)
        x16, ld_inv = model.inverse(y)
    err = (x16 - x).abs()
    print(f"fp16 round trip: max {err.max().item():.2e}, mean {err.mean().item():.2e}")
    assert x16.dtype == torch.float32
    assert err.max().item() < 1.0 / 255
    assert ((ld + ld_inv).abs() <= 1e-5 * ld.abs()).all()


@pytest.mark.parametrize("option", [("--memory-saving",), ("--micro-batch", "2")])
def test_memory_saving_and_micro_batch_give_the_same_fp16_update(
    fp16_run, tmp_path, val_dir, option
):
    plain, _ = fp16_run
    res = train(tmp_path / "r", val_dir, *FP16, "--amp-init-scale", "128", "--no-tensorboard",
                *option)  # fmt: skip
    assert res["scaler_skipped"] == plain["scaler_skipped"] == 0
    pairs = list(zip(res["history"], plain["history"], strict=True))
    for k in ("total", "guide", "recon", "distr", "grad_norm"):
        print(f"{option[0]} {k}: {max(rel(a[k], b[k]) for a, b in pairs):.1e}", end="; ")
    for a, b in zip(res["history"], plain["history"], strict=True):
        for k in ("total", "guide", "recon", "distr"):
            assert rel(a[k], b[k]) <= 5e-5, (k, a[k], b[k])
        assert rel(a["grad_norm"], b["grad_norm"]) <= 2e-4


def test_evaluate_and_rescale_run_the_fp16_path(fp16_run, tmp_path, val_dir, capsys):
    """``--amp --amp-dtype fp16`` in evaluate.py and rescale.py: said in the output, and the
    8-bit LR of fp16 downscaling is the float32 one within one level."""
    import evaluate
    import rescale
    from common.images import load_image

    ckpt = fp16_run[0]["out"] + "/last.pt"
    capsys.readouterr()
    argv = ["--checkpoint", ckpt, "--data", str(val_dir), "--draws", "1", "--device", "cpu"]
    assert evaluate.main([*argv, "--amp", "--amp-dtype", "fp16"]) in (0, None)
    assert "device cpu, amp fp16" in capsys.readouterr().out
    lrs = {}
    for name, extra in (("f32", []), ("fp16", ["--amp", "--amp-dtype", "fp16"])):
        dst = tmp_path / name
        argv = ["down", str(val_dir), str(dst), "--checkpoint", ckpt, "--device", "cpu", *extra]
        assert rescale.main(argv) == 0
        lrs[name] = {p.name: load_image(p).astype(int) for p in sorted(dst.glob("*.png"))}
    assert "Precision: fp16 autocast on cpu" in capsys.readouterr().out
    assert lrs["f32"].keys() == lrs["fp16"].keys() and lrs["f32"]
    for key, lr in lrs["f32"].items():
        assert abs(lr - lrs["fp16"][key]).max() <= 1


def test_amp_setting_scaler_and_skip_report():
    assert amp_setting("cpu", False, "fp16") is None
    assert (
        amp_setting("cpu", True) == torch.bfloat16 and amp_setting("cuda", True) == torch.float16
    )
    assert amp_setting("cpu", True, "fp16") == torch.float16
    assert amp_setting("cuda", True, "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="--amp-dtype"):
        amp_setting("cpu", True, "fp8")
    assert not make_grad_scaler("cpu", torch.bfloat16).is_enabled()
    scaler = make_grad_scaler("cpu", torch.float16, init_scale=8.0)
    assert scaler.is_enabled() and scaler.get_scale() == 8.0
    assert "no gradient scaler" in describe_amp(
        "cpu", torch.bfloat16, make_grad_scaler("cpu", True)
    )
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.5)
    scaler.scale((w * 2).sum()).backward()
    assert scaler_step(scaler, opt) is False and torch.equal(w.detach(), torch.zeros(2))
    opt.zero_grad()
    scaler.scale((w * torch.tensor([1.0, math.inf])).sum()).backward()
    assert scaler_step(scaler, opt) is True and torch.equal(w.detach(), torch.zeros(2))
    assert scaler.get_scale() == 4.0  # halved


def test_glow_refuses_a_reduced_precision_amp_dtype(capsys):
    import train_glow

    with pytest.raises(SystemExit) as err:
        train_glow.main(["--amp-dtype", "fp16"])
    assert err.value.code == 2
    assert "--amp-dtype: fp16 refused: Glow trains in float32 only" in capsys.readouterr().err
