"""Sweep design: the confounding diagnostic, suggested runs, their file formats, the CLI.

The "does adding the suggestions make the sweep learnable" test simulates the
suggested runs with a toy training curve (loss falls with the cumulative lr):
the diagnostic reads only each run's lr, so the toy curve is only there to make
the runs valid sweep members.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from tests.tiny import FIXTURE
from tracker_sched.cli import main
from tracker_sched.data.validation import validate_sweep
from tracker_sched.design.confounding import confounding
from tracker_sched.design.export import (
    format_suggestions,
    mlflow_params,
    read_planned_runs,
    wandb_sweep_config,
)
from tracker_sched.design.suggest import (
    MLFLOW_SCHEDULE_PARAM,
    SCHEDULE_PARAM,
    KnotSchedule,
    SuggestedRun,
    suggest_runs,
    sweep_summary,
)
from tracker_sched.errors import InputError
from tracker_sched.schema import RunRecord, Series
from tracker_sched.sources.files import read_sweep


@pytest.fixture(scope="module")
def sweep() -> list[RunRecord]:
    return read_sweep(FIXTURE).runs


def simulated_run(name: str, schedule: KnotSchedule, total: int = 400,
                  config: dict[str, Any] | None = None) -> RunRecord:
    """A run that follows ``schedule``; its loss falls with the cumulative lr."""
    steps = list(range(4, total + 1, 4))
    lr = np.array([schedule.lr_at(s, total) for s in steps])
    progress = np.cumsum(lr) / (np.sum(lr) + 1e-12)
    loss = 0.1 + 2.0 * np.exp(-3.0 * progress) + 0.5 * lr / lr.max()
    val = 0.9 - 0.5 * np.exp(-3.0 * progress)
    return RunRecord(
        run_id=name, total_steps=total, config=config or {"schedule": name},
        lr=Series(step=steps, value=lr.tolist()),
        train_loss=Series(step=steps, value=loss.tolist()),
        val_metric=Series(step=steps, value=val.tolist()),
        metric_keys={"train_loss": "train_loss", "lr": "lr", "val_metric": "val_acc"},
    )


def randomised_sweep(n: int, seed: int, config: dict[str, Any] | None = None
                     ) -> list[RunRecord]:
    """Runs whose log lr is piecewise linear through 5 random knots in [1e-3.5, 1e-1.5]."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tau = np.concatenate([[0.0], np.sort(rng.uniform(0.05, 0.95, 5)), [1.0]])
        sched = KnotSchedule(tau=tau.tolist(), lr=(10.0 ** rng.uniform(-3.5, -1.5, 7)).tolist())
        out.append(simulated_run(f"rand-{i}", sched, config={**(config or {}), "run": i}))
    return out


def offsets_at_knots(s: SuggestedRun, summary_runs: dict[str, list[float | None]]) -> np.ndarray:
    """log10 lr of the suggestion minus its base run's log10 lr, at the suggestion's knots."""
    base = np.array(summary_runs[s.base_run_id], dtype=np.float64)
    g = np.linspace(0.0, 1.0, base.size)
    return np.log10(s.schedule.lr) - np.interp(s.schedule.tau, g, base)


# ------------------------------------------------------------------ diagnostic


def test_parametric_fixture_sweep_is_too_confounded(sweep: list[RunRecord]) -> None:
    rep = confounding(sweep)
    # constant, cosine, one-cycle, step: four shapes, whatever the peak or seed
    assert rep.runs == 48 and rep.distinct_shapes == 4
    assert rep.shape_dims <= 3  # four shapes span at most three directions around their mean
    assert rep.breaking_shapes == 0 and rep.early_low_shapes == 0
    assert not rep.learnable and len(rep.reasons) == 3
    assert rep.summary().startswith("too confounded to plan from: 48 runs, 4 lr shapes")
    # six peaks over 2.5 decades: the absolute lr varies a lot, the shape far less
    assert rep.lr_spread_dex > 0.7 > rep.shape_spread_dex
    runs = np.asarray(rep.coverage.runs)
    assert runs.shape[0] == 10 and (runs.sum(axis=1) >= 48).all()
    assert 0.0 <= rep.coverage.shared_fraction <= 1.0


