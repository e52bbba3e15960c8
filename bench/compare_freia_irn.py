"""Our IRN against the dissertation's FrEIA-built IRN, side by side: equality, then speed, memory
and precision. Run through ``bench/compare_freia.py --model irn`` (or directly)::

    pip install -r requirements-bench.txt
    python bench/compare_freia.py --model irn --threads 1              # the full comparison
    python bench/compare_freia.py --model irn --quick --threads 1      # small sizes, < 5 min
    python bench/compare_freia.py --model irn --profile --threads 1    # where the step time goes
    python bench/compare_freia.py --model irn --json runs/freia_irn.json

The FrEIA model is :mod:`bench.freia_irn` (a ``SequenceINN`` of FrEIA's Haar and an enhanced
coupling on FrEIA's coupling base with the authors' dense blocks, as the dissertation "Image
Rescaling using Invertible Neural Networks, by Probabilistic Disentanglement" built it); ours is
:class:`irn.model.IRN` with its defaults. Both get the same weights: our x4 (or x2) IRN drawn
from ``--seed`` and perturbed (Gaussian noise of sd 0.01 on every parameter, so the zero last
convolutions are non-zero and every coupling does something), copied into FrEIA's layout.

1. Equality, before any timing: forward ``(y, log|det|)``, inverse, the three training losses
   of ``train_irn.compute_losses`` (same batch, same ``z'``), the gradients (and each model's
   float32 gradients against ours in float64), the trainable
   parameter counts and each model's round trip ``max |x - f^-1(f(x))|``, at x2 and x4 in
   float32 and at x4 in float64.
2. Training step (``train_irn.sample_noise``, ``train_irn.compute_losses``,
   ``irn.training.backward_and_step`` with ``irn.training.build_optimizer``: train_irn's step),
   at batch 16 / patch 144 and batch 4 / patch 96 (``--quick``: batch 2 / patch 64), for FrEIA
   fp32, FrEIA under bf16 autocast, ours fp32, ``--amp``, ``--memory-saving`` and both. Time:
   all six models live in one process; after a warm-up step each they take turns step by step
   (the order rotates every round); each step is timed by the CPU time of the training thread
   (``time.thread_time``: with one torch thread every kernel, backward included, runs on it,
   and time the OS gives other processes is not counted) and by the wall clock. Ratios are
   medians over rounds of the paired ratio (same round) to FrEIA fp32. Memory: each
   configuration runs one step in a fresh subprocess (after a tiny warm-up step); "step
   memory" is the peak anonymous resident memory during the step (``RssAnon`` of
   ``/proc/self/status`` sampled every 2 ms by a thread, :class:`AnonPeak`) minus its value
   just before, i.e. what the step adds to a process holding the model and batch (activations,
   gradients, Adam state); the whole-process peak RSS (``ru_maxrss``) is also reported.
3. Round trip under each configuration's precision: ``max |x - f^-1(f(x))|`` (eval mode, the
   shared initial weights) on the first image of the benchmark batch, under bf16 autocast for
   the bf16 configurations.
4. Inference: downscale (quantised LR) then upscale with a sampled ``z`` of a 2048x1080 image
   (``--quick``: 256x256), without gradients, each configuration in a fresh subprocess: time
   and peak anonymous memory above its value before the call (after a tiny warm-up call).

``--profile``: ``torch.profiler`` over one training step of FrEIA fp32, FrEIA bf16, ours fp32
and ours ``--amp`` (after one warm-up step): the share of the convolutions (forward and
backward) in the step's CPU time and the top operators.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train_irn  # noqa: E402
from bench.freia_irn import freia_from_ours, trainable_params  # noqa: E402
from common.runtime import autocast_context, make_grad_scaler  # noqa: E402
from irn import training as irn_training  # noqa: E402
from irn.model import IRN, IRNConfig  # noqa: E402

__all__ = ["main", "equality", "build_config", "CONFIGS"]

# name -> (FrEIA?, bf16 autocast?, memory-saving?)
CONFIGS: dict[str, tuple[bool, bool, bool]] = {
    "freia-fp32": (True, False, False),
    "freia-bf16": (True, True, False),
    "ours-fp32": (False, False, False),
    "ours-amp": (False, True, False),
    "ours-memsave": (False, False, True),
    "ours-amp-memsave": (False, True, True),
}
INFERENCE_CONFIGS = ("freia-fp32", "freia-bf16", "ours-fp32", "ours-amp")
REFERENCE = "freia-fp32"
PERTURB = 0.01


# ---------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------


def perturbed_irn(scale: int, seed: int, dtype: torch.dtype = torch.float32) -> IRN:
    """Our default IRN at ``scale`` drawn from ``seed``, every parameter plus N(0, 0.01^2)."""
    torch.manual_seed(seed)
    model = IRN(IRNConfig(scale=scale)).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(PERTURB * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype))
    return model


def photo(height: int, width: int) -> torch.Tensor:
    """scikit-image's astronaut as ``[1, 3, height, width]`` float32 in [0, 1] (resized)."""
    from skimage import data as skdata

    img = torch.from_numpy(np.ascontiguousarray(skdata.astronaut())).permute(2, 0, 1)[None]
    img = img.float() / 255.0
    out = torch.nn.functional.interpolate(img, size=(height, width), mode="bilinear")
    return out.clamp(0.0, 1.0)


