"""Property tests (Hypothesis) at every boundary where outside data comes in (issue 15).

The invariants, for any input:

- either a clear :class:`~tracker_sched.errors.TrackerSchedError` or a valid result, never
  another exception;
- never a non-finite or non-positive learning rate;
- never a "planned" status from less than a full window (the one warm-up rule,
  :func:`tracker_sched.advising.serving.window_ready`, from the run's first logged step).

Boundaries: the run schema and its validation, the sweep file reader, the history reader of
``tracker-sched recommend``, ``Advisor.observe``/``lr``, and the serving request (the served
model's ``predict``). Examples are bounded and derandomised so that CI runs them in seconds,
the same ones every time.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.tiny import FIXTURE, logged_rows
from tracker_sched.advising.advisor import Advisor
from tracker_sched.advising.serving import (
    answer,
    first_logged,
    observations_from_records,
    parse_request,
    window_ready,
)
from tracker_sched.bundle.folder import Bundle
from tracker_sched.cli import read_history
from tracker_sched.data.validation import FLOAT32_MAX, validate_sweep
from tracker_sched.errors import TrackerSchedError
from tracker_sched.fit.generative import FitResult
from tracker_sched.limits import MAX_STEPS
from tracker_sched.schema import Recommendation, RunRecord
from tracker_sched.sources.files import read_sweep

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
PLANS = settings(FAST, max_examples=25)

# Numbers as trackers and hostile users send them.
anything_numeric = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 1e308, -1e308, 1e-320, 2**62, 10**12, 10**12 + 1]),
)
junk = st.one_of(st.none(), st.text(max_size=5), st.booleans(), anything_numeric,
                 st.lists(st.integers(), max_size=2))


def _check_rec(rec: Recommendation) -> None:
    assert math.isfinite(rec.lr_now) and rec.lr_now > 0
    assert all(math.isfinite(x) and x > 0 for x in rec.schedule.lr)


# --------------------------------------------------------------------------- run schema


def series_strategy() -> st.SearchStrategy[dict[str, Any]]:
    return st.integers(0, 12).flatmap(lambda n: st.fixed_dictionaries({
        "step": st.lists(st.integers(-5, 2000), min_size=n, max_size=n),
        "value": st.lists(anything_numeric, min_size=n, max_size=n),
    }))


run_dict = st.fixed_dictionaries({
    "run_id": st.text(min_size=1, max_size=8),
    "total_steps": st.one_of(st.none(), st.integers(-10, 3000)),
    "train_loss": st.one_of(st.none(), series_strategy()),
    "lr": st.one_of(st.none(), series_strategy()),
    "val_metric": st.one_of(st.none(), series_strategy()),
    "config": st.dictionaries(st.text(max_size=6), junk, max_size=3),
})


@FAST
@given(st.lists(run_dict, max_size=4))
def test_run_schema_and_validation(raw_runs: list[dict[str, Any]]) -> None:
    records = []
    for raw in raw_runs:
        try:
            records.append(RunRecord.model_validate(raw))
        except ValidationError:
            continue  # the schema refused it (read_sweep turns this into an issue)
    checked = validate_sweep(records)
    kept = {r.run_id for r in checked.runs}
    excluded = {i.run_id for i in checked.issues if i.action == "excluded"}
    assert kept | excluded == {r.run_id for r in records}  # nothing lost silently
    for run in checked.runs:
        for role, series in run.series.items():
            assert series.step.size >= 5
            assert np.all(np.diff(series.step) > 0) and series.step.min() >= 0
            assert series.step.max() <= run.total_steps
            assert np.all(np.abs(series.value) <= FLOAT32_MAX), role
        assert np.all(run.series["lr"].value > 0)


# --------------------------------------------------------------------------- sweep file reader

json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=6),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
sweep_line = st.one_of(
    st.text(max_size=40),
    json_value.map(json.dumps),
    run_dict.map(lambda d: json.dumps(d, allow_nan=True)),
    st.just('{"tracker_sched_sweep": 99}'),
)


@FAST
@given(st.lists(sweep_line, max_size=6))
def test_sweep_file_reader(tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> None:
    path = tmp_path_factory.mktemp("sweep") / "s.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        result = read_sweep(path)
    except TrackerSchedError:
        return
    content = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    assert len(result.runs) + len(result.issues) <= len(content)
    assert all(isinstance(r, RunRecord) for r in result.runs)


# --------------------------------------------------------------------------- history reader

cell = st.one_of(st.just(""), st.text(max_size=6).filter(lambda t: "," not in t
                                                         and "\n" not in t
                                                         and "\r" not in t
                                                         and '"' not in t),
                 anything_numeric.map(repr))


@FAST
@given(st.lists(st.tuples(cell, cell, cell, cell), max_size=6), st.booleans())
def test_history_reader(tmp_path_factory: pytest.TempPathFactory,
                        rows: list[tuple[str, str, str, str]], as_json: bool) -> None:
    path = tmp_path_factory.mktemp("hist") / "h.txt"
    keys = ("step", "train_loss", "val_metric", "lr")
    if as_json:
        path.write_text("\n".join(json.dumps(dict(zip(keys, r, strict=True))) for r in rows))
    else:
        path.write_text("\n".join([",".join(keys)] + [",".join(r) for r in rows]))
    try:
        obs = read_history(str(path))
    except TrackerSchedError:
        return
    for o in obs:
        assert 0 <= o.step <= MAX_STEPS
        for key in ("train_loss", "val_metric", "lr"):
            v = getattr(o, key)
            assert v is None or math.isfinite(v)


# --------------------------------------------------------------------------- the advisor


@pytest.fixture(scope="module")
def bundle(tiny_fit: FitResult) -> Bundle:
    return tiny_fit.bundle


REAL = logged_rows(read_sweep(FIXTURE).runs[7])
observation = st.tuples(
    st.one_of(st.integers(-3, 900), anything_numeric, junk),
    st.fixed_dictionaries({}, optional={
        "train_loss": st.one_of(anything_numeric, st.none()),
        "val_metric": st.one_of(anything_numeric, st.none()),
        "lr": st.one_of(anything_numeric, st.none()),
    }),
)
# A real run with some observations replaced by hostile ones: plans do happen.


def _edited(edits: list[tuple[int, tuple[Any, dict[str, Any]]]]) -> list[tuple[Any, Any]]:
    rows: list[tuple[Any, Any]] = list(REAL)
    for i, obs in edits:
        rows[i] = obs
    return rows


perturbed_run = st.lists(st.tuples(st.integers(0, len(REAL) - 1), observation),
                         max_size=8).map(_edited)


def _assert_window(adv: Advisor, rec: Recommendation) -> None:
    if rec.status == "planned":
        first = min(s[0] for s, _ in adv._obs.values() if s)
        assert window_ready(adv.bundle, rec.step, adv.total_steps, first)


@PLANS
@given(st.one_of(perturbed_run, st.lists(observation, max_size=40)),
       st.sampled_from([1, 5, 10]), st.sampled_from([1, None]),
       st.lists(st.one_of(anything_numeric, junk), max_size=5))
def test_advisor_observe_and_lr(bundle: Bundle, rows: list[tuple[Any, dict[str, Any]]],
                                replan_every: int, max_replans: int | None,
                                probes: list[Any]) -> None:
    adv = Advisor(bundle, 840, replan_every=replan_every, max_replans=max_replans)
    for step, values in rows:
        rec = adv.observe(step, **values)
        _check_rec(rec)
        _assert_window(adv, rec)
        for probe in (step, *probes):
            lr = adv.lr(probe)
            assert math.isfinite(lr) and lr > 0


# --------------------------------------------------------------------------- serving request

row_strategy = st.fixed_dictionaries({"step": st.one_of(st.integers(-2, 900), junk)}, optional={
    "train_loss": st.one_of(anything_numeric, junk),
    "val_metric": st.one_of(anything_numeric, junk),
    "lr": st.one_of(anything_numeric, junk),
})
real_records = st.integers(1, len(REAL)).map(
    lambda n: [{"step": s, **v} for s, v in REAL[:n]])


@PLANS
@given(st.one_of(real_records, st.lists(row_strategy, max_size=30)),
       st.one_of(st.integers(-5, 3000), anything_numeric, junk),
       st.one_of(st.none(), st.integers(-5, 3000), junk))
def test_serving_request(bundle: Bundle, records: list[dict[str, Any]], total: Any,
                         step: Any) -> None:
    try:
        obs = observations_from_records(records)
        request = parse_request({"observations": obs, "total_steps": total, "step": step})
        rec = answer(bundle, request)
    except TrackerSchedError:
        return
    _check_rec(rec)
    if rec.status == "planned":
        first = first_logged(request.observations)
        assert first is not None
        assert window_ready(bundle, rec.step, request.total_steps, first)


@PLANS
@given(st.one_of(real_records, st.lists(row_strategy, max_size=30)),
       st.fixed_dictionaries({}, optional={
           "total_steps": st.one_of(st.integers(-5, 3000), anything_numeric, junk),
           "step": st.one_of(st.integers(-5, 3000), anything_numeric, junk),
           "current": st.one_of(st.text(max_size=20), st.just('{"step": [0], "lr": [-1]}'),
                                st.just('{"step": [0, 840], "lr": [0.1, 0.01]}')),
       }))
def test_served_model_predict(served_model: Any, records: list[dict[str, Any]],
                              params: dict[str, Any]) -> None:
    import pandas as pd

    try:
        frame = pd.DataFrame(records)
    except Exception:  # pandas itself refuses (MLflow would answer 400 before our code)
        return
    try:
        out = served_model.predict(None, frame, params=params)
    except TrackerSchedError:
        return
    row = out.iloc[0].to_dict()
    assert math.isfinite(row["lr_now"]) and row["lr_now"] > 0
    assert all(math.isfinite(x) and x > 0 for x in json.loads(row["schedule"])["lr"])


@pytest.fixture(scope="module")
def served_model(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("mlflow")
    from types import SimpleNamespace

    from tracker_sched.stores.mlflow_pyfunc import TrackerSchedModel

    folder = bundle.save(tmp_path_factory.mktemp("served") / "bundle")
    model = TrackerSchedModel()
    model.load_context(SimpleNamespace(artifacts={"bundle": str(folder)}))
    return model
