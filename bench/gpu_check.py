"""Everything worth knowing from ten minutes on a CUDA machine, in one command.

    python bench/gpu_check.py runs_gpu/check1                  # on the GPU machine (<= 8 min)
    python bench/gpu_check.py --device cpu --quick runs/gpu_check_quick   # the same, toy size

Writes ``OUT/report.json`` (rewritten after every section, so an interrupted check keeps what
it measured) and ``OUT/gpu_check.log`` (every command and its output). Sections, each timed,
each run whatever happened to the others (a failure is reported with its message):

* ``environment``: GPU name, count, memory and capability, torch, CUDA, cuDNN, Python;
* ``tests``: the device-parametrised tests (``tests/test_devices.py``) on the device, pytest in a
  subprocess (``cuda`` also runs the two-GPU DDP test when two GPUs exist);
* ``bench_irn``: ``bench/bench_irn.py`` at batch 16 / patch 144 (x4, the authors' width) for
  baseline, fp32, amp, memsave, amp+memsave, nchw (channels-last off) and compile, each in a
  fresh process: median step time and peak memory (``torch.cuda.max_memory_allocated``);
* ``train_amp`` / ``train_fp32``: 300 iterations of ``train_irn.py`` with ``--amp`` (fp16 + the
  gradient scaler) and in float32 on the sample photos at batch 16 / patch 144: PSNR-Y of the
  validation at 300, iterations per second, scaler skips;
* ``evaluate_4k``: ``evaluate.py --amp --tile auto`` of a generated 3840x2160 image with the
  ``train_amp`` checkpoint: time and peak memory.

``--quick`` runs the same sections at toy size (tiny model, a few iterations, a 480x272 image,
no ``torch.compile``) so CI can run the script on the CPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.images import save_image  # noqa: E402

SECTIONS = ("environment", "tests", "bench_irn", "train_amp", "train_fp32", "evaluate_4k")
BENCH_CONFIGS = "baseline,fp32,amp,memsave,amp+memsave,nchw,compile"
QUICK_BENCH_CONFIGS = "amp+memsave"
TINY_MODEL = ["--blocks-per-level", "1", "--gc", "4"]
# Seconds a section may take before it is reported as timed out: 7.5 minutes in all at worst.
CAPS = {"tests": 90, "bench_irn": 150, "train_amp": 75, "train_fp32": 75, "evaluate_4k": 60}


@dataclass
class Check:
    """One run of the check: where it writes, what it runs on, and the report so far."""

    out: Path
    device: str
    quick: bool
    threads: int | None
    log: IO[str]
    report: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
        line = f"[{stamp}] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def save(self) -> None:
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2))


def sizes(check: Check) -> dict[str, Any]:
    """Batch, patch, iterations, image size and model flags: the real ones or the toy ones."""
    if check.quick:
        return {"batch": 2, "patch": 32, "iters": 4, "image": (272, 480), "model": TINY_MODEL,
                "bench_model": ["--blocks", "1", "--gc", "4"], "tile": "128"}  # fmt: skip
    return {"batch": 16, "patch": 144, "iters": 300, "image": (2160, 3840), "model": [],
            "bench_model": [], "tile": "auto"}  # fmt: skip


def threads_flag(check: Check) -> list[str]:
    return [] if check.threads is None else ["--threads", str(check.threads)]


def run_command(check: Check, cmd: list[str], timeout: float) -> tuple[str, str]:
    """Run ``cmd`` from the repository root; its output goes to the log and is returned as
    ``(stdout, stderr)``. A non-zero exit or the timeout raises ``RuntimeError`` with the
    output's tail."""
    check.say("$ " + " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        res = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired as err:
        text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout
        check.log.write((text or "") + "\n")
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    check.log.write(res.stdout + res.stderr + "\n")
    check.log.flush()
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"exit code {res.returncode}: " + " | ".join(tail))
    return res.stdout, res.stderr