def hr_batch(batch: int, patch: int, seed: int) -> torch.Tensor:
    """``batch`` random ``patch``-pixel crops of the astronaut photo (512x512)."""
    img = photo(512, 512)[0]
    gen = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, 512 - patch + 1, (batch, 2), generator=gen).tolist()
    return torch.stack([img[:, t : t + patch, s : s + patch] for t, s in tops]).contiguous()


def build_config(name: str, scale: int, seed: int) -> torch.nn.Module:
    """The model of configuration ``name`` (every configuration has the same weights)."""
    freia, _, memsave = CONFIGS[name]
    ours = perturbed_irn(scale, seed)
    if freia:
        return freia_from_ours(ours).train()
    ours.memory_saving = memsave
    return ours.train()


def make_step(name: str, args: argparse.Namespace, batch: int, patch: int) -> dict[str, Any]:
    """Model, batch and a closure running one of ``train_irn``'s training steps."""
    _, amp, _ = CONFIGS[name]
    model = build_config(name, args.scale, args.seed)
    cfg = train_irn.IRNTrainConfig(batch_size=batch, patch_size=patch, seed=args.seed)
    optimizer = irn_training.build_optimizer(model, cfg)
    scaler = make_grad_scaler("cpu", amp)
    hr = hr_batch(batch, patch, args.seed)
    lr_ref = torch.nn.functional.avg_pool2d(hr, args.scale)  # timing does not depend on it
    z_gen = torch.Generator().manual_seed(args.seed + 2)
    lambda_guide = float(args.scale**2)

    def step() -> float:
        noise = train_irn.sample_noise(model, hr, cfg, z_gen)
        losses = train_irn.compute_losses(model, hr, lr_ref, cfg, noise, lambda_guide, amp=amp)
        optimizer.zero_grad(set_to_none=True)
        irn_training.backward_and_step(losses["total"], model, optimizer, scaler, cfg)
        return float(losses["total"].detach())

    return {"model": model, "step": step, "hr": hr, "amp": amp}


