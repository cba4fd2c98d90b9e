"""The Ray Tune scheduler and the advisor on a two-node cluster simulated with Ray's own
cluster utilities (a head and a worker node, loopback), one Ray start for the module: a
16-trial sweep logged to MLflow through Tune's ``MLflowLoggerCallback``, the worker node
killed mid-sweep with trials in flight on it. No trial is lost, every trial's history is in MLflow,
the losers are stopped and the best configuration is not.

One cluster serves both shapes the docs show: the driver connects with
``ray.init(address=...)`` as to a real cluster, and the head is a local Ray instance (a
local ``ray.init()`` runs the same Tune code, the head started in-process).

What makes it deterministic:

- the head's CPU is held by an empty placement group until the kill: the trials start on the
  worker node (2 CPUs, two trials at a time);
- the node is killed at a fixed point: when a trial on it (its pid under the worker's raylet)
  reports its second result (before any stop decision can end it), once two trials ended;
- the callback that kills it waits, inside Tune's loop, until Ray's control store has
  declared the node dead (health checks every 0.2 s: a killed node refuses them at once),
  then frees the head's CPU: Tune never places a retried trial on a dead node;
- Tune retries the trials whose node died (``FailureConfig(max_failures=3)``) from the start;
- "stopped" is read from the scheduler's own decisions, not from a trial's last step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from ray.tune import Callback  # noqa: E402
from ray.util.placement_group import placement_group, remove_placement_group  # noqa: E402

from tests.ray.tune_sweep import (  # noqa: E402
    REPORT_EVERY,
    RULE,
    check_histories,
    loopback_ray,
    run_sweep,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Loopback, and no processes the test does not use: the dashboard, the autoscaler's monitor,
# the log monitor (the driver does not print the workers' logs).
NODE = {"include_dashboard": False, "node_ip_address": "127.0.0.1",
        "include_log_monitor": False}
# Ray's control store (GCS) declares a node dead after this many failed health checks in a
# row. A killed node refuses the check at once, so it is declared dead in about a second; a
# live node under load has 10 s to answer each check.
HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200,
          "health_check_timeout_ms": 10_000, "health_check_failure_threshold": 5}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, Any, Any]]:
    """The head (1 CPU, held by an empty placement group), the worker node (2 CPUs) and the
    hold."""
    with pytest.MonkeyPatch.context() as mp:
        loopback_ray(mp, REPO)
        c = Cluster(initialize_head=True, connect=False,
                    head_node_args={"num_cpus": 1, "no_monitor": True,
                                    "_system_config": HEALTH, **NODE})
        try:
            ray.init(address=c.address, log_to_driver=False)
            hold = placement_group([{"CPU": 1}])  # a reservation, no process
            assert hold.wait(60), "the head's CPU could not be reserved"
            worker = c.add_node(num_cpus=2, **NODE)
            c.wait_for_nodes()
            yield c, worker, hold
        finally:
            ray.shutdown()
            c.shutdown()


# Tune copies its callbacks (and pickles them with the experiment's state): the cluster and
# what the callback saw live here, in the module, not in the callback.
_NODES: dict[str, Any] = {}
SEEN: dict[str, Any] = {}


def _ancestors(pid: int) -> set[int]:
    """The process ids above ``pid`` (Linux /proc)."""
    found: set[int] = set()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        pid = int(next(line.split()[1] for line in status.splitlines()
                       if line.startswith("PPid:")))
    return found


class KillWorker(Callback):  # type: ignore[misc]
    """Kills the worker node when a trial on it reports step ``at_step``, once ``after``
    trials have ended, waits until Ray declares the node dead, then frees the head's CPU
    (all from Tune's own loop).

    Records in :data:`SEEN`: ``victim`` (the trial whose result triggered it),
    ``killed_with`` (the trials running or starting when the node went away),
    ``dead_after_s`` (until Ray declared the node dead), ``recovered`` (trials that failed
    and were started again), ``on_head`` (results from the head before the kill: none).
    """

    def __init__(self, cluster: Cluster, node: Any, hold: Any, *, after: int,
                 at_step: int) -> None:
        _NODES.update(cluster=cluster, worker=node, hold=hold)
        SEEN.clear()
        SEEN.update(victim=None, killed_with=[], dead_after_s=None, recovered=[], ended=0,
                    on_head=0)
        self.raylet = node.all_processes["raylet"][0].process.pid
        self.node_id = node.node_id
        self.after, self.at_step = after, at_step

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        SEEN["ended"] += 1

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        if SEEN["victim"] is not None:
            return
        on_worker = self.raylet in _ancestors(int(result["pid"]))
        SEEN["on_head"] += not on_worker
        if SEEN["ended"] < self.after or result.get("step") != self.at_step or not on_worker:
            return
        SEEN["victim"] = str(trial.trial_id)
        SEEN["killed_with"] = sorted(str(t.trial_id) for t in trials
                                     if t.status in ("RUNNING", "PENDING"))
        start = time.monotonic()
        _NODES["cluster"].remove_node(_NODES["worker"], allow_graceful=False)
        while time.monotonic() - start < 60:
            if not any(n["NodeID"] == self.node_id and n["Alive"] for n in ray.nodes()):
                SEEN["dead_after_s"] = time.monotonic() - start
                break
            time.sleep(0.1)
        remove_placement_group(_NODES["hold"])  # the sweep goes on on the head

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        SEEN["recovered"].append(str(trial.trial_id))


def test_sixteen_trials_two_nodes_a_worker_killed(cluster, stop_fit, tmp_path: Path) -> None:
    c, worker, hold = cluster
    fit, sweep = stop_fit
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    uri = (tmp_path / "mlruns").as_uri()
    at = 2 * REPORT_EVERY
    killer = KillWorker(c, worker, hold, after=2, at_step=at)
    results, scheduler, specs = run_sweep(fit.bundle, sweep, tmp_path / "tune", uri,
                                          callbacks=[killer], max_failures=3)

    # The kill: on the worker node, with trials in flight, seen dead by Ray in seconds.
    victim = SEEN["victim"]
    assert victim is not None, "no trial reported from the worker node"
    assert SEEN["on_head"] == 0  # the head's CPU was held: every trial began on the worker
    assert SEEN["dead_after_s"] is not None, "Ray never declared the killed node dead"
    assert len([n for n in ray.nodes() if n["Alive"]]) == 1
    # The trials on the dead node failed with it and were run again from their start. Tune
    # learns that an actor is dead when a call to it fails: an actor it had cached for reuse
    # on that node fails the next trial it is given once more (at most one such actor: the
    # node had 2 CPUs), so a trial fails at most twice, within max_failures.
    recovered = SEEN["recovered"]
    assert victim in recovered, SEEN
    assert max(recovered.count(t) for t in recovered) <= 2, SEEN

    # No trial lost: all 16 ended where the scheduler's decisions say, histories complete.
    summary = check_histories(results, scheduler, specs, uri)
    first_try = sorted(s for s in summary["steps"][victim] if s <= at)
    assert first_try == [REPORT_EVERY, REPORT_EVERY, at, at], summary["steps"][victim]

    # The stops: losers stopped on low odds, and the best configuration, followed, finished
    # (it is the incumbent no stop may remove).
    assert len(summary["stopped"]) >= 4 and len(summary["finished"]) >= 2, summary
    for decision in scheduler.stopped.values():
        assert decision.p_beat is not None and decision.p_beat < RULE.threshold
    by_spec = {r.config["trial"]: r for r in results}
    assert int(by_spec[0].metrics["step"]) == sweep.total_steps
    # Advised trials ran at the advisor's lr, not their configuration's.
    advised = [r for i, r in by_spec.items() if specs[i]["advised"]]
    lrs = {round(float(r.metrics["lr"]), 12) for r in advised}
    assert len(lrs) < len(advised)  # one bundle's plan, not eight configurations
