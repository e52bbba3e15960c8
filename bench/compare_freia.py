"""Our flat Glow against the same flow built from FrEIA, trained side by side on the 8x8 digits.

FrEIA is an optional extra (never in requirements.txt)::

    pip install -r requirements-bench.txt
    python bench/compare_freia.py                          # 5 epochs, batch 32, Adam 1e-3, 3 seeds
    python bench/compare_freia.py --repeats 1 --json out/compare_freia.json
    python bench/compare_freia.py --profile 20             # torch.profiler op counts, then exit
    python bench/compare_freia.py --model irn --quick      # IRN: bench/compare_freia_irn.py

Without FrEIA the script prints why it skips and exits 0 (with ``--json`` it writes
``{"skipped": ...}``).

Method. Every model sees the same batches (``glow.data.train_batches``: same split, order and
dequantisation noise), the same loss (mean NLL in nats per dimension), the same optimiser
(Adam, lr 1e-3, identical implementation flags) and the same thread count. Each training step
builds the batch once and then runs one optimiser step of *every* model, in an order that rotates
from step to step. Each step is timed twice: CPU time of the training thread
(``time.thread_time``; with one torch thread all the work, backward included, runs on it) and
wall-clock time. CPU time is the primary measure: on a shared machine the wall clock also counts
the time the OS gives to other processes, which comes in slices of milliseconds and makes the
per-step wall times bimodal. Reported per model: trainable parameters, training time per sample
(median over steps of step time / batch size; total time / samples), test bits/dim on a fixed
dequantisation of the 180 test digits (mean +- sd over seeds), and the round-trip error
``max |x - f^-1(f(x))|`` on those digits in float32. The speed-up is FrEIA's median CPU time per
sample over ours, and the median over steps of the paired ratio (same step, same batch).

Models:

* ``freia``: ``SequenceINN`` of 8 ``AllInOneBlock`` (affine clamping 2, hard permutation), each
  with the subnet ``Linear(32, 512) -> ReLU -> Linear(512, 64)`` (FrEIA's documented example).
* ``ours``: ``train_glow.py``'s default model, ``Glow(architecture="flat", steps=8,
  hidden=512, subnet_layers=1, permutation="shuffle")``: the dissertation's flat step
  (ActNorm -> fixed permutation -> affine coupling, its fig. 3.1), the same subnets and the same
  trainable parameter count (398,848), evaluated by :class:`common.fused.FusedFlatFlow`.
* ``ours-unfused``: the same model (same seed, same initial weights) evaluated layer by layer
  (``model.flow = model.flow.to_layers()``): the implementation before the fused path. Same
  maths, so its bits/dim match ``ours`` up to float32 rounding; the time difference is the
  fusion.
* ``ours-glow``: Glow's own step (LU-decomposed invertible 1x1 conv), otherwise as ``ours``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.atomic import atomic_write_json  # noqa: E402
from glow.data import (  # noqa: E402
    NUM_DIMS,
    evaluate_bits_per_dim,
    fixed_dequantized,
    load_digits_split,
    train_batches,
)
from glow.model import Glow, GlowConfig, standard_normal_log_prob  # noqa: E402

FREIA_MISSING = (
    "FrEIA is not installed, skipping the comparison. It is an optional extra: "
    "pip install -r requirements-bench.txt  (or: pip install FrEIA)"
)

DIFFERENCES = [
    "Same architecture: 8 steps, each a per-channel affine map, a fixed random permutation and "
    "an affine coupling with the subnet Linear(32, 512)-ReLU-Linear(512, 64); 398,848 "
    "trainable parameters on both sides (FrEIA and ours-unfused hold them in 48 tensors, ours "
    "stacked in 6: common/fused.py). The parametrisation details below differ.",
    "Step order: FrEIA's AllInOneBlock is coupling -> global affine -> fixed permutation; "
    "ours is ActNorm -> permutation -> coupling (Glow sec. 3). Over 8 steps both alternate the "
    "same three operations; only the two ends differ.",
    "Per-channel affine: FrEIA's global affine has a softplus-parametrised scale initialised "
    "to 1; ours is ActNorm with data-dependent init on 256 training digits (Glow sec. 3.1). "
    "Same parameter count (2 x 64 per step).",
    "Coupling scale: FrEIA exp(2 tanh(0.1 a)); ours sigmoid(a + 2) (Glow's code). (Our 'exp' "
    "option, exp(2 tanh(a / 2)), trains worse here: about 3.0-3.4 bits/dim after 5 epochs.)",
    "Subnet init: FrEIA keeps PyTorch's default init (its outputs are scaled by 0.1); ours "
    "zero-initialises the last layer so every coupling starts as the identity (Glow sec. 3.3).",
    "Permutation: FrEIA multiplies by a 64x64 permutation matrix (F.linear); ours gathers "
    "(index_select). ours-unfused (the same maths as ours, layer by layer, with these "
    "differences) trains at FrEIA's speed, so the speed-up of ours is the fusion.",
    "ours-glow has a learned LU 1x1 conv instead of a fixed permutation: 3 more parameter "
    "tensors per step (its strictly triangular 64x64 factors are stored as full matrices, so "
    "its parameter count includes 2 x 2080 masked entries per step).",
]


# ---------------------------------------------------------------------------------------------
# Models: each is (module, z_and_logdet(x_flat), inverse(z) -> x_flat)
# ---------------------------------------------------------------------------------------------


class Candidate:
    """A model under test with a uniform interface over FrEIA's and our protocol."""

    def __init__(
        self,
        name: str,
        description: str,
        module: nn.Module,
        forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        inverse: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.name = name
        self.description = description
        self.module = module
        self.forward = forward
        self.inverse = inverse

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.forward(x.reshape(x.shape[0], NUM_DIMS))
        return standard_normal_log_prob(z) + logdet

    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def freia_subnet(hidden: int) -> Callable[[int, int], nn.Module]:
    def make(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, c_out))

    return make


