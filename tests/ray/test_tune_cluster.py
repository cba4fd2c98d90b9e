"""The same 16-trial sweep on a two-node cluster simulated with Ray's own cluster utilities
(a head and a worker node, loopback), and a worker node killed mid-sweep: no trial is lost,
every trial's history is in MLflow. One cluster for the module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from ray.tune import Callback  # noqa: E402

from tests.ray.tune_sweep import check_histories, loopback_ray, run_sweep  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    # Not reliable yet (issue 14 stays open for it): on this project's loaded 2-core machine it
    # failed 2 of 4 runs (once Ray's driver raised ActorUnavailableError for the removed node,
    # once a trial the scheduler had stopped was reported as run to its end) and takes
    # 140-165 s. Run it with TRACKER_SCHED_RAY_CLUSTER=1.
    pytest.mark.skipif(not os.environ.get("TRACKER_SCHED_RAY_CLUSTER"),
                       reason="flaky two-node test; set TRACKER_SCHED_RAY_CLUSTER=1 to run it"),
]

REPO = Path(__file__).resolve().parents[2]
NODE = {"include_dashboard": False, "node_ip_address": "127.0.0.1"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        loopback_ray(mp, REPO)
        c = Cluster(initialize_head=True, connect=True,
                    head_node_args={"num_cpus": 1, **NODE})
        worker = c.add_node(num_cpus=2, **NODE)
        c.wait_for_nodes()
        try:
            yield c, worker
        finally:
            ray.shutdown()
            c.shutdown()


_NODES: dict[str, tuple[Cluster, Any]] = {}  # Tune pickles its callbacks: no cluster in them


class KillWorker(Callback):  # type: ignore[misc]
    """Removes the worker node once the sweep is well under way (from Tune's own loop)."""

    def __init__(self, cluster: Cluster, node: Any, after: int) -> None:
        _NODES["worker"] = (cluster, node)
        self.after = after
        self.results = 0
        self.killed_with: list[str] = []  # trials running when the node went away
        self.recovered: list[str] = []  # trials that failed with it and were started again

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        self.results += 1
        if self.results == self.after and not self.killed_with:
            self.killed_with = [t.trial_id for t in trials if t.status == "RUNNING"]
            cluster, node = _NODES["worker"]
            cluster.remove_node(node, allow_graceful=False)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self.recovered.append(trial.trial_id)


def test_two_nodes_a_worker_killed_no_trial_lost(cluster, stop_fit, tmp_path: Path) -> None:
    c, worker = cluster
    fit, sweep = stop_fit
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    uri = (tmp_path / "mlruns").as_uri()
    killer = KillWorker(c, worker, after=12)
    results, scheduler = run_sweep(fit.bundle, sweep, tmp_path / "tune", uri,
                                   callbacks=[killer], max_failures=3, slow_s=0.05)
    assert killer.killed_with, "the worker node was never removed"
    # Trials on the worker (the head has 1 CPU, two trials run at a time) failed with it and
    # were run again on the head.
    assert killer.recovered, killer.__dict__
    assert len([n for n in ray.nodes() if n["Alive"]]) == 1
    summary = check_histories(results, scheduler, uri)  # all 16 ended, histories complete
    assert summary["stopped"] >= 4 and summary["finished"] >= 2, summary
