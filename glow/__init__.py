"""Glow (Kingma & Dhariwal 2018, arXiv:1807.03039) on the 8x8 digits, from the shared core."""

from glow.data import (
    DigitsSplit,
    bits_per_dim,
    dequantize,
    epoch_permutation,
    evaluate_bits_per_dim,
    fixed_dequantized,
    load_digits_split,
    num_batches,
    train_batches,
)
from glow.fid import FD_NAME, digits_frechet_distance, load_or_train_classifier
from glow.model import ChannelPermutation, Glow, GlowConfig, standard_normal_log_prob

__all__ = [
    "FD_NAME",
    "ChannelPermutation",
    "DigitsSplit",
    "Glow",
    "GlowConfig",
    "bits_per_dim",
    "dequantize",
    "digits_frechet_distance",
    "epoch_permutation",
    "evaluate_bits_per_dim",
    "fixed_dequantized",
    "load_digits_split",
    "load_or_train_classifier",
    "num_batches",
    "standard_normal_log_prob",
    "train_batches",
]
