"""Speed and memory of one IRN training step, for each execution mode (issue 7).

One step is exactly ``train_irn``'s: ``train_irn.compute_losses`` (downscale, STE-quantise,
upscale with sampled z, the three losses) then ``irn.training.backward_and_step`` (backward, norm
clipping, Adam)::

    python bench/bench_irn.py                                   # x4, batch 4, patch 96
    python bench/bench_irn.py --batch-size 16 --patch-size 144 --rounds 3 --threads 1 \\
        --json runs_bench/x4_b16_p144.json
    python bench/bench_irn.py --configs baseline,fp32,amp --skip-memory

Configurations (``--configs``, comma separated; each is ``+``-joined tokens):

* ``baseline``: the authors' computation, plain eager float32: NCHW convolutions, the dense block
  exactly as theirs, ordinary backprop, PyTorch's default (per-tensor) Adam. All speed-ups are
  ratios to it **within one run**.
* ``fp32``: this project's default eager float32 path (channels-last dense blocks, incrementally
  grown concatenations, fused Adam as ``irn.training.build_optimizer``).
* ``amp``: autocast as ``--amp`` with ``--amp-dtype`` (auto: bf16 on CPU, fp16 + gradient scaler
  on CUDA; fp16: fp16 + gradient scaler on any device).
* ``memsave``: memory-saving backprop, as ``--memory-saving``.
* ``nchw``: channels-last off; ``compile``: ``torch.compile`` of every dense block.
* ``multiscale``: the multi-scale IRN (``--multiscale``, irn/multiscale.py) with
  ``--split-channels`` and the normal prior; ``multiscale+learned`` with the learned prior. The
  column "vs IRN" is the paired ratio to the same configuration without these tokens
  (``amp+multiscale`` against ``amp``), when that one is in the run.
  Tokens combine: ``amp+memsave``, ``baseline+amp`` (the authors' code under autocast), ...

Method. Speed: every configuration gets its own model (same weights) and optimiser in this
process; after ``--warmup`` steps each, the configurations take turns step by step for
``--rounds`` rounds (the order rotates every round), so a load change on a shared machine hits
all of them alike. Reported: the median step time and, as "vs base" / "vs fp32", the median over
rounds of the ratio of two configurations' times in the same round (paired ratios). Memory: each
configuration runs in a fresh subprocess (``--warmup`` + ``--memory-steps`` steps) and reports
its peak RSS (CPU, ``getrusage``; it includes the ~0.3-0.5 GB of the interpreter and torch, also
reported) or ``torch.cuda.max_memory_allocated`` (CUDA). FLOPs:
``torch.utils.flop_counter.FlopCounterMode`` over one step at batch 1 (convolutions and matrix
products; exactly proportional to the batch), per configuration (memory saving recomputes, so it
executes more); "model GFLOP/s" divides the baseline's FLOPs by each configuration's time (useful
work per second), "exec GFLOP/s" its own.
The load average is recorded before and after: on a loaded machine trust the ratios, not the
seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train_irn  # noqa: E402
from common.atomic import atomic_write_json  # noqa: E402
from common.runtime import (  # noqa: E402
    AMP_DTYPES,
    amp_setting,
    describe_amp,
    make_grad_scaler,
    resolve_device,
)
from common.subnets import DenseBlock, set_dense_block_options  # noqa: E402
from irn import training as irn_training  # noqa: E402
from irn.model import IRN, IRNConfig  # noqa: E402

__all__ = ["main", "parse_config", "build", "count_flops"]

TOKENS = ("baseline", "fp32", "amp", "memsave", "nchw", "compile", "multiscale", "learned")
DEFAULT_CONFIGS = "baseline,fp32,amp,memsave,amp+memsave,baseline+amp"


def parse_config(name: str) -> dict[str, bool]:
    """``"amp+memsave"`` -> the options it switches on; unknown tokens are refused."""
    tokens = [t for t in name.strip().split("+") if t]
    if not tokens:
        raise ValueError("empty configuration name")
    bad = [t for t in tokens if t not in TOKENS]
    if bad:
        raise ValueError(f"unknown token(s) {bad} in {name!r}; known: {', '.join(TOKENS)}")
    baseline = "baseline" in tokens
    if "learned" in tokens and "multiscale" not in tokens:
        raise ValueError(f"'learned' needs 'multiscale' in {name!r}")
    return {
        "amp": "amp" in tokens,
        "memory_saving": "memsave" in tokens,
        "channels_last": not baseline and "nchw" not in tokens,
        "fast": not baseline,
        "compile": "compile" in tokens,
        "multiscale": "multiscale" in tokens,
        "learned": "learned" in tokens,
    }


def plain_counterpart(name: str) -> str | None:
    """The configuration ``name`` without its multi-scale tokens (``fp32`` if nothing is left),
    or None when ``name`` is not multi-scale."""
    tokens = [t for t in name.strip().split("+") if t]
    if "multiscale" not in tokens:
        return None
    rest = [t for t in tokens if t not in ("multiscale", "learned")]
    return "+".join(rest) if rest else "fp32"


def model_config(args: argparse.Namespace, opts: dict[str, bool]) -> IRNConfig:
    """The IRN of a configuration: the authors' or the multi-scale one."""
    if not opts["multiscale"]:
        return IRNConfig(scale=args.scale, blocks_per_level=args.blocks, gc=args.gc)
    return IRNConfig(
        scale=args.scale,
        blocks_per_level=args.blocks,
        gc=args.gc,
        multiscale=True,
        split_channels=args.split_channels,
        split_prior="learned" if opts["learned"] else "normal",
    )


