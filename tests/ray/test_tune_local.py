"""The Ray Tune scheduler and the advisor on a local Ray instance (2 CPUs, loopback), one
Ray start for the module: 16 trials, logged to MLflow through Tune's MLflow callback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from tests.ray.tune_sweep import RULE, check_histories, loopback_ray, run_sweep  # noqa: E402
from tracker_sched.errors import InputError  # noqa: E402
from tracker_sched.integrations.ray import TrackerSchedScheduler  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        loopback_ray(mp, REPO)
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def test_sixteen_trials_stop_the_losers_and_log_everything(local_ray, stop_fit,
                                                           tmp_path: Path) -> None:
    fit, sweep = stop_fit
    uri = (tmp_path / "mlruns").as_uri()
    results, scheduler, specs = run_sweep(fit.bundle, sweep, tmp_path / "tune", uri)
    summary = check_histories(results, scheduler, specs, uri)
    assert len(summary["stopped"]) >= 4 and len(summary["finished"]) >= 2, summary
    # The best configuration, followed, finished: it is the incumbent no stop may remove.
    by_spec = {r.config["trial"]: r for r in results}
    assert int(by_spec[0].metrics["step"]) == sweep.total_steps
    for decision in scheduler.stopped.values():
        assert decision.p_beat is not None and decision.p_beat < RULE.threshold
    # Advised trials ran at the advisor's lr, not their configuration's.
    advised = [r for i, r in by_spec.items() if specs[i]["advised"]]
    lrs = {round(float(r.metrics["lr"]), 12) for r in advised}
    assert len(lrs) < len(advised)  # one bundle's plan, not eight configurations


def test_scheduler_refuses_a_mismatched_direction(stop_fit) -> None:
    fit, sweep = stop_fit
    with pytest.raises(InputError, match="direction"):
        TrackerSchedScheduler(fit.bundle, sweep.total_steps, metric="val_acc", mode="min")
