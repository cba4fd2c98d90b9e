"""Real MLflow for the tests: one ``mlflow server`` per session, and sqlite stores in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.mlflow_server import local_mlflow_server
from tracker_sched.schema import RunRecord
from tracker_sched.sources.files import read_sweep

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cnn_sweep_small.jsonl"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of a real ``mlflow server`` (sqlite backend, 1 worker) on 127.0.0.1."""
    with local_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="session")
def sweep_records() -> list[RunRecord]:
    result = read_sweep(FIXTURE)
    assert not result.issues
    return result.runs
