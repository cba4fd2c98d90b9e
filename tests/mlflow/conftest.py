"""Real MLflow for the tests: one ``mlflow server`` per session (``tests/conftest.py``: the
corpus tests share it), and sqlite stores in tmp_path."""

from __future__ import annotations

import pytest

from tests.tiny import FIXTURE
from tracker_sched.schema import RunRecord
from tracker_sched.sources.files import read_sweep


@pytest.fixture(scope="session")
def sweep_records() -> list[RunRecord]:
    result = read_sweep(FIXTURE)
    assert not result.issues
    return result.runs