def test_one_family_at_several_peaks_has_one_shape(sweep: list[RunRecord]) -> None:
    cosine = [r for r in sweep if r.config["schedule"] == "cosine"]
    rep = confounding(cosine)
    assert (rep.distinct_shapes, rep.shape_dims, rep.learnable) == (1, 0, False)
    assert "only 1 distinct lr shape" in rep.reasons[0]


def test_randomised_schedules_are_learnable() -> None:
    rep = confounding(randomised_sweep(16, seed=1))
    assert rep.learnable, rep.reasons
    assert rep.distinct_shapes == 16 and rep.shape_dims >= 6 and rep.breaking_shapes >= 3
    assert rep.summary().startswith("learnable: 16 runs")


def test_a_validated_sweep_gives_the_same_report(sweep: list[RunRecord]) -> None:
    assert confounding(validate_sweep(sweep)) == confounding(sweep)


def test_confounding_bad_input(sweep: list[RunRecord]) -> None:
    with pytest.raises(InputError, match="no usable runs"):
        confounding([])
    no_lr = RunRecord(run_id="x", total_steps=10,
                      train_loss=Series(step=[1, 2, 3, 4, 5], value=[1.0] * 5))
    with pytest.raises(InputError, match="no usable runs"):
        confounding([no_lr])
    with pytest.raises(InputError, match="grid_points"):
        confounding(sweep, grid_points=3)


# ------------------------------------------------------------------ suggestions


def test_suggestions_are_deterministic_per_seed(sweep: list[RunRecord]) -> None:
    a = suggest_runs(sweep, n=6, seed=3)
    assert a == suggest_runs(sweep, n=6, seed=3)
    assert a != suggest_runs(sweep, n=6, seed=4)
    assert [s.kind for s in a] == ["perturbed", "non_monotone", "hold_low"] * 2


def test_suggestions_stay_in_band_smooth_and_positive(sweep: list[RunRecord]) -> None:
    summary = sweep_summary(sweep)
    traces = {t.run_id: t.log_lr for t in summary.top_runs}
    suggestions = suggest_runs(sweep, n=12, seed=0, summary=summary)
    assert suggestions[0].base_run_id == summary.best_run_id
    assert len({s.base_run_id for s in suggestions}) == 3  # the three best configurations
    for s in suggestions:
        lr = np.asarray(s.schedule.lr)
        assert (lr > 0).all() and np.isfinite(lr).all()
        assert lr.max() <= summary.lr_max * (1 + 1e-9)  # never above what the sweep ran
        d = offsets_at_knots(s, traces)
        assert np.abs(d).max() <= s.band_dex + 1e-9
        assert abs(d[0]) < 1e-9  # starts like its base run
        # smooth: the offset moves at most 0.2 decade per 1% of training (a step
        # schedule's drop of 1 decade at once would fail this)
        slope = np.abs(np.diff(d) / np.diff(s.schedule.tau))
        assert slope.max() <= 20.0
        assert np.abs(d).max() > 0.05  # and it does move away from the base


def test_lr_at_follows_the_knots() -> None:
    s = KnotSchedule(tau=[0.0, 0.5, 1.0], lr=[1e-3, 1e-1, 1e-2])
    assert s.lr_at(0, 100) == pytest.approx(1e-3)
    assert s.lr_at(50, 100) == pytest.approx(1e-1)
    assert s.lr_at(25, 100) == pytest.approx(1e-2)  # log-linear between knots
    assert s.lr_at(500, 100) == pytest.approx(1e-2)  # past the budget: the last knot
    run = SuggestedRun(name="r", kind="perturbed", base_run_id="b", config={}, total_steps=200,
                       band_dex=0.5, schedule=s)
    assert run.lr_at(100) == pytest.approx(1e-1)
    with pytest.raises(InputError, match="total_steps"):
        s.lr_at(1, 0)


