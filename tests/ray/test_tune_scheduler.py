"""The Ray Tune scheduler's own checks, without a Ray start (the sweeps through Tune run
once, on the two-node cluster of test_tune_cluster.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from tracker_sched.errors import InputError
from tracker_sched.integrations.ray import TrackerSchedScheduler


def test_scheduler_refuses_a_mismatched_direction(stop_fit) -> None:
    fit, sweep = stop_fit
    with pytest.raises(InputError, match="direction"):
        TrackerSchedScheduler(fit.bundle, sweep.total_steps, metric="val_acc", mode="min")
