"""Shared fixtures. The repository root is put on ``sys.path`` so tests import ``common``, ``irn``
and ``glow`` as a user running from a checkout would."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Tiny convolutions run faster (and less noisily on a shared machine) on one thread.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def single_thread():
    """Every test starts on one thread (OpenMP spin-waiting on a shared 2-core machine costs more
    than tiny tensors gain), whatever an earlier test's ``--threads`` set."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def double():
    """Run a test with float64 as torch's default dtype (layer maths is checked in float64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device present: ``cpu``, and ``cuda`` when ``torch.cuda.is_available()`` (so one
    pytest command on a GPU machine runs the device tests there as well)."""
    return torch.device(request.param)