def build_freia(steps: int, hidden: int, seed: int) -> Candidate:
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    torch.manual_seed(seed)
    np.random.seed(seed)  # AllInOneBlock draws its hard permutation from NumPy's global RNG
    inn = Ff.SequenceINN(NUM_DIMS)
    for _ in range(steps):
        inn.append(
            Fm.AllInOneBlock,
            subnet_constructor=freia_subnet(hidden),
            affine_clamping=2.0,
            permute_soft=False,
        )

    def inverse(z: torch.Tensor) -> torch.Tensor:
        return inn(z, rev=True)[0]

    desc = f"FrEIA SequenceINN, {steps} x AllInOneBlock, Linear-ReLU-Linear {hidden}"
    return Candidate("freia", desc, inn, inn, inverse)


def build_ours(name: str, config: GlowConfig, seed: int, fused: bool = True) -> Candidate:
    torch.manual_seed(seed)
    model = Glow(config)
    if not fused:
        model.flow = model.flow.to_layers()  # the same values, evaluated layer by layer

    def inverse(z: torch.Tensor) -> torch.Tensor:
        return model.inverse(z)[0].reshape(z.shape[0], NUM_DIMS)

    desc = (
        f"ours Glow flat, {config.steps} steps, permutation={config.permutation}, "
        f"scale_fn={config.scale_fn}, Linear-ReLU-Linear {config.hidden}, "
        + ("fused (common/fused.py)" if fused else "layer by layer")
    )
    return Candidate(name, desc, model, model, inverse)


def ours_configs(steps: int, hidden: int) -> dict[str, tuple[GlowConfig, bool]]:
    """Our candidates: name -> (config, fused)."""
    common = dict(architecture="flat", steps=steps, hidden=hidden, subnet_layers=1)
    default = GlowConfig(**common, permutation="shuffle", scale_fn="sigmoid")
    return {
        "ours": (default, True),
        "ours-unfused": (default, False),
        "ours-glow": (GlowConfig(**common, permutation="invconv_lu", scale_fn="sigmoid"), True),
    }


