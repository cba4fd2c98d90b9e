"""``--mode auto``: the rule (pure, on constructed evidence), the shipped rule is the one the
suite selects, one real auto fit end to end (decision stored, control ensemble carried, the
advisor follows and names it), the best planner reproduces the best schedule, old bundles."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.tiny import FIXTURE, history_until, logged_rows, tiny_config
from tracker_sched.advising.advisor import Advisor
from tracker_sched.advising.serving import answer, parse_request
from tracker_sched.bundle.folder import Bundle
from tracker_sched.cli import main
from tracker_sched.cli.parser import build_parser
from tracker_sched.design.auto_fit import AutoFit, fit_auto
from tracker_sched.errors import InputError
from tracker_sched.fit.control import ControlFitConfig
from tracker_sched.model.latent import ModelConfig
from tracker_sched.planning.auto import DEFAULT_RULE, AutoEvidence, AutoRule, decide
from tracker_sched.planning.best import simplify
from tracker_sched.planning.control import make_planner, mode_for
from tracker_sched.schema import RunRecord

ROOT = Path(__file__).parents[2]
SUITE = ROOT / "benchmarks" / "results" / "suite.json"
V0_1 = ROOT / "tests" / "fixtures" / "v0_1"
OPEN = AutoRule(control_min_ranking_mean=0.3, control_min_ranking_worst=0.0,
                generative_min_skill=0.75)


def ev(**kw: object) -> AutoEvidence:
    base: dict[str, object] = {"forecast_wins": 4, "forecast_comparisons": 8,
                               "control_fitted": True, "ranking_mean": 0.1,
                               "ranking_worst": -0.2, "learnable": False}
    base.update(kw)
    return AutoEvidence.model_validate(base)


# --------------------------------------------------------------------------- the rule


def test_each_outcome_is_reachable_and_says_why() -> None:
    mode, why = decide(ev(ranking_mean=0.8, ranking_worst=0.5), OPEN)
    assert mode == "control" and "0.80" in why
    mode, why = decide(ev(forecast_wins=7), OPEN)
    assert mode == "generative" and "7/8" in why
    mode, why = decide(ev(), OPEN)
    assert mode == "best"
    assert "0.10 is below 0.3" in why and "4/8" in why


def test_the_gate_gates_the_issue_case_and_flags_and_a_lowered_trust() -> None:
    # issue 11: "usable" was printed under a ranking mean of -0.09, worst -0.54
    issue = ev(ranking_mean=-0.09, ranking_worst=-0.54)
    assert decide(issue, OPEN)[0] == "best"
    assert decide(issue, AutoRule(control_min_ranking_mean=0.0))[0] == "best"
    flagged = ev(ranking_mean=0.95, ranking_worst=0.9, control_flags=["exploitable"])
    assert decide(flagged, OPEN)[0] == "best"
    assert decide(ev(forecast_wins=8), OPEN)[0] == "generative"
    assert decide(ev(forecast_wins=8, forecast_trust=False), OPEN)[0] == "best"
    both = ev(forecast_wins=8, ranking_mean=0.9, ranking_worst=0.5)
    assert decide(both, OPEN)[0] == "control"
    assert decide(both, OPEN.model_copy(update={"prefer": "generative"}))[0] == "generative"


def test_evidence_reads_the_suites_record_format() -> None:
    doc = json.loads(SUITE.read_text())
    record = doc["blocks"]["design"]["tasks"]["digits-sgd"]["evidence"]
    e = AutoEvidence.from_record(record)
    assert e.forecast_comparisons == 8 and e.forecast_wins is not None
    assert e.control_flags and e.control_fitted  # digits-sgd's control model was flagged
    assert e.ranking_mean == pytest.approx(record["control"]["ranking_mean"])
    assert AutoEvidence.from_record({**record, "forecast": {**record["forecast"],
                                     "forecast_trust": "lowered"}}).forecast_trust is False


def test_the_shipped_rule_is_the_one_the_suite_selected() -> None:
    selected = json.loads((ROOT / "benchmarks" / "results" / "auto_rule.json").read_text())
    assert AutoRule.model_validate(selected["selected"]["rule_fields"]) == DEFAULT_RULE
    assert selected["shipped"]["matches_selected"]


def test_the_rule_choice_prefers_best_and_validates_leave_one_task_out() -> None:
    from benchmarks.suite.auto_rule import choose, family, loto

    tasks = json.loads(SUITE.read_text())["blocks"]["design"]["tasks"]
    rules = family()
    assert rules[0] == AutoRule()  # always best: first, and what ties go to
    chosen, score = choose(tasks, rules)
    assert chosen == rules[0] or score >= 0.1
    held = loto(tasks, rules)["per_task"]
    assert set(held) == set(tasks)
    for name, r in held.items():  # each held-out task is judged by a rule chosen without it
        assert r["arm"] in ("a", "g", "c") and r["gain"]["n"] == len(tasks[name]["seeds"])


def test_simplify_keeps_a_step_drop_and_a_cosine_within_tolerance() -> None:
    x = np.linspace(0, 1, 2001)
    for y in (np.where(x < 0.5, -1.0, -2.0), np.log10(0.5 * (1 + np.cos(np.pi * x)) + 1e-3)):
        idx = simplify(x, y, 0.005)
        assert idx.size < 400
        assert np.abs(np.interp(x, x[idx], y[idx]) - y).max() <= 0.005 + 1e-12


# --------------------------------------------------------------------------- one real auto fit


@pytest.fixture(scope="module")
def auto_fit(fixture_runs: list[RunRecord]) -> AutoFit:
    """One small auto fit whose rule can pick control, so the control ensemble is fitted
    and carried (a few seconds)."""
    cc = ControlFitConfig(iterations=15, batch_size=16, members=1, window=10,
                          model=ModelConfig(latent_dim=4, ode_dim=8, hidden=16,
                                            encoder_hidden=16, step_points=2))
    return fit_auto(fixture_runs, tiny_config(), cc, workers=1, progress=False,
                    rule=AutoRule(control_min_ranking_mean=-1.0))


@pytest.fixture(scope="module")
def auto_dir(auto_fit: AutoFit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return auto_fit.bundle.save(tmp_path_factory.mktemp("auto") / "bundle")


def test_the_decision_and_the_control_ensemble_are_stored_and_load_back(
        auto_fit: AutoFit, auto_dir: Path) -> None:
    d = auto_fit.decision
    assert d.evidence["control_fitted"] and d.control is not None
    assert d.evidence["forecast_comparisons"] == 8
    assert d.mode == decide(AutoEvidence.model_validate(d.evidence),
                            AutoRule.model_validate(d.rule))[0]
    bundle = Bundle.load(auto_dir)
    assert bundle.manifest.planner == d
    assert len(bundle.control_models) == 1 and bundle.manifest.kind == "latent_ode"
    assert mode_for(bundle) == d.mode
    advisor = Advisor(bundle, total_steps=1000)  # auto: the bundle's decision
    assert advisor.mode == d.mode and advisor.mode_reason == d.reason
    assert advisor.plan.mode == d.mode


def test_every_mode_plans_from_the_auto_bundle(auto_dir: Path,
                                               fixture_runs: list[RunRecord]) -> None:
    bundle = Bundle.load(auto_dir)
    run = fixture_runs[0]
    total = run.total_steps
    history = history_until(run, total // 2)
    for mode in ("generative", "control", "best"):
        rec = make_planner(bundle, mode).plan(history, step=total // 2, total_steps=total)
        assert rec.mode == mode, (mode, rec.reason)
        assert rec.schedule.step[-1] == total


def test_an_auto_bundle_stops_in_every_mode(auto_dir: Path,
                                           fixture_runs: list[RunRecord]) -> None:
    """An auto bundle carries generative members beside its control ensemble: the stop
    decision (the generative forecast, calibrated) is the same whichever planner the lr
    follows, control included."""
    from tracker_sched.model.stop_odds import StopRule

    bundle = Bundle.load(auto_dir)
    assert bundle.manifest.stopping is not None
    run = fixture_runs[0]
    total = run.total_steps
    assert total is not None and run.train_loss is not None and run.val_metric is not None
    rule = StopRule(threshold=0.99, patience=1)  # a bar no run meets: it must stop
    decisions = {}
    for mode in ("control", "generative"):
        adv = Advisor(bundle, total_steps=total, mode=mode)  # type: ignore[arg-type]
        for step, row in logged_rows(run):
            if step > total // 2:
                break
            adv.observe(step, **row)
        decisions[mode] = adv.stop_decision(max(run.val_metric.value) + 1.0, rule=rule)
    assert decisions["control"].stop and decisions["control"].p_beat is not None
    assert decisions["control"] == decisions["generative"]


def test_the_best_mode_reproduces_the_best_configurations_schedule(
        auto_dir: Path, fixture_runs: list[RunRecord]) -> None:
    bundle = Bundle.load(auto_dir)
    best = bundle.manifest.planner.best_schedule  # type: ignore[union-attr]
    assert best is not None and best.run_id == bundle.manifest.sweep.best_run_id
    run = next(r for r in fixture_runs if r.run_id == best.run_id)
    assert run.lr is not None
    steps, logged = np.asarray(run.lr.step), np.asarray(run.lr.value)
    total = bundle.manifest.sweep.top_runs[0].total_steps
    advisor = Advisor(bundle, total_steps=total, mode="best")
    for k, (s, lr) in enumerate(zip(steps, logged, strict=True)):
        if k % 5 == 0 and run.train_loss is not None:
            i = min(k, len(run.train_loss.value) - 1)
            advisor.observe(int(s), train_loss=run.train_loss.value[i], lr=float(lr))
        assert advisor.lr(int(s)) == pytest.approx(lr, rel=0.012), (s, advisor.plan.reason)
    assert advisor.replans >= 1 and advisor.plan.status == "planned"
    assert advisor.plan.mode == "best"


def test_a_forced_control_mode_needs_a_control_model(planner_bundle: Bundle) -> None:
    with pytest.raises(InputError, match="has no control model"):
        make_planner(planner_bundle, "control")
    assert mode_for(planner_bundle) == "generative"  # no decision: as before
    assert make_planner(planner_bundle, "best").MODE == "best"


@pytest.mark.parametrize("kind", ["generative", "control"])
def test_an_old_bundle_follows_its_kind_and_says_so(kind: str) -> None:
    bundle = Bundle.load(V0_1 / f"bundle_{kind}")
    assert bundle.manifest.planner is None
    advisor = Advisor(bundle, total_steps=1000)
    assert advisor.mode == kind
    assert "0.3" in advisor.mode_reason or "control-mode bundle" in advisor.mode_reason
    request = json.loads((V0_1 / "answers.json").read_text())["request"]
    assert answer(bundle, parse_request(request), planner=make_planner(bundle)).mode == kind


# --------------------------------------------------------------------------- the CLI


def test_the_cli_fits_in_auto_mode_by_default() -> None:
    args = build_parser().parse_args(["fit", "--path", str(FIXTURE), "--out", "x"])
    assert args.mode == "auto"
    assert build_parser().parse_args(["recommend", "--bundle", "b", "--history", "h",
                                      "--total-steps", "10"]).mode == "auto"


def test_inspect_prints_the_decision(auto_fit: AutoFit, auto_dir: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", str(auto_dir)]) == 0
    text = out.getvalue()
    assert f"planner mode (auto): {auto_fit.decision.mode}" in text
    assert auto_fit.decision.reason[:60] in text
    assert "control fitted" in text and "best schedule: run" in text
