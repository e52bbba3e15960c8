"""``bench/gpu_check.py --device cpu --quick`` runs every section (so the GPU check cannot rot
before a GPU is at hand), and a failing section is reported without stopping the others."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def test_quick_check_on_the_cpu_writes_every_section(tmp_path):
    out = tmp_path / "check"
    cmd = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--threads", "1"]
    res = subprocess.run([*cmd, str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads((out / "report.json").read_text())
    assert res.returncode == 0, (report.get("failed"), res.stdout[-2000:])
    sections = report["sections"]
    assert list(sections) == list(gpu_check.SECTIONS) and report["failed"] == []
    assert all(s["ok"] and s["seconds"] >= 0 for s in sections.values())
    assert sections["environment"]["result"]["torch"]
    assert (
        sections["tests"]["result"]["tests"] >= 1 and sections["tests"]["result"]["failed"] == []
    )
    bench = sections["bench_irn"]["result"]["configs"]
    assert set(bench) == set(gpu_check.QUICK_BENCH_CONFIGS.split(","))
    assert all(row["step_s"] > 0 and row["peak_mib"] > 0 for row in bench.values())
    assert "fp16 autocast" in bench["amp+memsave"]["precision"]
    amp, fp32 = sections["train_amp"]["result"], sections["train_fp32"]["result"]
    assert amp["precision"].startswith("Precision: fp16 autocast on cpu")
    assert fp32["precision"].startswith("Precision: float32")
    for run in (amp, fp32):
        assert run["psnr_y_at"] == run["iters"] and run["psnr_y"] > 0 and run["iters_per_s"] > 0
    ev = sections["evaluate_4k"]["result"]
    assert ev["status"] == 0 and ev["seconds"] > 0 and ev["peak_mib"] > 0
    assert (out / "gpu_check.log").read_text().count("$ ") >= 5


def test_a_failing_section_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(check):
        raise RuntimeError("no GPU here")

    monkeypatch.setitem(gpu_check.RUNNERS, "environment", broken)
    monkeypatch.setitem(gpu_check.RUNNERS, "tests", lambda check: {"fine": True})
    status = gpu_check.main([str(tmp_path), "--device", "cpu", "--sections", "environment,tests"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert status == 1 and report["failed"] == ["environment"]
    assert report["sections"]["environment"]["error"] == "RuntimeError: no GPU here"
    assert report["sections"]["tests"] == {
        "ok": True,
        "result": {"fine": True},
        "seconds": report["sections"]["tests"]["seconds"],
    }


def test_bad_flags_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main([str(tmp_path), "--sections", "environment,gpu"])
    assert "--sections: unknown ['gpu']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.main([str(tmp_path), "--device", "tpu"])
    assert "--device" in capsys.readouterr().err
