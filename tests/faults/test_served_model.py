"""Fault matrix: a served model that hangs, fails or answers garbage (loopback stub).

What must survive every row: the training loop. ``observe`` and ``lr`` return at once (the HTTP
request runs off the training thread), the run keeps the plan it follows, its lr stays finite
and positive, and the reason is recorded. Issue 15, item 8: ``RemoteAdvisor.observe`` used to
make its request on the training thread, for up to timeout x (retries + 1) plus backoff.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from tests.faults.stub_server import Reply, plan_reply, stub_server
from tracker_sched.advising.remote import RemoteAdvisor

WARMUP = plan_reply("warmup", lr=0.05, ready_step=5)
FAST_S = 0.05  # what one observe() may take, at most, whatever the server does


def _feed(remote: RemoteAdvisor, steps: range) -> float:
    """Observe ``steps``; return the slowest call, in seconds."""
    slowest = 0.0
    for step in steps:
        t0 = time.perf_counter()
        remote.observe(step, train_loss=1.0, val_metric=0.5, lr=0.05)
        lr = remote.lr(step)
        slowest = max(slowest, time.perf_counter() - t0)
        assert math.isfinite(lr) and lr > 0
    return slowest


def test_item8_a_hanging_server_never_blocks_the_training_loop() -> None:
    with stub_server() as stub:
        stub.script[1] = WARMUP
        stub.default = plan_reply("planned", lr=0.01, delay=1.5)
        remote = RemoteAdvisor(stub.url, 100, timeout=5.0, retries=0, replan_every=2)
        assert remote.plan.status == "warmup"
        warm = remote.plan.schedule
        slowest = _feed(remote, range(1, 12))
        assert slowest < FAST_S, f"observe took {slowest:.3f} s"
        assert remote.plan.status == "warmup" and remote.plan.schedule == warm  # until answered
        assert remote.wait(10)
        assert remote.plan.status == "planned" and remote.lr(0) == pytest.approx(0.01)
        assert stub.requests == 2  # one plan (max_replans=1), asked once
        remote.close()


def test_item8_requests_are_bounded_while_one_is_in_flight() -> None:
    with stub_server() as stub:
        stub.script[1] = WARMUP
        stub.default = plan_reply("planned", delay=1.0)
        remote = RemoteAdvisor(stub.url, 1000, timeout=5.0, retries=0, replan_every=1,
                               max_replans=None)
        assert _feed(remote, range(5, 200)) < FAST_S
        assert stub.requests <= 3  # the warm-up, the one in flight, at most one queued
        remote.close()


def test_item8_close_returns_with_a_request_in_flight() -> None:
    with stub_server() as stub:
        stub.script[1] = WARMUP
        stub.default = plan_reply("planned", delay=3.0)
        remote = RemoteAdvisor(stub.url, 100, timeout=5.0, retries=0, replan_every=1)
        _feed(remote, range(5, 8))
        t0 = time.perf_counter()
        remote.close(timeout=0.2)
        assert time.perf_counter() - t0 < 1.0
        sent = stub.requests
        assert _feed(remote, range(8, 30)) < FAST_S  # a closed advisor still answers lr()
        assert stub.requests == sent and remote.plan.status == "warmup"


GARBAGE = {
    "not json": Reply(b"<html>502 Bad Gateway</html>"),
    "no predictions": Reply(b'{"result": 1}'),
    "empty predictions": Reply(b'{"predictions": []}'),
    "negative lr": Reply(json.dumps({"predictions": [{
        "status": "planned", "step": 0, "lr_now": -1.0,
        "schedule": '{"step": [0, 10], "lr": [-1.0, 0.1]}'}]}).encode()),
    "infinite lr": Reply(b'{"predictions": [{"status": "planned", "step": 0, "lr_now": 1e999,'
                         b' "schedule": "{\\"step\\": [0], \\"lr\\": [1e999]}"}]}'),
    "schedule not json": Reply(json.dumps({"predictions": [{
        "status": "planned", "step": 0, "lr_now": 0.1, "schedule": "[[["}]}).encode()),
    "server error": Reply(b'{"message": "boom"}', status=500),
    "connection reset": Reply(reset=True),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_answers_keep_the_plan(kind: str) -> None:
    with stub_server() as stub:
        stub.script[1] = WARMUP
        stub.default = GARBAGE[kind]
        remote = RemoteAdvisor(stub.url, 100, timeout=2.0, retries=1, replan_every=2)
        warm = remote.plan.schedule
        assert _feed(remote, range(1, 12)) < FAST_S
        assert remote.wait(10)
        _feed(remote, range(12, 14))
        plan = remote.plan
        assert plan.status == "fallback" and plan.schedule == warm, plan
        assert plan.reason.startswith("server:"), plan.reason
        remote.close()
