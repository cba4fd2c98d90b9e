"""Shared test set-up."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks.mlflow_server import local_mlflow_server
from tracker_sched.bundle.folder import Bundle
from tracker_sched.fit.generative import FitResult
from tracker_sched.schema import RunRecord


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


@pytest.fixture(autouse=True)
def mlflow_tracking_uri_restored() -> Iterator[None]:
    """Every test leaves MLflow's process-wide tracking URI (and ``MLFLOW_TRACKING_URI``,
    which ``mlflow.set_tracking_uri`` also writes) as it found them.

    A library that calls ``mlflow.set_tracking_uri`` in the test process (Ray Tune's MLflow
    callback does, in the driver) otherwise hands its store to every later test: the
    Lightning test that checks the caller's URI survives failed after the Ray sweep.
    """
    def snapshot() -> tuple[str | None, str | None]:
        utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
        uri = getattr(utils, "_tracking_uri", None) if utils is not None else None
        return uri, os.environ.get("MLFLOW_TRACKING_URI")

    before = snapshot()
    yield
    if snapshot() == before:
        return
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils.set_tracking_uri(before[0])  # None: unset (it also resets the tracer)
    if before[1] is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before[1]


@pytest.fixture(scope="session")
def mlflow_server_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real ``mlflow server`` (sqlite backend, 1 worker) on 127.0.0.1, one per session:
    its URI, and the ``sqlite:///`` URI of its backend store (the same runs, read through
    MLflow's client without the server)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with local_mlflow_server(root) as uri:
        yield uri, f"sqlite:///{root}/mlflow.db"


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_store: tuple[str, str]) -> str:
    """The URI of the session's real ``mlflow server``."""
    return mlflow_server_store[0]


@pytest.fixture(scope="session")
def tiny_fit() -> Iterator[FitResult]:
    """The tiny fit of the fixture sweep, once per session (a few seconds): share it, never
    change it; tests that edit a bundle save their own copy."""
    from tests.tiny import FIXTURE, tiny_config
    from tracker_sched.fit.generative import fit_sweep
    from tracker_sched.sources.files import read_sweep

    yield fit_sweep(read_sweep(FIXTURE).runs, tiny_config(), workers=1, progress=False)


@pytest.fixture(scope="session")
def fixture_runs() -> list[RunRecord]:
    """The fixture sweep's runs (tests/fixtures/cnn_sweep_small.jsonl)."""
    from tests.tiny import FIXTURE
    from tracker_sched.sources.files import read_sweep

    return read_sweep(FIXTURE).runs


@pytest.fixture(scope="session")
def planner_bundle(fixture_runs: list[RunRecord]) -> Bundle:
    """A generative bundle big enough to plan with (2 members, seconds to fit), once per
    session: the planner's, the advisor's, the scheduler's and the CLI's tests share it."""
    from tracker_sched.fit.config import FitConfig
    from tracker_sched.fit.generative import fit_sweep
    from tracker_sched.model.latent import ModelConfig

    cfg = FitConfig(
        max_iterations=40, eval_every=20, batch_size=32, grid_points=40, window=10, ensemble=2,
        model=ModelConfig(latent_dim=6, ode_dim=12, hidden=24, encoder_hidden=24),
    )
    return fit_sweep(fixture_runs, cfg, workers=1, progress=False).bundle


@pytest.fixture(scope="session")
def stop_fit() -> Iterator[tuple[FitResult, object]]:
    """A 2-member cross-fitted tiny ensemble of a 30-run synthetic sweep (200 steps) and the
    sweep (tests.synthetic.SyntheticSweep), once per session: the stop-decision tests
    (tests/advising/test_stopping.py, tests/optuna, tests/ray, the callbacks) share it."""
    from tests.synthetic import make_sweep
    from tests.tiny import tiny_config
    from tracker_sched.fit.generative import fit_sweep

    sweep = make_sweep(total_steps=200)
    yield fit_sweep(sweep.runs, tiny_config(ensemble=2, max_iterations=60), workers=1,
                    progress=False), sweep


@pytest.fixture(scope="session")
def control_bundle() -> Bundle:
    """A tiny control-mode bundle (kind ``control_ode``, what ``fit --mode control`` makes) of the
    stop tests' 200-step synthetic sweep, once per session (seconds): the stop decision's
    "why not" in every place it is offered. Share it, never change it."""
    from tests.synthetic import make_sweep
    from tracker_sched.fit.control import ControlFitConfig, fit_control
    from tracker_sched.model.latent import ModelConfig

    cfg = ControlFitConfig(grid_points=40, window=10, iterations=10, batch_size=16, members=2,
                           model=ModelConfig(latent_dim=4, ode_dim=8, hidden=16,
                                             encoder_hidden=16, step_points=2))
    return fit_control(make_sweep(total_steps=200).runs, cfg, workers=1)


@pytest.fixture(scope="session")
def tiny_bundle_dir(tiny_fit: FitResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny fit's bundle saved once per session: what the framework callback tests load
    by URI (``file:`` or a folder). Share it, never change it."""
    return tiny_fit.bundle.save(tmp_path_factory.mktemp("tiny-bundle") / "bundle")