@pytest.mark.parametrize("bad", [
    {"tau": [0.0, 0.5, 0.4, 1.0], "lr": [1.0] * 4},
    {"tau": [0.1, 1.0], "lr": [1.0, 1.0]},
    {"tau": [0.0, 1.0], "lr": [1.0, -1.0]},
    {"tau": [0.0, 1.0], "lr": [1.0, float("nan")]},
    {"tau": [0.0, 1.0], "lr": [1.0]},
])
def test_bad_schedules_are_refused(bad: dict[str, list[float]]) -> None:
    with pytest.raises(ValidationError):
        KnotSchedule.model_validate(bad)
    with pytest.raises(InputError, match="not a tracker-sched schedule"):
        KnotSchedule.from_param(json.dumps(bad))


def test_suggest_bad_input(sweep: list[RunRecord]) -> None:
    with pytest.raises(InputError, match="n must be a positive"):
        suggest_runs(sweep, n=0)
    with pytest.raises(InputError, match="n must be a positive"):
        suggest_runs(sweep, n=-3)
    with pytest.raises(InputError, match="unknown families"):
        suggest_runs(sweep, families=["zigzag"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="band_dex"):
        suggest_runs(sweep, band_dex=0.0)
    with pytest.raises(InputError, match="no usable runs"):
        suggest_runs([])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adding_the_suggestions_makes_the_sweep_learnable(
    sweep: list[RunRecord], seed: int
) -> None:
    before = confounding(sweep)
    suggestions = suggest_runs(sweep, n=12, seed=seed)
    added = [simulated_run(s.name, s.schedule, s.total_steps, dict(s.config))
             for s in suggestions]
    after = confounding(sweep + added)
    assert not before.learnable
    assert after.learnable, after.reasons
    assert after.distinct_shapes == before.distinct_shapes + 12


# ------------------------------------------------------------------ formats


def test_wandb_sweep_config_reads_back_as_json_and_yaml(sweep: list[RunRecord]) -> None:
    # an exponent without a dot (1e-05) is a string to PyYAML: the writer must avoid it
    runs = randomised_sweep(4, seed=2, config={"weight_decay": 1e-05, "opt": {"beta": 0.9}})
    suggestions = suggest_runs(runs, n=5, seed=0)
    text = format_suggestions(suggestions, "wandb", metric="val_acc", goal="maximize",
                              program="train.py")
    as_json = json.loads(text)
    assert yaml.safe_load(text) == as_json  # `wandb sweep FILE` parses it with PyYAML
    assert as_json == wandb_sweep_config(suggestions, metric="val_acc", goal="maximize",
                                         program="train.py")
    assert as_json["method"] == "grid" and as_json["program"] == "train.py"
    assert as_json["metric"] == {"name": "val_acc", "goal": "maximize"}
    params = as_json["parameters"]
    assert params["weight_decay"] == {"value": 1e-05}
    values = params[SCHEDULE_PARAM]["values"]
    assert len(values) == 5
    for s, v in zip(suggestions, values, strict=True):
        assert KnotSchedule.from_param(v) == s.schedule
        obj = json.loads(v)
        common = {k: p["value"] for k, p in params.items() if k != SCHEDULE_PARAM}
        assert {**common, **obj["config"]} == s.config  # shared keys + this run's own
        assert obj["name"] == s.name


def test_mlflow_params_log_to_a_real_store(sweep: list[RunRecord], tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    suggestions = suggest_runs(sweep, n=3, seed=0)
    text = format_suggestions(suggestions, "mlflow")
    lines = [json.loads(ln) for ln in text.splitlines()]
    assert lines == mlflow_params(suggestions) and len(lines) == 3
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("suggested", artifact_location=str(tmp_path / "art"))
    params = lines[0]
    run = client.create_run(exp, run_name=params["tracker_sched.name"])
    client.log_batch(run.info.run_id, params=[
        mlflow.entities.Param(k, str(v)) for k, v in params.items()])
    stored = client.get_run(run.info.run_id).data.params
    assert KnotSchedule.from_param(stored[MLFLOW_SCHEDULE_PARAM]) == suggestions[0].schedule
    assert stored["peak_lr"] == str(suggestions[0].config["peak_lr"])


def test_planned_runs_file_round_trips(sweep: list[RunRecord], tmp_path: Path) -> None:
    suggestions = suggest_runs(sweep, n=4, seed=5)
    path = tmp_path / "planned.jsonl"
    path.write_text(format_suggestions(suggestions, "files", report=confounding(sweep)))
    header = json.loads(path.read_text().splitlines()[0])
    assert header["tracker_sched_planned_runs"] == 1
    assert header["confounding"].startswith("too confounded")
    assert read_planned_runs(path) == suggestions

    newer = tmp_path / "newer.jsonl"
    newer.write_text('{"tracker_sched_planned_runs": 99}\n')
    with pytest.raises(InputError, match="upgrade"):
        read_planned_runs(newer)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(path.read_text() + '{"name": "x"}\n')
    with pytest.raises(InputError, match=r"broken.jsonl:6: not a planned run"):
        read_planned_runs(broken)
    with pytest.raises(InputError, match="cannot read"):
        read_planned_runs(tmp_path / "missing.jsonl")
    null_header = tmp_path / "null.jsonl"
    null_header.write_text('{"tracker_sched_planned_runs": null}\n')
    with pytest.raises(InputError, match="not a planned run"):
        read_planned_runs(null_header)


# ------------------------------------------------------------------ CLI


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_cli_writes_each_format(tmp_path: Path) -> None:
    target = tmp_path / "planned.jsonl"
    rc, out, _ = run_cli("suggest-runs", "--path", str(FIXTURE), "--n", "4", "--seed", "1",
                         "--format", "files", "--out", str(target))
    assert rc == 0
    assert out.splitlines()[0].startswith("too confounded to plan from: 48 runs")
    assert "wrote 4 suggested runs (files)" in out
    assert len(read_planned_runs(target)) == 4

    rc, out, err = run_cli("suggest-runs", "--path", str(FIXTURE), "--n", "2")
    assert rc == 0 and err.startswith("too confounded")
    cfg = json.loads(out)  # default: the W&B sweep config, on stdout
    assert cfg["metric"] == {"name": "val_acc", "goal": "maximize"}
    assert len(cfg["parameters"][SCHEDULE_PARAM]["values"]) == 2

    rc, out, _ = run_cli("suggest-runs", "--path", str(FIXTURE), "--n", "3",
                         "--format", "mlflow")
    assert rc == 0 and len([json.loads(ln) for ln in out.splitlines()]) == 3


def test_cli_bad_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for argv, message in [
        (["--path", str(empty)], "no usable runs"),
        (["--path", str(FIXTURE), "--n", "0"], "n must be a positive"),
        (["--path", str(tmp_path / "nope.jsonl")], "does not exist"),
        (["--path", str(FIXTURE), "--out", str(tmp_path / "no" / "dir" / "x.json")],
         "cannot write --out"),
    ]:
        rc, _, err = run_cli("suggest-runs", *argv)
        assert rc == 1, argv
        last = err.strip().splitlines()[-1]
        assert last.startswith("tracker-sched: error:") and message in last, err


def test_cli_as_a_subprocess(tmp_path: Path) -> None:
    target = tmp_path / "sweep.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tracker_sched.cli", "suggest-runs", "--path", str(FIXTURE),
         "--n", "3", "--format", "wandb", "--program", "train.py", "--out", str(target)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(target.read_text())
    assert cfg["program"] == "train.py"
    lrs = [KnotSchedule.from_param(v).lr for v in cfg["parameters"][SCHEDULE_PARAM]["values"]]
    assert len(lrs) == 3 and all(math.isfinite(x) and x > 0 for lr in lrs for x in lr)