def build(args: argparse.Namespace, name: str, device: torch.device) -> dict[str, Any]:
    """Model, optimiser, scaler, data and the step closure of one configuration."""
    opts = parse_config(name)
    torch.manual_seed(args.seed)
    model = IRN(model_config(args, opts))
    if args.checkpoint:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"] if "model" in ckpt else ckpt)
    else:
        # non-zero last convolutions, so every gradient is non-trivial (as after training starts)
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
    model.to(device).train()
    set_dense_block_options(model, channels_last=opts["channels_last"], fast=opts["fast"])
    model.memory_saving = opts["memory_saving"]
    if opts["compile"]:
        for block in model.modules():
            if isinstance(block, DenseBlock):
                block.compile()
    cfg = train_irn.IRNTrainConfig(batch_size=args.batch_size, patch_size=args.patch_size)
    if opts["fast"]:
        optimizer = irn_training.build_optimizer(model, cfg)  # as train_irn: fused Adam
    else:  # the authors' (PyTorch's default, per-tensor) Adam
        optimizer = torch.optim.Adam(
            model.parameters(),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            weight_decay=cfg.weight_decay,
        )
    # callers with their own namespace (bench_loader.py) get the defaults
    amp = amp_setting(device, opts["amp"], getattr(args, "amp_dtype", "auto"))
    scaler = make_grad_scaler(device, amp, init_scale=getattr(args, "amp_init_scale", None))
    gen = torch.Generator().manual_seed(args.seed + 1)
    p, s = args.patch_size, args.scale
    hr = torch.rand(args.batch_size, 3, p, p, generator=gen).to(device)
    lr_ref = torch.nn.functional.avg_pool2d(hr, s)  # timing does not depend on the target
    z_gen = torch.Generator(device=device).manual_seed(args.seed + 2)
    lambda_guide = float(s * s)

    def step() -> float:
        noise = train_irn.sample_noise(model, hr, cfg, z_gen)
        losses = train_irn.compute_losses(model, hr, lr_ref, cfg, noise, lambda_guide, amp=amp)
        optimizer.zero_grad(set_to_none=True)
        irn_training.backward_and_step(losses["total"], model, optimizer, scaler, cfg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return float(losses["total"].detach())

    return {
        "model": model,
        "step": step,
        "opts": opts,
        "precision": describe_amp(device, amp, scaler),
    }


def count_flops(args: argparse.Namespace, name: str, device: torch.device) -> int:
    """FLOPs of one step of ``name`` at batch 1, times the batch size (exactly proportional)."""
    from torch.utils.flop_counter import FlopCounterMode

    one = argparse.Namespace(**{**vars(args), "batch_size": 1})
    built = build(one, name, device)
    built["step"]()  # ActNorm-style lazy work and allocations outside the count
    counter = FlopCounterMode(display=False)
    # Its per-module tracker hooks autograd in a way torch.autograd.grad inside a backward pass
    # (memory-saving mode) does not support; only the global count is needed, so track no modules.
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    with counter:
        built["step"]()
    return int(counter.get_total_flops()) * args.batch_size


class _GlobalOnly:
    """Stand-in for FlopCounterMode's module tracker: everything counts under "Global"."""

    parents = ("Global",)
    is_bw = False

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _timed(step: Callable[[], float]) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        return float("nan")


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in this (fresh) process: peak memory and its own step times."""
    device = resolve_device(args.device)
    name = args.worker
    built = build(args, name, device)
    rss_before = _current_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [_timed(built["step"]) for _ in range(args.warmup + args.memory_steps)]
    out: dict[str, Any] = {
        "config": name,
        "rss_before_step_mib": rss_before,
        "times": times,
        "step_s": statistics.median(times[args.warmup :]) if args.memory_steps else None,
        "precision": built["precision"],
    }
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_kind"] = "cuda max_memory_allocated"
    else:
        out["peak_mib"] = _rss_mib()
        out["peak_kind"] = "peak RSS"
    return out


def measure_memory(args: argparse.Namespace, configs: list[str]) -> dict[str, dict]:
    results = {}
    for name in configs:
        cmd = [sys.executable, str(Path(__file__).resolve()), *_shared_argv(args)]
        cmd += ["--worker", name]
        print(f"  memory: {name} (fresh process)", flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError(f"worker {name} failed:\n{res.stderr[-3000:]}")
        results[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return results


def _shared_argv(args: argparse.Namespace) -> list[str]:
    argv = [
        "--scale", str(args.scale), "--batch-size", str(args.batch_size),
        "--patch-size", str(args.patch_size), "--gc", str(args.gc),
        "--warmup", str(args.warmup), "--memory-steps", str(args.memory_steps),
        "--seed", str(args.seed), "--device", args.device, "--amp-dtype", args.amp_dtype,
    ]  # fmt: skip
    if args.amp_init_scale is not None:
        argv += ["--amp-init-scale", str(args.amp_init_scale)]
    if args.blocks is not None:
        argv += ["--blocks", str(args.blocks)]
    if args.split_channels is not None:
        argv += ["--split-channels", str(args.split_channels)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.checkpoint:
        argv += ["--checkpoint", args.checkpoint]
    return argv


def measure_speed(
    args: argparse.Namespace, configs: list[str], device: torch.device
) -> dict[str, list[float]]:
    built = {}
    for name in configs:
        built[name] = build(args, name, device)
        for _ in range(args.warmup):
            built[name]["step"]()
        print(f"  speed: built and warmed up {name}", flush=True)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for name in order:
            times[name].append(_timed(built[name]["step"]))
        line = ", ".join(f"{n} {times[n][-1]:.2f}s" for n in configs)
        print(f"  round {r + 1}/{args.rounds}: {line}", flush=True)
    return times


def _paired(times: dict[str, list[float]], name: str, ref: str) -> float | None:
    """Median over rounds of ``time(name) / time(ref)`` in the same round: the two steps ran
    back to back, so a load change between rounds cancels out."""
    if not times.get(name) or not times.get(ref):
        return None
    return statistics.median(a / b for a, b in zip(times[name], times[ref], strict=True))


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'config':<22}{'step s':>9}{'vs base':>9}{'vs fp32':>9}{'vs IRN':>8}{'peak GiB':>10}"
        f"{'vs base':>9}{'GFLOP':>8}{'params M':>9}{'model GF/s':>12}{'exec GF/s':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['config']:<22}{_fmt(r['step_s'], '.3f'):>9}"
            f"{_fmt(r['speed_vs_baseline'], '.2f'):>9}"
            f"{_fmt(r['speed_vs_fp32'], '.2f'):>9}{_fmt(r['speed_vs_irn'], '.2f'):>8}"
            f"{_fmt(r['peak_gib'], '.2f'):>10}"
            f"{_fmt(r['memory_vs_baseline'], '.2f'):>9}"
            f"{_fmt(r['flops'] and r['flops'] / 1e9, '.1f'):>8}"
            f"{_fmt(r['params'] / 1e6, '.3f'):>9}{_fmt(r['model_gflops'], '.1f'):>12}"
            f"{_fmt(r['exec_gflops'], '.1f'):>11}"
        )
    return "\n".join(lines)


def result_rows(
    args: argparse.Namespace,
    configs: list[str],
    times: dict[str, list[float]],
    memory: dict[str, dict],
    flops: dict[str, int],
) -> list[dict[str, Any]]:
    """One row per configuration: median step time, paired ratios, peak memory, FLOPs."""
    step_s = {c: statistics.median(t) for c, t in times.items() if t}
    base_flops = flops.get("baseline")
    rows = []
    for c in configs:
        s = step_s.get(c)
        peak = memory.get(c, {}).get("peak_mib")
        rows.append(
            {
                "config": c,
                "step_s": s,
                "speed_vs_baseline": _paired(times, c, "baseline"),
                "speed_vs_fp32": _paired(times, c, "fp32"),
                "speed_vs_irn": _paired(times, c, plain_counterpart(c) or c)
                if plain_counterpart(c)
                else None,
                "params": sum(
                    q.numel() for q in IRN(model_config(args, parse_config(c))).parameters()
                ),
                "medians_vs_baseline": s / step_s["baseline"]
                if s and "baseline" in step_s
                else None,
                "peak_gib": peak / 1024 if peak else None,
                "memory_vs_baseline": (
                    peak / memory["baseline"]["peak_mib"]
                    if peak and "baseline" in memory
                    else None
                ),
                "memory_vs_irn": (
                    peak / memory[plain_counterpart(c)]["peak_mib"]
                    if peak and plain_counterpart(c) in memory
                    else None
                ),
                "flops": flops.get(c),
                "model_gflops": base_flops / s / 1e9 if base_flops and s else None,
                "exec_gflops": flops[c] / s / 1e9 if c in flops and s else None,
            }
        )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_irn.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--scale", type=int, default=4, help="IRN scale (2, 3, 4, 8).")
    p.add_argument("--batch-size", type=int, default=4, help="Batch size of the step.")
    p.add_argument("--patch-size", type=int, default=96, help="HR patch side.")
    p.add_argument("--blocks", type=int, default=None, help="Couplings per level (none: 8).")
    p.add_argument("--gc", type=int, default=32, help="Dense-block growth channels.")
    p.add_argument(
        "--split-channels",
        type=int,
        default=None,
        help="Channels leaving after each level in the multiscale configurations (none: half).",
    )
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="Configurations to compare.")
    p.add_argument("--warmup", type=int, default=1, help="Untimed steps per configuration.")
    p.add_argument("--rounds", type=int, default=3, help="Timed steps per configuration.")
    p.add_argument(
        "--memory-steps", type=int, default=1, help="Steps after warm-up in each memory process."
    )
    p.add_argument("--skip-memory", action="store_true", help="No memory subprocesses.")
    p.add_argument("--skip-speed", action="store_true", help="No alternating speed runs.")
    p.add_argument("--skip-flops", action="store_true", help="No FLOP counting.")
    p.add_argument("--threads", type=int, default=None, help="torch threads (none: default).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    p.add_argument("--seed", type=int, default=0, help="Seed of weights, data and z.")
    p.add_argument(
        "--amp-dtype",
        default="auto",
        choices=AMP_DTYPES,
        help="Autocast dtype of the amp configurations: auto = fp16 + gradient scaler on CUDA, "
        "bf16 on CPU; fp16 = fp16 + gradient scaler on any device.",
    )
    p.add_argument(
        "--amp-init-scale", type=float, default=None, help="First fp16 loss scale (none: 2**16)."
    )
    p.add_argument(
        "--checkpoint", default=None, help="Load weights (a train_irn checkpoint's 'model')."
    )
    p.add_argument("--json", type=Path, default=None, help="Write the results here.")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in args.configs.split(","):
        try:
            parse_config(name)
        except ValueError as err:
            p.error(f"--configs: {err}")
    if args.amp_init_scale is not None and not args.amp_init_scale > 0:
        p.error(f"--amp-init-scale must be > 0, got {args.amp_init_scale}")
    if args.patch_size % args.scale:
        p.error(f"--patch-size {args.patch_size} must be a multiple of --scale {args.scale}")
    return args


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:  # pragma: no cover
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        out = run_worker(args)
        print(json.dumps(out))
        return out
    device = resolve_device(args.device)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    load_start = _loadavg()
    print(
        f"IRN x{args.scale}, batch {args.batch_size}, patch {args.patch_size}, "
        f"device {device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
        f"amp dtype {amp_setting(device, True, args.amp_dtype)}; "
        f"load average {load_start}",
        flush=True,
    )
    memory = {} if args.skip_memory else measure_memory(args, configs)
    times = {} if args.skip_speed else measure_speed(args, configs, device)
    flops = {} if args.skip_flops else {c: count_flops(args, c, device) for c in configs}
    load_end = _loadavg()

    rows = result_rows(args, configs, times, memory, flops)
    text = table(rows)
    print()
    print(text)
    print(f"load average: start {load_start}, end {load_end}")
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "device": str(device),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "rows": rows,
        "times": times,
        "memory": memory,
        "flops": flops,
        "table": text,
    }
    if args.json is not None:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
