"""Tests for glow/data.py (fixed digits split, dequantisation, bits/dim) and glow/fid.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glow.data import (
    NUM_LEVELS,
    TEST_SIZE,
    TRAIN_SIZE,
    bits_per_dim,
    dequantize,
    epoch_permutation,
    evaluate_bits_per_dim,
    fixed_dequantized,
    load_digits_split,
    num_batches,
    train_batches,
)
from glow.fid import (
    digits_frechet_distance,
    feature_statistics,
    frechet_distance,
    load_or_train_classifier,
)


def test_split_sizes_shapes_and_disjointness():
    data = load_digits_split(seed=0)
    assert data.train.shape == (TRAIN_SIZE, 1, 8, 8) == (1617, 1, 8, 8)
    assert data.test.shape == (TEST_SIZE, 1, 8, 8) == (180, 1, 8, 8)
    assert data.train_labels.shape == (1617,) and data.test_labels.shape == (180,)
    train, test = set(data.train_index.tolist()), set(data.test_index.tolist())
    assert not train & test
    assert train | test == set(range(1797))
    for images in (data.train, data.test):
        assert images.min() >= 0 and images.max() <= 16
        assert torch.equal(images, images.round())


def test_images_match_sklearn_rows():
    from sklearn.datasets import load_digits

    raw = load_digits()
    data = load_digits_split(seed=0)
    row = int(data.test_index[5])
    assert torch.equal(data.test[5].flatten(), torch.tensor(raw.data[row], dtype=torch.float32))
    assert int(data.test_labels[5]) == int(raw.target[row])


def test_fixed_shuffle_is_reproducible_and_seeded():
    a, b = load_digits_split(seed=0), load_digits_split(seed=0)
    assert torch.equal(a.train_index, b.train_index) and torch.equal(a.train, b.train)
    c = load_digits_split(seed=1)
    assert not torch.equal(a.train_index, c.train_index)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    load_digits_split(seed=3)
    assert torch.equal(torch.rand(1), before)  # the split does not touch torch's global RNG


def test_dequantised_range_and_bins():
    data = load_digits_split()
    x = dequantize(data.train, torch.Generator().manual_seed(0))
    assert x.min() >= 0 and x.max() < 1
    # each value v lands in its own bin [v/17, (v+1)/17)
    assert torch.equal(torch.floor(x * NUM_LEVELS), data.train)
    again = dequantize(data.train, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_bits_per_dim_formula():
    # a uniform density on [0, 1]^64 has log_prob 0 -> log2(17) bits/dim (to the last ulp)
    assert math.isclose(bits_per_dim(0.0), math.log2(17), rel_tol=1e-15, abs_tol=0)
    nll = 100.0
    assert math.isclose(
        bits_per_dim(-nll), (nll + 64 * math.log(17)) / (64 * math.log(2)), rel_tol=1e-15
    )
    lp = torch.tensor([0.0, -64 * math.log(2)], dtype=torch.float64)
    torch.testing.assert_close(
        bits_per_dim(lp), torch.tensor([math.log2(17), math.log2(17) + 1], dtype=torch.float64)
    )
    assert math.isclose(bits_per_dim(0.0, num_dims=4, num_levels=256), 8.0)


def test_epoch_permutation_is_a_pure_function():
    p = epoch_permutation(10, epoch=2, seed=0)
    assert sorted(p.tolist()) == list(range(10))
    assert torch.equal(p, epoch_permutation(10, epoch=2, seed=0))
    assert not torch.equal(p, epoch_permutation(10, epoch=3, seed=0))
    assert not torch.equal(p, epoch_permutation(10, epoch=2, seed=1))


# -- glow/fid.py (FD-digits; kept with the data tests: it is the metric on this data) ----------


@pytest.fixture(scope="module")
def classifier_and_data(tmp_path_factory):
    data = load_digits_split(seed=0)
    cache = tmp_path_factory.mktemp("fd") / "clf.pt"
    clf, acc = load_or_train_classifier(data, cache_path=cache, seed=0)
    return clf, acc, data, cache


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu_a, mu_b = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    var_a, var_b = np.array([1.0, 4.0]), np.array([9.0, 0.25])
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    got = frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert math.isclose(got, expected, rel_tol=1e-12)
    # invariant to a common rotation of both distributions
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(2, 2)))
    cov_a, cov_b = q @ np.diag(var_a) @ q.T, q @ np.diag(var_b) @ q.T
    rotated = frechet_distance(q @ mu_a, cov_a, q @ mu_b, cov_b)
    assert math.isclose(rotated, expected, rel_tol=1e-9)


def test_fd_digits_zero_for_same_set_large_for_noise(classifier_and_data):
    clf, acc, data, _ = classifier_and_data
    assert acc > 0.9  # the feature extractor does recognise digits
    test = dequantize(data.test, torch.Generator().manual_seed(0))
    assert digits_frechet_distance(test, test, clf) < 1e-8
    real = dequantize(data.train[:500], torch.Generator().manual_seed(1))
    noise = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    fd_real = digits_frechet_distance(real, test, clf)
    fd_noise = digits_frechet_distance(noise, test, clf)
    assert fd_noise > 20 * fd_real and fd_noise > 50


def test_classifier_cache_is_reused_and_keyed(classifier_and_data):
    clf, acc, data, cache = classifier_and_data
    assert cache.is_file()
    again, acc2 = load_or_train_classifier(data, cache_path=cache, seed=0)
    assert acc2 == acc
    for p, q in zip(clf.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    ckpt = torch.load(cache, weights_only=True)
    assert ckpt["meta"]["seed"] == 0 and ckpt["meta"]["data_seed"] == 0


def test_feature_statistics_errors():
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(torch.zeros(1, 3))


def test_train_batches_cover_the_epoch_and_resume_mid_epoch():
    values = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1).expand(10, 1, 8, 8)
    batches = list(train_batches(values, batch_size=4, epoch=1, seed=0))
    assert [i for i, _ in batches] == [0, 1, 2] == list(range(num_batches(10, 4)))
    assert [len(x) for _, x in batches] == [4, 4, 2]
    seen = torch.cat([torch.floor(x[:, 0, 0, 0] * NUM_LEVELS) for _, x in batches])
    assert sorted(seen.tolist()) == list(range(10))  # every example exactly once
    resumed = list(train_batches(values, batch_size=4, epoch=1, seed=0, start=1))
    assert [i for i, _ in resumed] == [1, 2]
    for (_, a), (_, b) in zip(batches[1:], resumed, strict=True):
        assert torch.equal(a, b)  # the same noise too
    other = list(train_batches(values, batch_size=4, epoch=2, seed=0))
    assert not torch.equal(batches[0][1], other[0][1])


def test_fixed_dequantized_and_evaluate_bits_per_dim():
    data = load_digits_split()
    a, b = fixed_dequantized(data.test, seed=0), fixed_dequantized(data.test, seed=0)
    assert torch.equal(a, b) and not torch.equal(a, fixed_dequantized(data.test, seed=1))

    def uniform(x):
        return torch.zeros(x.shape[0])

    assert math.isclose(evaluate_bits_per_dim(uniform, a, batch_size=7), math.log2(17))
