"""Shared test set-up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tracker_sched.fit import FitResult


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test runs torch on one thread.

    The models here are tiny: more intra-op threads only add contention, badly so
    when another process holds a core (a CPU test took 165 s instead of 5 s).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_fit() -> Iterator[FitResult]:
    """The tiny fit of the fixture sweep, once per session (a few seconds): share it, never
    change it; tests that edit a bundle save their own copy."""
    from tests.tiny import tiny_config
    from tracker_sched.fit import fit_sweep
    from tracker_sched.sources.files import read_sweep

    fixture = Path(__file__).parent / "fixtures" / "cnn_sweep_small.jsonl"
    yield fit_sweep(read_sweep(fixture).runs, tiny_config(), workers=1, progress=False)
