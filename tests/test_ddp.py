"""DDP training (train_irn.py under torchrun): 2 CPU processes (gloo) equal 1 process.

Two processes are spawned with the environment torchrun would give them (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT); each runs ``train_irn.main`` for 2 iterations (global batch 4,
2 images per rank), then resumes from the checkpoint rank 0 wrote (``--resume auto``, read by
rank 0 and broadcast) for 2 more. Checked:

* the parameters of both ranks are bit-identical after every run;
* they equal a single-process run of 4 iterations with the same global batch: max |difference|
  <= 1e-6 (measured ~1e-8: the two half-batch gradients are averaged by all-reduce instead of
  summed in one pass, a float32 round-off difference), losses to a relative 1e-5;
* only rank 0 logs (rank 1 prints nothing) and writes TensorBoard files;
* the sampled z: each rank keeps its rows of the global batch's draw (``StepNoise.rows``).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from tests_support import tiny_images

import train_irn

TINY = ["--blocks-per-level", "1", "--gc", "4", "--batch-size", "4", "--patch-size", "16"]
TINY += ["--val-every", "100", "--save-every", "2", "--threads", "1"]
RUNS = (["--iters", "2"], ["--iters", "4", "--resume", "auto"])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, ports: list[int], argv: list[str], out: str) -> None:
    """One torchrun-like process: 2 iterations, then resume to 4; saves its parameters."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    out_dir = Path(out)
    with open(out_dir / f"stdout_rank{rank}.txt", "w") as log:
        sys.stdout = log
        results = []
        for port, extra in zip(ports, RUNS, strict=True):
            os.environ["MASTER_PORT"] = str(port)
            res = train_irn.main([*argv, *extra])
            state = {k: v.clone() for k, v in res["model"].state_dict().items()}
            results.append({"history": res["history"], "state": state, "world": res["world_size"]})
        sys.stdout = sys.__stdout__
    torch.save(results, out_dir / f"rank{rank}.pt")


def test_step_noise_rows_are_this_ranks_rows_of_the_global_draw():
    """One draw per step for the global batch; a rank (or micro-batch) keeps its rows."""
    cfg = train_irn.IRNTrainConfig(jpeg_quality_range=(10, 90))
    noise = train_irn.draw_noise(
        (4, 2, 3, 3), cfg, torch.Generator().manual_seed(3), np.random.default_rng(1),
        torch.device("cpu"),
    )  # fmt: skip
    full = torch.randn((4, 2, 3, 3), generator=torch.Generator().manual_seed(3))
    qualities = [int(q) for q in np.random.default_rng(1).integers(10, 91, size=4)]
    part = noise.rows(slice(2, 4))
    assert torch.equal(part.z, full[2:]) and part.qualities == qualities[2:]


@pytest.mark.parametrize(
    "extra",
    [[], ["--micro-batch", "1"], ["--init-weights"], ["--multiscale", "--split-prior", "learned"]],
    ids=["whole", "micro-batch", "init-weights", "multiscale"],
)
def test_two_processes_equal_one_and_resume(tmp_path, extra):
    """With ``--micro-batch 1`` each rank accumulates its 2 rows in 2 chunks (the first under
    ``no_sync``): still the single-process, unchunked run. With ``--init-weights`` (read by rank
    0 and broadcast) both runs fine-tune the same 1-iteration checkpoint."""
    train_dir, _ = tiny_images(tmp_path)
    model_flags = extra if "--multiscale" in extra else []  # the single run's architecture
    init: list[str] = []  # the single-process run is unchunked, with the same initial weights
    if extra == ["--init-weights"]:
        train_irn.main(
            [*TINY, "--data", str(train_dir), "--out", str(tmp_path / "pre"), "--iters", "1"]
        )
        extra = init = ["--init-weights", str(tmp_path / "pre" / "last.pt")]
    argv = [*TINY, *extra, "--data", str(train_dir), "--out", str(tmp_path / "ddp")]
    ctx = mp.get_context("spawn")
    ports = [_free_port(), _free_port()]
    procs = [
        ctx.Process(target=_worker, args=(r, 2, ports, argv, str(tmp_path)), daemon=False)
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    codes = [p.exitcode for p in procs]
    if any(c is None for c in codes):
        for p in procs:
            p.kill()
    assert codes == [0, 0], codes

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for run in range(2):
        assert ranks[0][run]["world"] == 2
        s0, s1 = ranks[0][run]["state"], ranks[1][run]["state"]
        assert all(torch.equal(s0[k], s1[k]) for k in s0), "ranks diverged"
        assert ranks[0][run]["history"] == ranks[1][run]["history"]  # global losses everywhere

    one = ["--data", str(train_dir), "--out", str(tmp_path / "one"), "--iters", "4"]
    single = train_irn.main([*TINY, *init, *model_flags, *one])
    assert single["world_size"] == 1
    ref = single["model"].state_dict()
    ddp = ranks[0][1]["state"]
    diff = max((ref[k] - ddp[k]).abs().max().item() for k in ref)
    print(f"max |param difference| 2 processes vs 1: {diff:.2e}")
    assert diff <= 1e-6
    ddp_hist = ranks[0][0]["history"] + ranks[0][1]["history"]
    assert len(ddp_hist) == 4
    for a, b in zip(single["history"], ddp_hist, strict=True):
        assert b["total"] == pytest.approx(a["total"], rel=1e-5)
        assert b["guide"] == pytest.approx(a["guide"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)

    out0 = (tmp_path / "stdout_rank0.txt").read_text()
    out1 = (tmp_path / "stdout_rank1.txt").read_text()
    assert "2 process(es)" in out0 and "Resumed from" in out0
    assert ("Fine-tuning weights after 1 iterations" in out0) == ("--init-weights" in extra)
    assert out1 == ""
    ckpt = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4
    events = list((tmp_path / "ddp" / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 2  # rank 0's two runs only
