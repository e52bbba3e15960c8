"""The 8x8 digits ("MNIST8", Diss. sec. 3.2.2): fixed split, uniform dequantisation, bits/dim.

scikit-learn ships the UCI optical-digits set as ``load_digits``: 1797 grey images of 8x8 pixels
with integer values 0..16 (17 levels). After a seeded shuffle the first 1617 images are the
training set and the remaining 180 the test set, as in the dissertation.

Dequantisation (Glow sec. 2, eq. 2; Theis et al. 2016): a flow models a *continuous* density, so
each integer value ``v`` becomes ``x = (v + u) / 17`` with ``u ~ U[0, 1)``, which lies in
``[0, 1)``. The log-likelihood of the discrete data is then bounded below by that of ``x`` minus
the volume change of the ``1/17`` scaling, which gives the reported bits per dimension::

    bpd = (NLL_nats(x) + D * log 17) / (D * log 2),      D = 64

(docs/method.md sec. 9.3; Glow eq. 2 with ``a = 1/17``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "IMAGE_SHAPE",
    "NUM_DIMS",
    "NUM_LEVELS",
    "TEST_SIZE",
    "TRAIN_SIZE",
    "DigitsSplit",
    "bits_per_dim",
    "dequantize",
    "derived_seed",
    "epoch_permutation",
    "evaluate_bits_per_dim",
    "fixed_dequantized",
    "load_digits_split",
    "num_batches",
    "train_batches",
]

NUM_LEVELS = 17  # pixel values 0..16
IMAGE_SHAPE = (1, 8, 8)
NUM_DIMS = 64
TRAIN_SIZE = 1617
TEST_SIZE = 180


@dataclass(frozen=True)
class DigitsSplit:
    """Train/test digits as float tensors of integer values ``0..16``, shape ``[N, 1, 8, 8]``.

    ``train_index``/``test_index`` are the rows of ``sklearn.datasets.load_digits()`` that each
    image came from (disjoint, together a permutation of ``0..1796``).
    """

    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    train_index: torch.Tensor
    test_index: torch.Tensor


def load_digits_split(seed: int = 0) -> DigitsSplit:
    """Load the 1797 digits, shuffle them with ``seed`` (fixed: same seed, same split), and split
    1617 train / 180 test.

    The shuffle uses NumPy's ``default_rng(seed)`` permutation, so it does not depend on (or
    disturb) torch's global RNG.
    """
    from sklearn.datasets import load_digits  # scikit-learn ships the data; no download

    digits = load_digits()
    values = np.asarray(digits.data, dtype=np.float32)
    labels = np.asarray(digits.target, dtype=np.int64)
    if values.shape != (TRAIN_SIZE + TEST_SIZE, NUM_DIMS):
        raise RuntimeError(f"unexpected load_digits data shape {values.shape}")
    if values.min() < 0 or values.max() > NUM_LEVELS - 1:
        raise RuntimeError("load_digits values are outside 0..16")
    order = np.random.default_rng(seed).permutation(len(values))
    train_idx, test_idx = order[:TRAIN_SIZE], order[TRAIN_SIZE:]
    images = torch.from_numpy(values).reshape(-1, *IMAGE_SHAPE)
    targets = torch.from_numpy(labels)
    train_index = torch.from_numpy(train_idx.astype(np.int64))
    test_index = torch.from_numpy(test_idx.astype(np.int64))
    return DigitsSplit(
        train=images[train_index].clone(),
        test=images[test_index].clone(),
        train_labels=targets[train_index].clone(),
        test_labels=targets[test_index].clone(),
        train_index=train_index,
        test_index=test_index,
    )


def dequantize(values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x = (v + u) / 17`` with ``u ~ U[0, 1)`` drawn from ``generator``; ``x`` in ``[0, 1)``.

    The noise is drawn on the CPU (so a CPU generator gives the same numbers for every device)
    and then moved to ``values``' device.
    """
    noise = torch.rand(values.shape, generator=generator, dtype=values.dtype)
    return (values + noise.to(values.device)) / NUM_LEVELS


def derived_seed(*keys: int) -> int:
    """A 64-bit seed that is a pure function of ``keys`` (NumPy's ``SeedSequence`` hashing)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)
    return int(state[0])


def epoch_permutation(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n`` training examples.

    A pure function of ``(seed, epoch)``: a run resumed in the middle of an epoch sees exactly
    the batches an uninterrupted run would, without storing any generator state.
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, 0, epoch)))


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch; the last one may be smaller (no example is dropped)."""
    return -(-n // batch_size)


def train_batches(
    values: torch.Tensor, batch_size: int, epoch: int, seed: int, start: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(batch_index, x)`` for epoch ``epoch``, from batch ``start`` on.

    ``x`` is a dequantised batch of ``values`` in the order of :func:`epoch_permutation`, with
    noise from a generator seeded by ``(seed, epoch, batch_index)``: every batch is a pure
    function of its coordinates, so resuming mid-epoch reproduces the uninterrupted run, and
    several models trained side by side (``bench/compare_freia.py``) see identical batches.
    """
    order = epoch_permutation(len(values), epoch, seed)
    for index in range(start, num_batches(len(values), batch_size)):
        rows = order[index * batch_size : (index + 1) * batch_size]
        gen = torch.Generator().manual_seed(derived_seed(seed, 1, epoch, index))
        yield index, dequantize(values[rows], gen)


def fixed_dequantized(values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``values`` dequantised once with noise seeded by ``seed``: a fixed evaluation set, so that
    test bits/dim are comparable between epochs, runs and models."""
    return dequantize(values, torch.Generator().manual_seed(derived_seed(seed, 2)))


@torch.no_grad()
def evaluate_bits_per_dim(
    log_prob: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 500
) -> float:
    """Mean bits/dim of the images ``x`` (already dequantised) under ``log_prob`` (nats, ``[B]``).

    The mean is over images of the per-image bits/dim, i.e. ``bits_per_dim(mean log_prob)``.
    """
    total = 0.0
    for start in range(0, len(x), batch_size):
        total += log_prob(x[start : start + batch_size]).double().sum().item()
    return float(bits_per_dim(total / len(x), num_dims=x[0].numel()))


def bits_per_dim(
    log_prob_nats: torch.Tensor | float, num_dims: int = NUM_DIMS, num_levels: int = NUM_LEVELS
) -> torch.Tensor | float:
    """Bits per dimension of the discrete data from the log-density of ``x = (v + u) / 17``.

    ``bpd = (-log_prob_nats + num_dims * log(num_levels)) / (num_dims * log 2)``
    (docs/method.md sec. 9.3),
    elementwise for a tensor of per-image log-likelihoods in nats. A uniform density on
    ``[0, 1]^64`` (log_prob 0) gives ``log2(17)`` bits/dim.
    """
    return (-log_prob_nats + num_dims * math.log(num_levels)) / (num_dims * math.log(2.0))