# ---------------------------------------------------------------------------------------------
# 1. Equality
# ---------------------------------------------------------------------------------------------


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` (0 when both are zero)."""
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale else (a - b).abs().max().item()


def _norm_rel(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """``||g - r|| / ||r||`` over all parameters at once (in float64)."""
    g = torch.cat([t.double().flatten() for t in grads])
    r = torch.cat([t.double().flatten() for t in ref])
    return ((g - r).norm() / r.norm()).item()


def _losses_and_grads(model, hr, lr_ref, cfg, noise, scale) -> tuple[dict, list]:
    model.zero_grad(set_to_none=True)
    losses = train_irn.compute_losses(model, hr, lr_ref, cfg, noise, float(scale**2))
    losses["total"].backward()
    grads = [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]
    return {k: v.detach() for k, v in losses.items()}, grads


def equality(
    scale: int, dtype: torch.dtype, batch: int = 2, patch: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Our IRN and the FrEIA IRN with the same perturbed weights, compared value by value."""
    ours = perturbed_irn(scale, seed, dtype)
    freia = freia_from_ours(ours)
    hr = hr_batch(batch, patch, seed).to(dtype)
    out: dict[str, Any] = {"scale": scale, "dtype": str(dtype).removeprefix("torch.")}
    with torch.no_grad():
        y_o, ld_o = ours(hr)
        y_f, ld_f = freia(hr)
        z = torch.randn(y_o[:, 3:].shape, generator=torch.Generator().manual_seed(seed))
        y_in = torch.cat([y_o[:, :3], z.to(dtype)], dim=1)
        x_o, ldi_o = ours.inverse(y_in)
        x_f, ldi_f = freia.inverse(y_in)
        out["forward_max_abs"] = (y_o - y_f).abs().max().item()
        out["logdet_rel"] = _max_rel(ld_f, ld_o)
        out["inverse_max_abs"] = (x_o - x_f).abs().max().item()
        out["inverse_logdet_rel"] = _max_rel(ldi_f, ldi_o)
        out["roundtrip_ours"] = (ours.inverse(y_o)[0] - hr).abs().max().item()
        out["roundtrip_freia"] = (freia.inverse(y_f)[0] - hr).abs().max().item()
    cfg = train_irn.IRNTrainConfig(batch_size=batch, patch_size=patch, seed=seed)
    lr_ref = torch.nn.functional.avg_pool2d(hr, scale)
    noise = train_irn.sample_noise(ours, hr, cfg, torch.Generator().manual_seed(seed + 1))
    loss_o, grad_o = _losses_and_grads(ours, hr, lr_ref, cfg, noise, scale)
    loss_f, grad_f = _losses_and_grads(freia, hr, lr_ref, cfg, noise, scale)
    out["losses_rel"] = {k: _max_rel(loss_f[k], loss_o[k]) for k in loss_o}
    out["losses_ours"] = {k: float(v) for k, v in loss_o.items()}
    out["grad_rel"] = max(_max_rel(f, o) for f, o in zip(grad_f, grad_o, strict=True))
    out["grad_norm_rel"] = _norm_rel(grad_f, grad_o)
    if dtype != torch.float64:  # each model's gradients against ours in float64
        ref = perturbed_irn(scale, seed, torch.float64)
        noise64 = type(noise)(noise.z.double(), noise.qualities)
        _, grad_64 = _losses_and_grads(ref, hr.double(), lr_ref.double(), cfg, noise64, scale)
        for name, grads in (("ours", grad_o), ("freia", grad_f)):
            out[f"grad_vs_f64_{name}"] = max(
                _max_rel(g.double(), r) for g, r in zip(grads, grad_64, strict=True)
            )
            out[f"grad_norm_vs_f64_{name}"] = _norm_rel(grads, grad_64)
    out["params_ours"] = trainable_params(ours)
    out["params_freia"] = trainable_params(freia)
    return out


def equality_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'case':<12}{'forward':>10}{'log-det':>10}{'inverse':>10}{'losses':>10}"
        f"{'grads':>10}{'params (both)':>15}{'round trip ours':>17}{'FrEIA':>10}"
        f"{'grads vs float64: ours':>24}{'FrEIA':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        same = r["params_ours"] == r["params_freia"]
        params = f"{r['params_ours']:,}" if same else f"{r['params_ours']}!={r['params_freia']}"
        lines.append(
            f"{'x' + str(r['scale']) + ' ' + r['dtype']:<12}{r['forward_max_abs']:>10.1e}"
            f"{r['logdet_rel']:>10.1e}{r['inverse_max_abs']:>10.1e}"
            f"{max(r['losses_rel'].values()):>10.1e}{r['grad_norm_rel']:>10.1e}{params:>15}"
            f"{r['roundtrip_ours']:>17.1e}{r['roundtrip_freia']:>10.1e}"
            f"{_fmt(r.get('grad_norm_vs_f64_ours'), '.1e'):>24}"
            f"{_fmt(r.get('grad_norm_vs_f64_freia'), '.1e'):>10}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 2-3. Training step: time, memory and the round trip in each precision
# ---------------------------------------------------------------------------------------------


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _anon_mib() -> float:
    """Anonymous resident memory of this process (``RssAnon`` of ``/proc/self/status``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0  # kB
    return float("nan")  # pragma: no cover - not Linux


class AnonPeak:
    """Peak anonymous resident memory while a ``with`` block runs, sampled by a thread every
    ``interval`` seconds; ``before`` is the value at entry. Tensors live in anonymous memory;
    file-backed pages (the libraries' code) are left out, because on a machine short of memory
    the kernel evicts and reloads them, which made the peak RSS (``ru_maxrss``) minus the RSS
    before the step swing by a GiB whatever the configuration. Activations live for a whole
    forward-backward pass, far longer than the interval."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.before = self.peak = float("nan")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _anon_mib())

    def __enter__(self) -> AnonPeak:
        self.before = self.peak = _anon_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _anon_mib())


def _timed(step) -> tuple[float, float]:
    c0, w0 = time.thread_time(), time.perf_counter()
    step()
    return time.thread_time() - c0, time.perf_counter() - w0


@torch.no_grad()
def roundtrip_error(model: torch.nn.Module, hr: torch.Tensor, amp: bool) -> float:
    """``max |x - f^-1(f(x))|`` in eval mode, under bf16 autocast when ``amp``."""
    was = model.training
    model.eval()
    with autocast_context("cpu", amp):
        y, _ = model(hr)
        x, _ = model.inverse(y)
    model.train(was)
    return (x.float() - hr).abs().max().item()


def measure_speed(args: argparse.Namespace, batch: int, patch: int) -> dict[str, Any]:
    """Interleaved training steps of every configuration in this process."""
    names = list(CONFIGS)
    built, rt = {}, {}
    for name in names:
        built[name] = make_step(name, args, batch, patch)
        # round trip with the shared initial weights (training steps make them differ)
        model, amp = built[name]["model"], built[name]["amp"]
        rt[name] = roundtrip_error(model, built[name]["hr"][:1], amp)
        for _ in range(args.warmup):
            built[name]["step"]()
    print(f"  batch {batch} / patch {patch}: built and warmed up {len(names)} models", flush=True)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            c, w = _timed(built[name]["step"])
            cpu[name].append(c)
            wall[name].append(w)
        line = ", ".join(f"{n} {cpu[n][-1]:.2f}s" for n in names)
        print(f"  round {r + 1}/{args.rounds} (CPU s): {line}", flush=True)
    return {"cpu": cpu, "wall": wall, "roundtrip": rt}


def _worker_argv(args: argparse.Namespace, **extra: Any) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--scale", str(args.scale)]
    argv += ["--seed", str(args.seed), "--threads", str(args.threads)]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def run_worker_process(argv: list[str]) -> dict[str, Any]:
    res = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"worker {argv[-6:]} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def step_memory_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One training step of ``args.worker`` in this fresh process: its memory."""
    tiny = make_step(args.worker, args, 1, 4 * args.scale)
    tiny["step"]()  # loads the code every step runs, so it is not counted as step memory
    del tiny
    built = make_step(args.worker, args, args.batch_size, args.patch_size)
    with AnonPeak() as mem:
        cpu, wall = _timed(built["step"])
    return {
        "before_mib": mem.before,
        "peak_mib": _rss_mib(),
        "step_mib": mem.peak - mem.before,
        "cpu_s": cpu,
        "wall_s": wall,
    }


def measure_memory(args: argparse.Namespace, batch: int, patch: int) -> dict[str, Any]:
    out = {}
    for name in CONFIGS:
        argv = _worker_argv(args, worker=name, batch_size=batch, patch_size=patch)
        out[name] = run_worker_process(argv)
        print(f"  memory {name}: {out[name]['step_mib'] / 1024:.2f} GiB", flush=True)
    return out


def _paired(times: dict[str, list[float]], name: str) -> float:
    pairs = zip(times[name], times[REFERENCE], strict=True)
    return statistics.median(a / b for a, b in pairs)


def speed_from_memory(memory: dict[str, Any]) -> dict[str, Any]:
    """``--skip-speed``: the memory subprocesses' single steps as the timing (fresh process
    each, after a tiny warm-up step; not interleaved, so only the CPU times compare)."""
    names = list(CONFIGS)
    return {
        "cpu": {n: [memory[n]["cpu_s"]] for n in names},
        "wall": {n: [memory[n]["wall_s"]] for n in names},
        "roundtrip": {n: float("nan") for n in names},
    }


def step_table(speed: dict[str, Any], memory: dict[str, Any]) -> tuple[str, dict[str, dict]]:
    head = (
        f"{'config':<18}{'CPU s/step':>11}{'vs FrEIA':>9}{'wall s':>9}{'vs FrEIA':>9}"
        f"{'step GiB':>10}{'vs FrEIA':>9}{'peak GiB':>10}{'round trip':>12}"
    )
    lines, rows = [head, "-" * len(head)], {}
    ref_mem = memory.get(REFERENCE, {}).get("step_mib")
    for name in CONFIGS:
        mem = memory.get(name, {})
        row = {
            "cpu_s": statistics.median(speed["cpu"][name]),
            "cpu_vs_freia": _paired(speed["cpu"], name),
            "wall_s": statistics.median(speed["wall"][name]),
            "wall_vs_freia": _paired(speed["wall"], name),
            "step_gib": mem["step_mib"] / 1024 if mem else None,
            "step_mem_vs_freia": mem["step_mib"] / ref_mem if mem and ref_mem else None,
            "peak_gib": mem["peak_mib"] / 1024 if mem else None,
            "roundtrip": speed["roundtrip"][name],
        }
        rows[name] = row
        lines.append(
            f"{name:<18}{row['cpu_s']:>11.2f}{row['cpu_vs_freia']:>8.2f}x{row['wall_s']:>9.2f}"
            f"{row['wall_vs_freia']:>8.2f}x{_fmt(row['step_gib'], '.2f'):>10}"
            f"{_fmt(row['step_mem_vs_freia'], '.2f'):>8}x{_fmt(row['peak_gib'], '.2f'):>10}"
            f"{row['roundtrip']:>12.1e}"
        )
    return "\n".join(lines), rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


# ---------------------------------------------------------------------------------------------
# 4. Inference of a large image
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def inference_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Downscale and upscale one ``args.height x args.width`` image in this fresh process."""
    _, amp, _ = CONFIGS[args.worker]
    model = build_config(args.worker, args.scale, args.seed).eval()
    gen = torch.Generator().manual_seed(args.seed)
    tiny = photo(8 * args.scale, 8 * args.scale)
    for img in (tiny, photo(args.height, args.width)):  # the tiny one loads the code
        with AnonPeak() as mem:
            c0, w0 = time.thread_time(), time.perf_counter()
            with autocast_context("cpu", amp):
                lr = model.downscale(img)
                sr = model.upscale(lr.float(), generator=gen)
            cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
            del lr, sr
    step = mem.peak - mem.before
    return {"cpu_s": cpu, "wall_s": wall, "step_mib": step, "peak_mib": _rss_mib()}


def measure_inference(args: argparse.Namespace, height: int, width: int) -> dict[str, Any]:
    runs: dict[str, list[dict]] = {n: [] for n in INFERENCE_CONFIGS}
    names = list(INFERENCE_CONFIGS)
    for r in range(args.inference_rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            argv = _worker_argv(args, worker=name, inference=1, height=height, width=width)
            runs[name].append(run_worker_process(argv))
            print(f"  inference {name}: {runs[name][-1]['cpu_s']:.1f} s CPU", flush=True)
    return runs


def inference_table(runs: dict[str, list[dict]]) -> tuple[str, dict[str, dict]]:
    head = f"{'config':<14}{'CPU s':>9}{'vs FrEIA':>9}{'wall s':>9}{'GiB':>8}{'vs FrEIA':>9}"
    lines, rows = [head, "-" * len(head)], {}
    ref = runs[REFERENCE]
    for name, rs in runs.items():
        row = {
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "cpu_vs_freia": statistics.median(
                a["cpu_s"] / b["cpu_s"] for a, b in zip(rs, ref, strict=True)
            ),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "gib": max(r["step_mib"] for r in rs) / 1024,
        }
        row["mem_vs_freia"] = row["gib"] * 1024 / max(r["step_mib"] for r in ref)
        rows[name] = row
        lines.append(
            f"{name:<14}{row['cpu_s']:>9.1f}{row['cpu_vs_freia']:>8.2f}x{row['wall_s']:>9.1f}"
            f"{row['gib']:>8.2f}{row['mem_vs_freia']:>8.2f}x"
        )
    return "\n".join(lines), rows


# ---------------------------------------------------------------------------------------------
# --profile
# ---------------------------------------------------------------------------------------------


def profile(args: argparse.Namespace, batch: int, patch: int) -> dict[str, Any]:
    """One profiled training step per configuration: the convolutions' share of the CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = {}
    for name in ("freia-fp32", "freia-bf16", "ours-fp32", "ours-amp"):
        built = make_step(name, args, batch, patch)
        built["step"]()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            built["step"]()
        events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        total = sum(e.self_cpu_time_total for e in events)
        conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
        out[name] = {
            "conv_share": conv / total,
            "aten_ms": total / 1e3,
            "top": [(e.key, e.self_cpu_time_total / total) for e in top],
        }
        print(f"{name}: convolutions {100 * conv / total:.0f}% of {total / 1e6:.2f} s")
        for key, share in out[name]["top"]:
            print(f"    {key:<40}{100 * share:6.1f}%")
    return out


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _pairs(text: str, flag: str) -> list[tuple[int, int]]:
    try:
        out = [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]
    except ValueError:
        out = []
    if not out or any(len(p) != 2 or min(p) < 1 for p in out):
        raise SystemExit(f"compare_freia_irn.py: error: {flag} expects AxB[,AxB...], got {text!r}")
    return out  # type: ignore[return-value]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="compare_freia.py --model irn",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="Small sizes (under 5 minutes).")
    p.add_argument("--profile", action="store_true", help="Profile one step of 4 configs.")
    p.add_argument("--scale", type=int, default=4, choices=(2, 4, 8), help="Timed scale.")
    p.add_argument("--steps", default=None, help="BATCHxPATCH list (default 16x144,4x96).")
    p.add_argument("--image", default=None, help="Inference image WxH (default 2048x1080).")
    p.add_argument("--rounds", type=int, default=2, help="Timed steps per configuration.")
    p.add_argument("--warmup", type=int, default=1, help="Untimed steps per configuration.")
    p.add_argument("--inference-rounds", type=int, default=1, help="Inference runs each.")
    p.add_argument("--equality-only", action="store_true", help="Only the equality table.")
    p.add_argument("--skip-memory", action="store_true", help="No memory subprocesses.")
    p.add_argument(
        "--skip-speed",
        action="store_true",
        help="Time each configuration by its memory subprocess's single step instead of the "
        "interleaved rounds (for the slowest sizes on a busy machine).",
    )
    p.add_argument("--skip-equality", action="store_true", help="No equality table.")
    p.add_argument("--skip-inference", action="store_true", help="No inference runs.")
    p.add_argument("--seed", type=int, default=0, help="Seed of weights, data and z.")
    p.add_argument("--threads", type=int, default=1, help="torch threads (all models alike).")
    p.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    for hidden in ("--worker", "--batch-size", "--patch-size", "--height", "--width"):
        p.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    p.add_argument("--inference", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("rounds", "threads", "inference_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    default_steps, default_image = (
        ("2x64", "256x256") if args.quick else ("16x144,4x96", "2048x1080")
    )
    args.step_sizes = _pairs(args.steps or default_steps, "--steps")
    (args.image_wh,) = _pairs(args.image or default_image, "--image")[:1]
    for _, patch in args.step_sizes:
        if patch % args.scale:
            p.error(f"--steps: patch {patch} is not a multiple of --scale {args.scale}")
    if min(args.image_wh) % args.scale:
        p.error(f"--image {args.image_wh}: sides must be multiples of --scale {args.scale}")
    return args


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """A subprocess's job (``--worker``): one training step's or one inference's memory."""
    for name in ("batch_size", "patch_size", "height", "width"):
        value = getattr(args, name)
        setattr(args, name, None if value is None else int(value))
    if args.inference:
        return inference_worker(args)
    return step_memory_worker(args)


def run_equality(args: argparse.Namespace) -> list[dict[str, Any]]:
    batch, patch = (1, 32) if args.quick else (2, 64)
    cases = [(2, torch.float32), (4, torch.float32), (4, torch.float64)]
    rows = [equality(s, dt, batch=batch, patch=patch, seed=args.seed) for s, dt in cases]
    print(f"Equality (same perturbed weights; batch {batch}, patch {patch}; max |difference|,")
    print("log-det and losses relative to ours; gradients: ||FrEIA - ours|| / ||ours|| over all")
    print("parameters; round trip max |x - f^-1(f(x))|; float32 gradients of each against ours")
    print("in float64, the same norm ratio; per-tensor maxima in the JSON):")
    print(equality_table(rows))
    return rows


def run_comparison(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"steps": {}}
    if not args.skip_equality:
        result["equality"] = run_equality(args)
    if args.equality_only:
        return result
    for batch, patch in args.step_sizes:
        print(f"\nTraining step, IRN x{args.scale}, batch {batch}, patch {patch}:", flush=True)
        memory = {} if args.skip_memory else measure_memory(args, batch, patch)
        if args.skip_speed and memory:
            speed = speed_from_memory(memory)
        else:
            speed = measure_speed(args, batch, patch)
        text, rows = step_table(speed, memory)
        print(text)
        result["steps"][f"{batch}x{patch}"] = {
            "rows": rows, "speed": speed, "memory": memory, "table": text,
        }  # fmt: skip
    if not args.skip_inference:
        width, height = args.image_wh
        print(f"\nInference: downscale + upscale of a {width}x{height} image:", flush=True)
        runs = measure_inference(args, height, width)
        text, rows = inference_table(runs)
        print(text)
        result["inference"] = {"rows": rows, "runs": runs, "table": text}
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        out = run_worker(args)
        print(json.dumps(out))
        return out
    load_start = os.getloadavg()
    print(
        f"IRN x{args.scale}: ours against the FrEIA IRN; {args.threads} thread(s), "
        f"torch {torch.__version__}; load average {load_start}",
        flush=True,
    )
    if args.profile:
        batch, patch = args.step_sizes[-1]
        result = {"profile": profile(args, batch, patch)}
    else:
        result = run_comparison(args)
    result["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["loadavg"] = [load_start, os.getloadavg()]
    print(f"load average: start {load_start}, end {result['loadavg'][1]}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