def run_section(check: Check, name: str, fn: Callable[[Check], dict]) -> None:
    """Time ``fn``, record its result or its error under ``name``, save the report."""
    check.say(f"== {name}")
    start = time.perf_counter()
    try:
        entry = {"ok": True, "result": fn(check)}
    except Exception as err:  # a failing section must not stop the others
        entry = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    entry["seconds"] = round(time.perf_counter() - start, 2)
    check.report["sections"][name] = entry
    check.say(f"== {name}: {'ok' if entry['ok'] else 'FAILED ' + entry['error']}"
              f" ({entry['seconds']} s)")  # fmt: skip
    check.save()


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def environment(check: Check) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
    }
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        env["gpus"].append(
            {
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 2),
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
            }
        )
    if check.device.startswith("cuda") and not env["gpus"]:
        raise RuntimeError("--device cuda but torch sees no CUDA device")
    return env


def tests(check: Check) -> dict[str, Any]:
    """The device-parametrised tests on the checked device, in a pytest subprocess."""
    kind = torch.device(check.device).type
    select = f"{kind} and tiled" if check.quick else kind
    if kind == "cuda":
        select = "cuda or two_gpus"
    xml = check.out / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", select]
    cmd += ["--junitxml", str(xml), "tests/test_devices.py"]
    try:
        run_command(check, cmd, timeout=CAPS["tests"])
    finally:  # the counts, also when a test failed
        counts = junit_counts(xml)
    return {"selection": select, **counts}