# ---------------------------------------------------------------------------------------------
# Training side by side
# ---------------------------------------------------------------------------------------------


def make_optimizer(module: nn.Module, lr: float, impl: str) -> torch.optim.Optimizer:
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr, **flags[impl])


def build_candidates(args: argparse.Namespace, seed: int) -> list[Candidate]:
    candidates = [build_freia(args.steps, args.hidden, seed)]
    for name, (config, fused) in ours_configs(args.steps, args.hidden).items():
        candidates.append(build_ours(name, config, seed, fused))
    return candidates


def run_once(args: argparse.Namespace, seed: int) -> dict[str, dict]:
    """Train every candidate for ``args.epochs`` on identical batches; return per-model results."""
    data = load_digits_split(seed=args.data_seed)
    candidates = build_candidates(args, seed)
    optimizers = [make_optimizer(c.module, args.lr, args.adam) for c in candidates]
    results = {
        c.name: {"cpu_ms_per_sample": [], "wall_ms_per_sample": [], "cpu_s": 0.0, "wall_s": 0.0}
        for c in candidates
    }

    # Our data-dependent ActNorm init (Glow sec. 3.1) is part of our training time.
    init_x = next(train_batches(data.train, args.init_batch, epoch=0, seed=seed))[1]
    for cand in candidates:
        if isinstance(cand.module, Glow):
            c0, w0 = time.thread_time(), time.perf_counter()
            cand.module.initialize(init_x)
            results[cand.name]["cpu_s"] += time.thread_time() - c0
            results[cand.name]["wall_s"] += time.perf_counter() - w0

    step = 0
    for epoch in range(args.epochs):
        for _, x in train_batches(data.train, args.batch_size, epoch, seed):
            x = x.reshape(x.shape[0], NUM_DIMS)
            order = list(range(len(candidates)))
            order = order[step % len(order) :] + order[: step % len(order)]
            for i in order:
                cand, opt = candidates[i], optimizers[i]
                w0, c0 = time.perf_counter(), time.thread_time()
                opt.zero_grad(set_to_none=True)
                loss = -cand.log_prob(x).mean() / NUM_DIMS
                loss.backward()
                opt.step()
                cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f"{cand.name}: non-finite loss at step {step}")
                r = results[cand.name]
                r["cpu_ms_per_sample"].append(1e3 * cpu / x.shape[0])
                r["wall_ms_per_sample"].append(1e3 * wall / x.shape[0])
                r["cpu_s"] += cpu
                r["wall_s"] += wall
            step += 1

    test = fixed_dequantized(data.test, seed=args.data_seed).reshape(-1, NUM_DIMS)
    for cand in candidates:
        cand.module.eval()
        r = results[cand.name]
        r["test_bpd"] = evaluate_bits_per_dim(cand.log_prob, test)
        with torch.no_grad():
            z, _ = cand.forward(test)
            r["roundtrip_max_abs"] = (cand.inverse(z) - test).abs().max().item()
        r["params"] = cand.num_params()
        r["description"] = cand.description
        r["samples"] = args.epochs * len(data.train)
    return results


def _paired(runs: list[dict[str, dict]], name: str, key: str) -> float:
    ref = [t for run in runs for t in run["freia"][key]]
    mine = [t for run in runs for t in run[name][key]]
    return statistics.median(a / b for a, b in zip(ref, mine, strict=True))


