"""The remote advisor against a real ``mlflow models serve`` of a registered bundle.

Faults: a loopback HTTP server that answers too late or refuses (a stub, since
a real scoring server cannot be made to hang on cue), and the real server
stopped in the middle of a run (the module's last test: it stops the server).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import requests

pytest.importorskip("mlflow")

from benchmarks.mlflow_server import ServedModel as Served
from benchmarks.mlflow_server import free_port
from tests.tiny import logged_rows, tiny_config
from tracker_sched.advising.advisor import Advisor
from tracker_sched.advising.remote import RemoteAdvisor, ServerError
from tracker_sched.advising.serving import recommendation_to_row, warmup_plan
from tracker_sched.bundle.folder import Bundle
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.limits import MAX_ROWS
from tracker_sched.schema import Recommendation, RunRecord, Schedule
from tracker_sched.stores.mlflow_store import register_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, sweep_records: list[RunRecord]) -> Path:
    result = fit_sweep(sweep_records, tiny_config(), progress=False)
    return result.bundle.save(tmp_path_factory.mktemp("remote-bundle") / "bundle")


@pytest.fixture(scope="module")
def served(
    bundle: Path, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    uri = register_bundle(bundle, name="remote-sched", alias="champion",
                          experiment="remote-tests", tracking_uri=mlflow_server)
    server = Served(uri.removeprefix("mlflow:"), mlflow_server,
                    tmp_path_factory.mktemp("serve") / "serve.log")
    server.wait()
    yield server
    server.stop()


@pytest.mark.slow
def test_real_loop_matches_the_local_advisor(
    served: Served, bundle: Path, sweep_records: list[RunRecord]
) -> None:
    record = sweep_records[0]
    total = record.total_steps
    assert total is not None
    local_bundle = Bundle.load(bundle)
    local = Advisor(local_bundle, total)
    remote = RemoteAdvisor(served.url, total, timeout=10.0)
    assert remote.plan.status == "warmup" and remote.requests_sent == 1
    assert remote.plan.schedule == warmup_plan(local_bundle, total).schedule
    statuses = []
    for step, row in logged_rows(record):
        remote.observe(step, **row)
        assert remote.wait(30)  # the request runs off the training thread: let it land
        got = remote.plan
        want = local.observe(step, **row)
        statuses.append(got.status)
        assert got.status == want.status, step
        assert math.isclose(remote.lr(step), local.lr(step), rel_tol=1e-9), step
    assert local.replans == remote.replans == 1
    assert (remote.mode, remote.mode_reason) == (local.mode, local.mode_reason)
    assert remote.plan.status != "warmup"
    assert remote.plan.schedule == local.plan.schedule
    assert remote.plan.predicted_final == local.plan.predicted_final
    assert remote.requests_sent == 2  # the warm-up plan, then the one open-loop plan


@pytest.mark.slow
def test_remote_stop_decision_is_the_local_one(
    served: Served, bundle: Path, sweep_records: list[RunRecord]
) -> None:
    from tracker_sched.model.stop_odds import StopRule

    record = sweep_records[0]
    total = record.total_steps
    assert total is not None and Bundle.load(bundle).manifest.stopping is not None
    local = Advisor(Bundle.load(bundle), total)
    remote = RemoteAdvisor(served.url, total, timeout=10.0)
    for step, row in logged_rows(record):
        if step >= total:  # at the budget a stop saves nothing: no odds to compare there
            break
        local.observe(step, **row)
        remote.observe(step, **row)
        assert remote.wait(30)
    rule = StopRule(threshold=0.5, patience=1)
    target = record.val_metric.value[-1] if record.val_metric else 0.0
    first = remote.stop_decision(target, rule=rule)  # never waits: no answer yet
    assert not first.stop and first.p_beat is None
    assert remote.wait(30)
    got = remote.stop_decision(target, rule=rule)
    want = local.stop_decision(target, rule=rule)
    assert got.p_beat is not None and got.p_beat == pytest.approx(want.p_beat, rel=1e-5)
    assert (got.stop, got.below, got.incumbent) == (want.stop, want.below, want.incumbent)
    assert remote.plan.status == local.plan.status  # a stop request leaves the plan alone
    remote.close()


@pytest.mark.slow
def test_invocations_input_forms_agree(served: Served, sweep_records: list[RunRecord]) -> None:
    """Records with absent keys, records with nulls and a split frame give one answer."""
    rows = [{"step": s, **row} for s, row in logged_rows(sweep_records[2])][:40]
    columns = ["step", "train_loss", "val_metric", "lr"]
    nulls = [{c: r.get(c) for c in columns} for r in rows]
    split = {"columns": columns, "data": [[r.get(c) for c in columns] for r in rows]}
    params = {"total_steps": sweep_records[2].total_steps}
    answers = []
    for body in ({"dataframe_records": rows}, {"dataframe_records": nulls},
                 {"dataframe_split": split}):
        resp = requests.post(served.url + "/invocations", json={**body, "params": params},
                             timeout=10)
        assert resp.status_code == 200, resp.text[-300:]
        answers.append(resp.json()["predictions"][0])
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["status"] in ("planned", "fallback")  # 40 rows: past the window


@pytest.mark.slow
def test_server_rejects_bad_input_with_its_reason(served: Served) -> None:
    resp = requests.post(served.url + "/invocations", timeout=10,
                         json={"dataframe_records": [{"step": 0}]})
    assert resp.status_code == 400
    assert "total_steps" in resp.json()["stack_trace"].splitlines()[-1]
    # Steps past the budget, which the server would refuse, are refused by the client
    # itself (as the local advisor does): never sent, and the plan stands.
    remote = RemoteAdvisor(served.url, 100, initial_lr=0.05, timeout=10.0, retries=2)
    assert remote.wait(30)
    assert remote.requests_sent == 1 and remote.plan.status == "warmup"
    warmup = remote.plan.schedule
    for step in range(150, 160):
        rec = remote.observe(step, train_loss=1.0, lr=0.05)
    assert remote.wait(30) and remote.requests_sent == 1
    assert rec.status == "warmup" and rec.schedule == warmup and warmup.step


@pytest.mark.slow
def test_item8_the_served_model_refuses_an_oversized_request(served: Served) -> None:
    """Issue 15, item 8: a 10^6-row request took 8 s and 1.5 GB; past MAX_ROWS it is a 400
    with the reason, before any row is converted or planned."""
    rows = [{"step": i, "lr": 0.01} for i in range(MAX_ROWS + 1)]
    resp = requests.post(served.url + "/invocations", timeout=120, json={
        "dataframe_records": rows, "params": {"total_steps": 10**7}})
    assert resp.status_code == 400
    assert "at most 100000" in resp.json()["stack_trace"].splitlines()[-1]


class Stub(http.server.BaseHTTPRequestHandler):
    """Counts requests, keeps the last one; sleeps ``delay`` s, answers ``status`` with ``body``."""

    requests = 0
    last: ClassVar[dict[str, object]] = {}
    delay = 0.0
    status = 200
    body: ClassVar[dict[str, object]] = {}

    def do_POST(self) -> None:
        type(self).requests += 1
        type(self).last = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        time.sleep(self.delay)
        data = json.dumps(self.body).encode()
        with contextlib.suppress(OSError):  # the client may have given up already
            self.send_response(self.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def stub() -> Iterator[type[Stub]]:
    handler = type("StubHandler", (Stub,), {"requests": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


def test_timeout_falls_back_with_bounded_retries(
    stub: type[Stub], caplog: pytest.LogCaptureFixture
) -> None:
    stub.delay = 0.6
    url = stub.url  # type: ignore[attr-defined]
    caplog.set_level(logging.WARNING, logger="tracker_sched.remote")
    t0 = time.monotonic()
    remote = RemoteAdvisor(url, 200, timeout=0.2, retries=2, replan_every=5, initial_lr=0.05)
    assert time.monotonic() - t0 < 0.2  # with initial_lr the first request is not waited for
    assert remote.lr(0) == 0.05
    assert remote.wait(10)
    assert stub.requests == 3  # one try and two retries, no more
    assert time.monotonic() - t0 < 3 * 0.2 + 0.2 + 0.4 + 2.0  # tries, backoff, slack
    assert remote.plan.status == "fallback"
    assert "no answer from" in remote.plan.reason and "within 0.2 s" in remote.plan.reason
    assert remote.lr(0) == 0.05
    # The loop goes on at the run's own lr; the server is asked again every 5 observations.
    for step in range(1, 11):
        rec = remote.observe(step, train_loss=1.0, lr=0.07)
        assert rec.status == "fallback"
        assert remote.lr(step) == 0.07
        assert remote.wait(10)
    assert stub.requests == 3 + 2 * 3
    warnings = [r for r in caplog.records if "no answer from" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per failure


def test_server_down_at_start_without_initial_lr_says_what_to_do(stub: type[Stub]) -> None:
    stub.status, stub.body = 503, {"message": "model loading"}
    with pytest.raises(ServerError, match=r"HTTP 503: model loading.*initial_lr"):
        RemoteAdvisor(stub.url, 200, timeout=1.0, retries=1)  # type: ignore[attr-defined]
    assert stub.requests == 2  # a 5xx is retried


def test_refusal_is_not_retried_and_reason_is_the_servers(stub: type[Stub]) -> None:
    stub.status = 400
    stub.body = {"error_code": "BAD_REQUEST", "message": "Encountered an unexpected error",
                 "stack_trace": "Traceback...\ntracker_sched.errors.InputError: bad thing"}
    remote = RemoteAdvisor(stub.url, 200, retries=3, initial_lr=0.01)  # type: ignore[attr-defined]
    assert remote.wait(10)
    assert stub.requests == 1
    assert "HTTP 400" in remote.plan.reason and "InputError: bad thing" in remote.plan.reason


def test_answer_that_is_no_recommendation(stub: type[Stub]) -> None:
    stub.body = {"predictions": [{"status": "planned"}]}
    remote = RemoteAdvisor(stub.url, 200, retries=0, initial_lr=0.01)  # type: ignore[attr-defined]
    assert remote.wait(10)
    assert remote.plan.status == "fallback" and "not a recommendation" in remote.plan.reason


def test_non_finite_metrics_are_sent_as_missing(stub: type[Stub]) -> None:
    plan = Recommendation(status="planned", step=0, lr_now=0.1,
                          schedule=Schedule(step=[0, 100], lr=[0.1, 0.001]))
    stub.body = {"predictions": [{**recommendation_to_row(plan), "ready_step": 0}]}
    remote = RemoteAdvisor(stub.url, 100, replan_every=2, max_replans=None)  # type: ignore[attr-defined]
    assert remote.plan == plan and stub.requests == 1
    assert remote.mode is None and remote.mode_reason is None  # an older server's answer
    remote.observe(1, train_loss=float("nan"), lr=0.1)
    remote.observe(2, train_loss=float("inf"), val_metric=0.5, lr=0.1)
    assert remote.wait(10)
    assert stub.requests == 2 and remote.plan == plan and remote.replans == 1
    assert stub.last["dataframe_records"] == [{"step": 1, "lr": 0.1},
                                              {"step": 2, "val_metric": 0.5, "lr": 0.1}]
    assert json.loads(str(stub.last["params"]["current"])) == plan.schedule.model_dump()  # type: ignore[index]
    assert remote.lr(50) == pytest.approx(0.01)


@pytest.mark.slow
def test_server_going_away_mid_run(served: Served, sweep_records: list[RunRecord]) -> None:
    """Runs last in the module: it stops the served model."""
    record = sweep_records[5]
    total = record.total_steps
    assert total is not None
    remote = RemoteAdvisor(served.url, total, timeout=1.0, retries=1, replan_every=5,
                           max_replans=None)
    rows = logged_rows(record)
    half = len(rows) // 2
    for step, row in rows[:half]:
        remote.observe(step, **row)
        assert remote.wait(30)
    assert remote.plan.status in ("planned", "fallback") and remote.replans >= 1
    kept = remote.plan.schedule
    served.stop()
    lrs = []
    for step, row in rows[half:]:
        remote.observe(step, **row)  # never raises
        lrs.append(remote.lr(step))
        assert remote.wait(30)
        rec = remote.plan
    assert rec.status == "fallback" and "cannot reach" in rec.reason
    assert rec.schedule == kept  # the current plan is kept
    assert all(math.isfinite(x) and x > 0 for x in lrs)
    last_step = rows[-1][0]
    want = 10 ** float(np.interp(last_step, kept.step, np.log10(kept.lr)))
    assert math.isclose(remote.lr(last_step), want)


@pytest.mark.parametrize("step", [None, float("nan"), float("inf"), "x", -5, 2.5, 101])
def test_a_bad_step_never_reaches_the_training_loop(
    step: object, caplog: pytest.LogCaptureFixture
) -> None:
    """A step that is no step of this run is refused and logged; the plan stands."""
    caplog.set_level(logging.WARNING, logger="tracker_sched.remote")
    remote = RemoteAdvisor(f"http://127.0.0.1:{free_port()}", 100, initial_lr=0.05,
                           timeout=0.5, retries=0)  # nothing listens: down at start
    assert remote.wait(10)
    before = remote.plan
    rec = remote.observe(step, train_loss=1.0, lr=0.07)  # type: ignore[arg-type]
    assert rec == before and rec.status == "fallback"
    assert any("observation refused" in r.getMessage() for r in caplog.records)
    assert remote.lr(5) == 0.05  # nothing recorded from the bad row
    assert remote.observe(6, train_loss=1.0, lr=0.07).status == "fallback"
    assert remote.lr(6) == 0.07  # and the advisor goes on
