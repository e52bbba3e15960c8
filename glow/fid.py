"""FD-digits: a Frechet distance in the feature space of a small digit classifier.

This follows the recipe of the Frechet Inception Distance (Heusel et al., "GANs Trained by a Two
Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017, eq. 6)::

    FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))

but the features are the penultimate layer of a small MLP trained here, in a few seconds, on
the 1617 training digits, instead of Inception-v3 pool features of 299x299 photos.
**FD-digits is NOT comparable to Inception FID** (nor to the dissertation's "FID 0.76 / 0.81",
which used Inception features): its scale depends on this classifier. Values are comparable only
between runs that use the same classifier (same ``seed``, ``data_seed`` and code version), which
the cache file records.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from glow.data import NUM_DIMS, DigitsSplit, dequantize

__all__ = [
    "FD_NAME",
    "DigitClassifier",
    "digits_frechet_distance",
    "feature_statistics",
    "frechet_distance",
    "load_or_train_classifier",
    "train_digit_classifier",
]

FD_NAME = "FD-digits"
_VERSION = 1  # bump when the classifier or its training changes (invalidates caches)


class DigitClassifier(nn.Module):
    """MLP ``64 -> 128 -> 32 -> 10`` with ReLU; :meth:`features` is the 32-d penultimate layer."""

    def __init__(self, hidden: int = 128, features: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(NUM_DIMS, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.ReLU()
        )
        self.head = nn.Linear(features, 10)

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() != NUM_DIMS:
            raise ValueError(f"DigitClassifier: expected 8x8 digits, got shape {tuple(x.shape)}")
        # Centre the [0, 1] pixels so the first layer starts well conditioned.
        return x.reshape(x.shape[0], NUM_DIMS) - 0.5

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations ``[N, 32]`` of images ``x`` in ``[0, 1]``."""
        return self.body(self._flat(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_digit_classifier(
    data: DigitsSplit, seed: int = 0, epochs: int = 40, batch_size: int = 128
) -> tuple[DigitClassifier, float]:
    """Train the classifier on the dequantised training digits; return it (eval mode) and its
    accuracy on the (dequantised) test digits.

    Fresh dequantisation noise every epoch (so it sees continuous inputs like the flow's
    samples). Seeded and deterministic; torch's global RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier()
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    labels = data.train_labels
    n = len(labels)
    model.train()
    for _ in range(epochs):
        x = dequantize(data.train, gen)
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        test_x = dequantize(data.test, torch.Generator().manual_seed(seed + 2))
        accuracy = (model(test_x).argmax(1) == data.test_labels).double().mean().item()
    return model, accuracy


def load_or_train_classifier(
    data: DigitsSplit, cache_path: str | Path | None = None, seed: int = 0, data_seed: int = 0
) -> tuple[DigitClassifier, float]:
    """The classifier from ``cache_path`` if it was trained with the same settings, otherwise
    train it (a few seconds) and, if ``cache_path`` is given, save it there atomically.

    ``data_seed`` identifies the train/test split the classifier was trained on (it is recorded
    in the cache so that a different split retrains).
    """
    meta = {"version": _VERSION, "seed": int(seed), "data_seed": int(data_seed)}
    if cache_path is not None and Path(cache_path).is_file():
        with contextlib.suppress(CheckpointError):
            ckpt = load_checkpoint(cache_path, required_keys=("model", "meta", "accuracy"))
            if ckpt["meta"] == meta:
                model = DigitClassifier()
                model.load_state_dict(ckpt["model"])
                return model.eval(), float(ckpt["accuracy"])
    model, accuracy = train_digit_classifier(data, seed=seed)
    if cache_path is not None:
        state = {"model": model.state_dict(), "meta": meta, "accuracy": accuracy}
        save_checkpoint(cache_path, state)
    return model, accuracy


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[F]`` and (unbiased) covariance ``[F, F]`` of ``[N, F]`` features, in float64."""
    f = np.asarray(
        features.detach().cpu().double() if isinstance(features, torch.Tensor) else features,
        dtype=np.float64,
    )
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_statistics: need [N >= 2, F] features, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray
) -> float:
    """Frechet (2-Wasserstein) distance squared between ``N(mu_a, S_a)`` and ``N(mu_b, S_b)``.

    ``Tr((S_a S_b)^(1/2))`` is computed as the trace of the square root of the symmetric PSD
    matrix ``S_a^(1/2) S_b S_a^(1/2)`` (same eigenvalues), in float64, so the result is real and
    ``FD(a, a) = 0`` up to rounding.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    root_a = _sqrt_psd(sigma_a)
    middle = root_a @ sigma_b @ root_a
    eig = np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.sqrt(eig).sum()
    return float(max(value, 0.0))


@torch.no_grad()
def digits_frechet_distance(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    classifier: DigitClassifier,
    clamp: bool = True,
) -> float:
    """FD-digits between two sets of 8x8 images in ``[0, 1]`` (``[N, 1, 8, 8]`` or ``[N, 64]``).

    ``clamp`` clips both sets to ``[0, 1]`` first (flow samples can leave the data range).
    NOT comparable to Inception FID (module docstring).
    """
    feats = []
    for images in (images_a, images_b):
        x = images.detach().float().cpu()
        if clamp:
            x = x.clamp(0.0, 1.0)
        feats.append(classifier.features(x))
    return frechet_distance(*feature_statistics(feats[0]), *feature_statistics(feats[1]))