def summarise(runs: list[dict[str, dict]]) -> dict[str, dict]:
    names = list(runs[0])
    summary: dict[str, dict] = {}
    for name in names:
        bpd = [run[name]["test_bpd"] for run in runs]
        samples = sum(run[name]["samples"] for run in runs)
        entry: dict = {
            "description": runs[0][name]["description"],
            "params": runs[0][name]["params"],
        }
        for clock in ("cpu", "wall"):
            steps = [t for run in runs for t in run[name][f"{clock}_ms_per_sample"]]
            total_s = sum(run[name][f"{clock}_s"] for run in runs)
            entry[f"{clock}_ms_per_sample_median"] = statistics.median(steps)
            entry[f"{clock}_ms_per_sample_mean"] = 1e3 * total_s / samples
        entry.update(
            test_bpd=bpd,
            test_bpd_mean=statistics.fmean(bpd),
            test_bpd_std=statistics.stdev(bpd) if len(bpd) > 1 else 0.0,
            roundtrip_max_abs=max(run[name]["roundtrip_max_abs"] for run in runs),
        )
        summary[name] = entry
    for name in names:
        s = summary[name]
        for clock in ("cpu", "wall"):
            key = f"{clock}_ms_per_sample_median"
            s[f"{clock}_speedup_vs_freia"] = summary["freia"][key] / s[key]
            s[f"{clock}_speedup_vs_freia_paired"] = _paired(runs, name, f"{clock}_ms_per_sample")
    return summary


def table(summary: dict[str, dict]) -> str:
    head = (
        f"{'model':<14}{'params':>10}{'CPU ms/sample':>15}{'(mean)':>8}{'speed-up':>10}"
        f"{'(paired)':>10}{'wall ms/sample':>16}{'speed-up':>10}"
        f"{'test bits/dim':>18}{'round trip':>12}"
    )
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        bpd = f"{s['test_bpd_mean']:.3f} +- {s['test_bpd_std']:.3f}"
        lines.append(
            f"{name:<14}{s['params']:>10,}{s['cpu_ms_per_sample_median']:>15.3f}"
            f"{s['cpu_ms_per_sample_mean']:>8.3f}{s['cpu_speedup_vs_freia']:>9.2f}x"
            f"{s['cpu_speedup_vs_freia_paired']:>9.2f}x"
            f"{s['wall_ms_per_sample_median']:>16.3f}{s['wall_speedup_vs_freia_paired']:>9.2f}x"
            f"{bpd:>18}{s['roundtrip_max_abs']:>12.1e}"
        )
    return "\n".join(lines)