def junit_counts(xml: Path) -> dict[str, Any]:
    """Tests, failures, errors and skips of a pytest ``--junitxml`` file, with failed names."""
    import xml.etree.ElementTree as ET

    if not xml.is_file():
        return {}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failed = [
        case.get("name")
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    keys = ("tests", "failures", "errors", "skipped")
    return {**{k: int(suite.get(k, 0)) for k in keys}, "failed": failed}


def bench_irn(check: Check) -> dict[str, Any]:
    """``bench/bench_irn.py``: every configuration in its own process (step time, peak)."""
    s = sizes(check)
    out = check.out / "bench_irn.json"
    configs = QUICK_BENCH_CONFIGS if check.quick else BENCH_CONFIGS
    cmd = [sys.executable, "bench/bench_irn.py", "--device", check.device, "--configs", configs,
           "--batch-size", str(s["batch"]), "--patch-size", str(s["patch"]), *s["bench_model"],
           "--amp-dtype", "fp16", "--warmup", "2", "--memory-steps", "1" if check.quick else "5",
           "--skip-speed", "--skip-flops", "--json", str(out), *threads_flag(check)]  # fmt: skip
    run_command(check, cmd, timeout=CAPS["bench_irn"])
    data = json.loads(out.read_text())
    rows = {}
    for name, mem in data["memory"].items():
        rows[name] = {
            "step_s": mem["step_s"],
            "peak_mib": round(mem["peak_mib"], 1),
            "peak_kind": mem["peak_kind"],
            "precision": mem.get("precision"),
        }
    return {"batch": s["batch"], "patch": s["patch"], "configs": rows}


_VAL = re.compile(r"\[val (\d+)\] PSNR-Y ([-\d.]+) dB")
_RATE = re.compile(r"([\d.]+) it/s")
_SKIPS = re.compile(r"skipped (\d+) step")


def train(check: Check, amp: bool) -> dict[str, Any]:
    """``train_irn.py`` on the sample photos: PSNR-Y of the last validation, iterations/s."""
    s = sizes(check)
    name = "train_amp" if amp else "train_fp32"
    cmd = [sys.executable, "train_irn.py", *s["model"], "--device", check.device,
           "--batch-size", str(s["batch"]), "--patch-size", str(s["patch"]),
           "--iters", str(s["iters"]), "--val-every", str(s["iters"]),
           "--log-every", str(max(1, s["iters"] // 6)), "--save-every", str(s["iters"]),
           "--no-tensorboard", "--overwrite", "--out", str(check.out / name),
           *threads_flag(check)]  # fmt: skip
    if amp:
        cmd += ["--amp", "--amp-dtype", "fp16"]
    if check.quick:  # a small validation image instead of the two sample photos
        save_image(check.out / "val_tiny" / "v.png", synthetic_image((96, 128), seed=1))
        cmd += ["--val-data", str(check.out / "val_tiny")]
    start = time.perf_counter()
    out, err = run_command(check, cmd, timeout=CAPS[name])
    wall = time.perf_counter() - start
    text = out + err
    vals = _VAL.findall(text)
    rates = _RATE.findall(text)
    skips = _SKIPS.findall(text)
    return {
        "precision": out.splitlines()[0] if out else None,
        "iters": s["iters"],
        "batch": s["batch"],
        "patch": s["patch"],
        "psnr_y": float(vals[-1][1]) if vals else None,
        "psnr_y_at": int(vals[-1][0]) if vals else None,
        "iters_per_s": float(rates[-1]) if rates else None,
        "wall_s": round(wall, 2),
        "scaler_skipped": int(skips[-1]) if skips else 0,
    }


def synthetic_image(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A photo-like test image: smooth random colour fields plus a little noise, uint8."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, hw[0] // 64 + 2, hw[1] // 64 + 2, generator=gen)
    img = torch.nn.functional.interpolate(coarse, size=hw, mode="bicubic", align_corners=False)
    img = img + 0.04 * torch.rand(1, 3, *hw, generator=gen)
    return (img.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def evaluate_4k(check: Check) -> dict[str, Any]:
    """Tiled ``evaluate.py --amp`` of a generated image with the ``train_amp`` checkpoint."""
    s = sizes(check)
    ckpt = check.out / "train_amp" / "last.pt"
    if not ckpt.is_file():
        raise RuntimeError(f"{ckpt} missing (the train_amp section failed)")
    folder = check.out / "eval_image"
    save_image(folder / "synthetic.png", synthetic_image(s["image"]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--eval-worker", "--",
           "--checkpoint", str(ckpt), "--data", str(folder), "--tile", s["tile"],
           "--amp", "--amp-dtype", "fp16", "--draws", "1", "--device", check.device,
           "--json", str(check.out / "evaluate_4k.json"), *threads_flag(check)]  # fmt: skip
    text, _ = run_command(check, cmd, timeout=CAPS["evaluate_4k"])
    worker = json.loads(text.strip().splitlines()[-1])
    return {"image": f"{s['image'][1]}x{s['image'][0]}", "tile": s["tile"], **worker}


def eval_worker(argv: list[str]) -> int:
    """Run ``evaluate.main(argv)`` here and print its time and peak memory as a JSON line."""
    import evaluate

    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    status = evaluate.main(argv)
    seconds = time.perf_counter() - start
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"
    print(json.dumps({"seconds": round(seconds, 2), "peak_mib": round(peak, 1),
                      "peak_kind": kind, "status": status}))  # fmt: skip
    return int(status or 0)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Check], dict]] = {
    "environment": environment,
    "tests": tests,
    "bench_irn": bench_irn,
    "train_amp": lambda check: train(check, amp=True),
    "train_fp32": lambda check: train(check, amp=False),
    "evaluate_4k": evaluate_4k,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    p.add_argument("out", type=Path, help="Folder for report.json, gpu_check.log and the runs.")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu.")
    p.add_argument("--quick", action="store_true", help="Toy sizes (CI on the CPU).")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of each run.")
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help="Comma-separated subset to run, in order."
    )
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        p.error(f"--sections: unknown {unknown}; known: {', '.join(SECTIONS)}")
    args.sections = wanted
    try:
        torch.device(args.device)
    except RuntimeError:
        p.error(f"--device: expected cuda, cuda:N or cpu, got {args.device!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the sections; the exit status is 1 if any failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--eval-worker"]:
        return eval_worker(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "gpu_check.log", "w") as log:
        check = Check(args.out, args.device, args.quick, args.threads, log)
        check.report = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": args.device,
            "quick": args.quick,
            "command": " ".join(["python bench/gpu_check.py", *argv]),
            "sections": {},
        }
        start = time.perf_counter()
        for name in args.sections:
            run_section(check, name, RUNNERS[name])
        check.report["total_seconds"] = round(time.perf_counter() - start, 1)
        failed = [n for n, e in check.report["sections"].items() if not e["ok"]]
        check.report["failed"] = failed
        check.save()
        check.say(f"done in {check.report['total_seconds']} s; failed: {failed or 'none'}; "
                  f"report {args.out / 'report.json'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
