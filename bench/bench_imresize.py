"""Speed of the banded-matrix bicubic ``imresize`` against a row-by-row loop (one thread).

    python bench/bench_imresize.py                 # DIV2K-sized image, x1/4 and x1/2
    python bench/bench_imresize.py --repeats 20

Both versions apply the same MATLAB-bicubic weights (``common.imresize.resize_weights``); the
row loop applies them one output row, then one output column, at a time. Times are the minimum
of the repeats in CPU time of this thread, so other jobs on a shared machine distort them less;
compare the ratio, not the seconds. The results are in docs/performance.md ("Bicubic imresize").
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.imresize import imresize, resize_weights  # noqa: E402


def naive_rows(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Deliberately naive: the same weights applied one output row (then column) at a time."""
    c, h, w = x.shape
    oh, ow = math.ceil(h * scale), math.ceil(w * scale)
    wh, ih = (torch.from_numpy(a.copy()) for a in resize_weights(h, oh, scale))
    ww, iw = (torch.from_numpy(a.copy()) for a in resize_weights(w, ow, scale))
    wh, ww = wh.to(x.dtype), ww.to(x.dtype)
    tmp = x.new_empty(c, oh, w)
    for i in range(oh):
        tmp[:, i] = (wh[i][None, :, None] * x[:, ih[i]]).sum(1)
    out = x.new_empty(c, oh, ow)
    for j in range(ow):
        out[:, :, j] = (tmp[:, :, iw[j]] * ww[j]).sum(-1)
    return out


def best_time(fn, x: torch.Tensor, scale: float, repeats: int) -> float:
    """The minimum over ``repeats`` calls of this thread's CPU time, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn(x, scale)
        times.append(time.thread_time() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(1356, 2040), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.size) < 8:
        parser.error("--repeats must be >= 1 and --size at least 8 8")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((3, *args.size), dtype=np.float32))
    for scale in (0.25, 0.5):
        assert (imresize(x, scale) - naive_rows(x, scale)).abs().max().item() < 1e-5
        fast = best_time(imresize, x, scale, args.repeats)
        slow = best_time(naive_rows, x, scale, max(1, args.repeats // 2))
        print(f"x{scale}: vectorised {fast:.4f} s, row loop {slow:.4f} s ({slow / fast:.1f}x)")


if __name__ == "__main__":
    main()
