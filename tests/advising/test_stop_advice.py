"""The stop decision beside the lr: the in-process Advisor and the served pyfunc model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.tiny import history_until, logged_rows
from tracker_sched.advising.advisor import Advisor
from tracker_sched.advising.stopping import Stopper, decide_once
from tracker_sched.model.stop_odds import StopDecision, StopRequest, StopRule


def test_advisor_answers_a_stop_decision_beside_the_lr(stop_fit) -> None:
    fit, sweep = stop_fit
    worst = sweep.configs[-8]
    run = sweep.run(worst.family, worst.peak_lr, 5)
    advisor = Advisor(fit.bundle, sweep.total_steps)
    rule = StopRule(threshold=0.05, patience=2)
    incumbent = sweep.configs[0].final_val
    stopper = Stopper(fit.bundle, sweep.total_steps, rule)
    decisions = []
    for step, row in logged_rows(run):
        advisor.observe(step, **row)
        assert advisor.lr(step) > 0  # the lr keeps coming
        got = advisor.stop_decision(incumbent, rule=rule)
        want = stopper.decide(history_until(run, step), step, incumbent)
        assert got == want, step  # the advisor's history is the run's
        decisions.append(got)
        if got.stop:
            break
    assert decisions[-1].stop and decisions[-1].p_beat < 0.05
    assert not decisions[0].stop and "window" in decisions[0].reason
    # Never raises: garbage incumbents are decisions not to stop.
    for bad in (float("nan"), "x", float("inf")):
        d = advisor.stop_decision(bad)  # type: ignore[arg-type]
        assert isinstance(d, StopDecision) and not d.stop and "failed" in d.reason


def test_served_model_answers_stop_beside_the_lr(stop_fit, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from tracker_sched.errors import InputError
    from tracker_sched.stores.mlflow_pyfunc import TrackerSchedModel, model_signature

    fit, sweep = stop_fit
    folder = fit.bundle.save(tmp_path / "bundle")
    model = TrackerSchedModel()
    model.load_context(SimpleNamespace(artifacts={"bundle": str(folder)}))
    worst = sweep.configs[-8]
    run = sweep.run(worst.family, worst.peak_lr, 5)
    rows = pd.DataFrame([{"step": s, **r} for s, r in logged_rows(run) if s <= 120])
    ask = StopRequest(incumbent=sweep.configs[0].final_val,
                      rule=StopRule(threshold=0.05, patience=2), below=1)
    out = model.predict(None, rows, {"total_steps": sweep.total_steps, "step": 120,
                                     "stop": ask.model_dump_json()})
    row = out.iloc[0]
    assert row["lr_now"] > 0 and row["status"] in ("planned", "fallback")
    got = StopDecision.model_validate_json(row["stop"])
    want = decide_once(fit.bundle, history_until(run, 120), 120, sweep.total_steps, ask)
    assert got == want and got.stop  # below=1 from the client + this one: patience met
    assert "stop" in [c.name for c in model_signature().outputs.inputs]
    # Not asked: the column is empty; asked badly: one clear error.
    plain = model.predict(None, rows, {"total_steps": sweep.total_steps})
    assert plain.iloc[0]["stop"] == ""
    with pytest.raises(InputError, match="stop"):
        model.predict(None, rows, {"total_steps": sweep.total_steps,
                                   "stop": json.dumps({"rule": {"threshold": 2}})})


def test_a_control_bundle_says_why_it_never_stops(control_bundle, stop_fit,
                                                  tmp_path: Path) -> None:
    """A control bundle forecasts the metric only under a given lr and has no calibrated
    odds: its decisions never stop a run and say why (the same reason in the Advisor and the
    served model), while the lr keeps coming."""
    pytest.importorskip("mlflow")
    from tracker_sched.advising.stopping import NO_STOP_CONTROL
    from tracker_sched.stores.mlflow_pyfunc import TrackerSchedModel

    _, sweep = stop_fit
    assert control_bundle.manifest.kind == "control_ode"
    worst = sweep.configs[-1]
    run = sweep.run(worst.family, worst.peak_lr, 5)
    advisor = Advisor(control_bundle, sweep.total_steps)
    assert advisor.mode == "control"
    incumbent = sweep.configs[0].final_val
    for step, row in logged_rows(run):
        advisor.observe(step, **row)
        assert advisor.lr(step) > 0
        d = advisor.stop_decision(incumbent, rule=StopRule(threshold=0.99, patience=1))
        assert not d.stop and d.reason == NO_STOP_CONTROL, (step, d.reason)
    model = TrackerSchedModel()
    folder = control_bundle.save(tmp_path / "control")
    model.load_context(SimpleNamespace(artifacts={"bundle": str(folder)}))
    rows = pd.DataFrame([{"step": s, **r} for s, r in logged_rows(run) if s <= 120])
    out = model.predict(None, rows, {"total_steps": sweep.total_steps,
                                     "stop": StopRequest(incumbent=incumbent).model_dump_json()})
    assert out.iloc[0]["lr_now"] > 0
    served = StopDecision.model_validate_json(out.iloc[0]["stop"])
    assert not served.stop and served.reason == NO_STOP_CONTROL
