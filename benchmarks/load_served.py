"""Load benchmark: many concurrent runs replanning against one ``mlflow models serve``.

``python -m benchmarks.load_served`` fits a small bundle on the fixture sweep, registers it in
a sqlite MLflow store in a temporary folder, serves it on 127.0.0.1 with ``mlflow models
serve`` and runs simulated training runs against it, one thread each: first one run alone
(the baseline: the server's own time per request), then ``--runs`` (64) at once. Every run
is a :class:`~tracker_sched.advising.remote.RemoteAdvisor` that observes a fixture run step by step
and replans every ``--replan-every`` observations for the whole run (``max_replans=None``):
far more requests than the default single open-loop plan. Loopback only, bounded (the runs
are the fixture's, about 94 observations each).

It reports, per level, the request latency as the client sees it (p50, p90, p99, max: at 64
runs mostly queueing, since one scoring worker answers them all), the throughput, and the
numbers that must be zero: requests lost (no answer, an error, a timeout) and
recommendations that differ from the local
:class:`~tracker_sched.advising.advisor.Advisor`'s, fed the
same observations (the status, the step, lr_now and the whole schedule, at every observation
of every run). The machine's load average is recorded with the result.

Writes ``benchmarks/results/load_served.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch

from benchmarks.mlflow_server import ServedModel
from tests.tiny import logged_rows, tiny_config
from tracker_sched.advising.advisor import Advisor
from tracker_sched.advising.remote import RemoteAdvisor
from tracker_sched.bundle.folder import Bundle
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.schema import Recommendation, RunRecord
from tracker_sched.sources.files import read_sweep
from tracker_sched.stores.mlflow_store import register_bundle

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "cnn_sweep_small.jsonl"
OUT = ROOT / "benchmarks" / "results" / "load_served.json"


class TimedSession(requests.Session):
    """Records the wall time and outcome of every POST (thread-safe list appends)."""

    def __init__(self, log: list[tuple[float, int]]) -> None:
        super().__init__()
        self.log = log

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        t0 = time.perf_counter()
        status = -1
        try:
            resp = super().post(*args, **kwargs)
            status = resp.status_code
            return resp
        finally:
            self.log.append((time.perf_counter() - t0, status))


def same(a: Recommendation, b: Recommendation) -> bool:
    return (a.status == b.status and a.step == b.step and a.schedule == b.schedule
            and math.isclose(a.lr_now, b.lr_now, rel_tol=1e-9))


def run_one(url: str, record: RunRecord, replan_every: int, log: list[tuple[float, int]],
            out: dict[str, Any]) -> None:
    total = record.total_steps or 840
    remote = RemoteAdvisor(url, total, timeout=60.0, retries=0, replan_every=replan_every,
                           max_replans=None, session=TimedSession(log))
    plans = []
    for step, row in logged_rows(record):
        remote.observe(step, **row)
        if not remote.wait(120):
            break
        plans.append(remote.plan)
    remote.close()
    out["plans"] = plans


def load_level(url: str, bundle: Bundle, records: list[RunRecord], runs: int,
               replan_every: int) -> dict[str, Any]:
    """``runs`` concurrent runs against the server; their latency, throughput and errors."""
    log: list[tuple[float, int]] = []
    outs: list[dict[str, Any]] = [{} for _ in range(runs)]
    picks = [records[i % len(records)] for i in range(runs)]
    threads = [threading.Thread(target=run_one, args=(url, rec, replan_every, log, out))
               for rec, out in zip(picks, outs, strict=True)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()

    # The same observations through the local advisor: every plan must match.
    wrong = lost_plans = compared = 0
    for rec, out in zip(picks, outs, strict=True):
        local = Advisor(bundle, rec.total_steps or 840, replan_every=replan_every,
                        max_replans=None)
        plans = out.get("plans", [])
        rows = logged_rows(rec)
        lost_plans += len(rows) - len(plans)
        for (step, row), got in zip(rows, plans, strict=False):
            want = local.observe(step, **row)
            compared += 1
            if not same(got, want):
                wrong += 1
    lat = np.array([s for s, _ in log])
    return {
        "runs": runs, "requests": len(log), "wall_s": round(wall, 2),
        "throughput_rps": round(len(log) / wall, 1),
        "latency_ms": {q: round(float(np.percentile(lat, p)) * 1000, 1)
                       for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "requests_failed": sum(1 for _, status in log if status != 200),
        "observations_without_answer": lost_plans,
        "recommendations_compared": compared,
        "recommendations_wrong": wrong,
        "load_avg_1min_after": round(load_after[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 64],
                        help="concurrent runs, one level after the other (default 1 64: a "
                        "baseline, then the load)")
    parser.add_argument("--replan-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (MLflow's 1)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    # The served model plans on one torch thread (TrackerSchedModel.load_context); the local
    # reference must too, or float reductions in another order would differ in the last bits.
    torch.set_num_threads(1)
    records = read_sweep(FIXTURE).runs
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tracker-sched-load-") as tmp:
        root = Path(tmp)
        bundle = fit_sweep(records, tiny_config(), workers=1, progress=False).bundle
        folder = bundle.save(root / "bundle")
        store = f"sqlite:///{root}/mlflow.db"
        uri = register_bundle(folder, name="load", alias="champion", tracking_uri=store,
                              experiment="load")
        served = ServedModel(uri.removeprefix("mlflow:"), store, root / "serve.log",
                             workers=args.workers)
        served.wait()
        try:
            levels = [load_level(served.url, bundle, records, n, args.replan_every)
                      for n in args.runs]
        finally:
            served.stop()
    result = {
        "benchmark": "load_served",
        "command": "nice -n 10 python -m benchmarks.load_served",
        "bundle": "tiny fit of tests/fixtures/cnn_sweep_small.jsonl (tests/tiny.py)",
        "replan_every": args.replan_every, "max_replans": None,
        "uvicorn_workers": args.workers,
        "levels": levels,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
                    "load_avg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
                    "nice": os.nice(0)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
