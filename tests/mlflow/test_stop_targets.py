"""The stop decision through the ``mlflow deployments`` target and the remote advisor, with a
generative bundle (a decision with odds) and a control bundle (no decision, and why); both
answers also say why the bundle follows its planner mode (``mode_reason``).

The remote advisor talks to MLflow's own scoring app (``mlflow.pyfunc.scoring_server``, what
``mlflow models serve`` runs) served in this process by uvicorn on loopback: the real request
parsing and model, without a server process to start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")

from benchmarks.mlflow_server import free_port
from tests.tiny import history_until, logged_rows
from tracker_sched.advising.remote import RemoteAdvisor
from tracker_sched.advising.stopping import NO_STOP_CONTROL, decide_once
from tracker_sched.bundle.folder import Bundle
from tracker_sched.integrations.mlflow import deployments
from tracker_sched.model.stop_odds import StopDecision, StopRequest, StopRule
from tracker_sched.planning.control import mode_reason

CUT = 120  # the live run has logged this far


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(deployments.ENV_HOME, str(tmp_path / "home"))
    return deployments.TrackerSchedDeploymentClient("tracker-sched")


def _window(run: Any) -> list[dict[str, Any]]:
    return [{"step": s, **r, "total_steps": 200} for s, r in logged_rows(run) if s <= CUT]


def test_deployments_target_answers_stop_beside_the_lr(client: Any, stop_fit, control_bundle,
                                                       tmp_path: Path) -> None:
    fit, sweep = stop_fit
    worst = sweep.configs[-8]
    run = sweep.run(worst.family, worst.peak_lr, 5)
    ask = StopRequest(incumbent=sweep.configs[0].final_val,
                      rule=StopRule(threshold=0.05, patience=2), below=1)
    client.create_deployment("gen", str(fit.bundle.save(tmp_path / "gen")))
    got = client.predict("gen", _window(run), params={"stop": ask.model_dump_json()})
    want = decide_once(fit.bundle, history_until(run, CUT), CUT, sweep.total_steps, ask)
    assert got["lr_now"] > 0 and StopDecision.model_validate(got["stop"]) == want
    assert want.stop  # the client's one decision below the threshold + this one
    assert got["mode"] == "generative" and got["mode_reason"] == mode_reason(fit.bundle)
    # The ask as a column of the first row (what an --input-path file carries), as a dict.
    rows = _window(run)
    rows[0]["stop"] = ask.model_dump(mode="json")
    assert StopDecision.model_validate(client.predict("gen", rows)["stop"]) == want
    # Not asked: no stop key; asked badly: one clear error.
    assert "stop" not in client.predict("gen", _window(run))
    with pytest.raises(Exception, match="stop request"):
        client.predict("gen", _window(run), params={"stop": '{"rule": {"threshold": 2}}'})
    # A control bundle answers the lr and says why it gives no stop decision.
    client.create_deployment("ctl", str(control_bundle.save(tmp_path / "ctl")))
    ctl = client.predict("ctl", _window(run), params={"stop": ask.model_dump_json()})
    assert ctl["lr_now"] > 0
    decision = StopDecision.model_validate(ctl["stop"])
    assert not decision.stop and decision.reason == NO_STOP_CONTROL
    assert ctl["mode_reason"] == mode_reason(control_bundle)
    assert ctl["mode_reason"].startswith("control: a control-mode bundle")


@pytest.fixture
def scoring_url(control_bundle: Bundle, tmp_path: Path) -> Iterator[str]:
    """MLflow's scoring app for the control bundle, served by uvicorn in a thread."""
    import mlflow.pyfunc
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from tracker_sched.stores.mlflow_pyfunc import (
        BUNDLE_ARTIFACT,
        TrackerSchedModel,
        model_signature,
    )

    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=TrackerSchedModel(),
                             artifacts={BUNDLE_ARTIFACT: str(control_bundle.save(
                                 tmp_path / "bundle"))},
                             signature=model_signature(),
                             pip_requirements=["tracker-sched"])  # no inference subprocess
    app = scoring_server.init(mlflow.pyfunc.load_model(str(model_dir)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "scoring app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_remote_advisor_with_a_served_control_bundle_says_why_not(
        scoring_url: str, stop_fit, control_bundle: Bundle) -> None:
    _, sweep = stop_fit
    worst = sweep.configs[-1]
    run = sweep.run(worst.family, worst.peak_lr, 5)
    remote = RemoteAdvisor(scoring_url, sweep.total_steps, timeout=10.0)
    # The warm-up answer already names the mode and says why, as the local Advisor does.
    assert remote.mode == "control" and remote.mode_reason == mode_reason(control_bundle)
    for step, row in logged_rows(run):
        if step > CUT:
            break
        remote.observe(step, **row)
        assert remote.wait(30)
    remote.stop_decision(sweep.configs[0].final_val)  # asks in the background
    assert remote.wait(30)
    got = remote.stop_decision(sweep.configs[0].final_val)
    assert not got.stop and got.reason == NO_STOP_CONTROL, got.reason
    # The server's control planner answered the lr (this tiny model's plan may be refused
    # and fall back to the run's own lr: either way the lr keeps coming).
    assert remote.plan.mode == "control" and remote.lr(CUT) > 0, remote.plan
    remote.close()