def profile_models(args: argparse.Namespace) -> dict[str, dict]:
    """``--profile N``: torch.profiler over N training steps of each model (after 5 warm-up
    steps), on the first batches of epoch 0; prints operator counts and the top operators."""
    from torch.profiler import ProfilerActivity, profile

    data = load_digits_split(seed=args.data_seed)
    batches = [
        x.reshape(x.shape[0], NUM_DIMS)
        for _, x in train_batches(data.train, args.batch_size, epoch=0, seed=args.seed)
    ]
    init_x = next(train_batches(data.train, args.init_batch, epoch=0, seed=args.seed))[1]
    out: dict[str, dict] = {}
    for cand in build_candidates(args, args.seed):
        if isinstance(cand.module, Glow):
            cand.module.initialize(init_x)
        opt = make_optimizer(cand.module, args.lr, args.adam)

        def train_step(x: torch.Tensor, cand: Candidate = cand, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            (-cand.log_prob(x).mean() / NUM_DIMS).backward()
            opt.step()

        for i in range(5):
            train_step(batches[i % len(batches)])
        c0 = time.thread_time()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(args.profile):
                train_step(batches[i % len(batches)])
        cpu = (time.thread_time() - c0) / args.profile
        events = prof.key_averages()
        aten = [e for e in events if e.key.startswith("aten::")]
        nodes = [e for e in events if e.key.startswith("autograd::engine::evaluate_function")]
        out[cand.name] = {
            "aten_ops_per_step": sum(e.count for e in aten) / args.profile,
            "autograd_nodes_per_step": sum(e.count for e in nodes) / args.profile,
            "profiled_cpu_ms_per_step": 1e3 * cpu,
        }
        print(
            f"{cand.name}: {out[cand.name]['aten_ops_per_step']:.0f} aten ops and "
            f"{out[cand.name]['autograd_nodes_per_step']:.0f} autograd nodes per training step "
            f"(profiled: {1e3 * cpu:.2f} ms CPU per step)"
        )
        if args.profile_rows:
            print(events.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--epochs", type=int, default=5, help="Training epochs per model.")
    p.add_argument("--batch-size", type=int, default=32, help="Batch size.")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate.")
    p.add_argument("--steps", type=int, default=8, help="Flow steps / AllInOneBlocks.")
    p.add_argument("--hidden", type=int, default=512, help="Subnet hidden units.")
    p.add_argument("--repeats", type=int, default=3, help="Runs with seeds seed, seed+1, ...")
    p.add_argument("--seed", type=int, default=0, help="First seed (init and batch order).")
    p.add_argument("--data-seed", type=int, default=0, help="Seed of the train/test split.")
    p.add_argument("--init-batch", type=int, default=256, help="ActNorm init batch (ours).")
    p.add_argument(
        "--adam",
        choices=("fused", "foreach", "forloop"),
        default="fused",
        help="Adam implementation, the same for every model.",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (same for all models; 1 is fastest for these tiny "
        "matrices and robust on a shared machine).",
    )
    p.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="Instead of training: profile N training steps of each model with "
        "torch.profiler (1 thread) and print operator counts and the top operators.",
    )
    p.add_argument(
        "--profile-rows",
        type=int,
        default=15,
        help="Operators listed per model by --profile (0: none).",
    )
    p.add_argument(
        "--model",
        choices=("glow", "irn"),
        default="glow",
        help="glow: this comparison on the digits; irn: our IRN against the dissertation's "
        "FrEIA IRN (bench/compare_freia_irn.py, which takes its own flags).",
    )
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "steps", "hidden", "repeats", "init_batch", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.profile < 0:
        p.error(f"--profile must be >= 0, got {args.profile}")
    return args


def write_json(path: Path, payload: dict) -> None:
    atomic_write_json(path, payload)


def pop_model(argv: list[str]) -> tuple[str, list[str]]:
    """``--model glow|irn`` (or ``--model=...``) taken out of ``argv``; the default is glow."""
    model, rest, i = "glow", [], 0
    while i < len(argv):
        if argv[i] == "--model" and i + 1 < len(argv):
            model, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--model="):
            model = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    if model not in ("glow", "irn"):
        raise SystemExit(f"compare_freia.py: error: --model must be glow or irn, got {model!r}")
    return model, rest


def main(argv: list[str] | None = None) -> dict:
    model, argv = pop_model(list(sys.argv[1:] if argv is None else argv))
    args = parse_args(argv) if model == "glow" else None
    try:
        import FrEIA  # noqa: F401
    except ImportError:
        print(FREIA_MISSING)
        if args is not None and args.json is not None:
            write_json(args.json, {"skipped": FREIA_MISSING})
        return {"skipped": FREIA_MISSING}
    if args is None:
        from bench import compare_freia_irn

        return compare_freia_irn.main(argv)

    torch.set_num_threads(args.threads)
    if args.profile:
        return {"profile": profile_models(args)}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print(
        f"training {args.repeats} x {args.epochs} epochs, batch {args.batch_size}, Adam "
        f"lr {args.lr} ({args.adam}), {args.threads} thread(s), models interleaved per step"
    )
    runs = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        runs.append(run_once(args, seed=args.seed + r))
        bpd = ", ".join(f"{k} {v['test_bpd']:.3f}" for k, v in runs[-1].items())
        print(f"  seed {args.seed + r}: test bits/dim {bpd} ({time.perf_counter() - t0:.1f} s)")
    summary = summarise(runs)
    print()
    print(table(summary))
    print()
    for name, s in summary.items():
        print(f"{name}: {s['description']}")
    print("Differences between the architectures:")
    for line in DIFFERENCES:
        print(f"  - {line}")
    payload = {
        "settings": settings,
        "versions": {
            "torch": torch.__version__,
            "FrEIA": importlib.metadata.version("FrEIA"),
            "python": sys.version.split()[0],
        },
        "ours_configs": {
            k: {**asdict(cfg), "fused": fused}
            for k, (cfg, fused) in ours_configs(args.steps, args.hidden).items()
        },
        "models": summary,
        "differences": DIFFERENCES,
    }
    if args.json is not None:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    return payload


if __name__ == "__main__":
    main()
