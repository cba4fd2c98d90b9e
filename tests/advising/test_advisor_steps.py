"""Steps and budgets: a bad one is refused with a clear reason, never poisons what follows, and
one warm-up rule holds in the Advisor, the served answer and ``tracker-sched recommend``
(issue 15, items 4 and 6)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path

import pytest

from tests.tiny import FIXTURE, logged_rows
from tracker_sched.advising.advisor import Advisor
from tracker_sched.advising.remote import RemoteAdvisor
from tracker_sched.advising.serving import answer, observations_from_records, parse_request
from tracker_sched.cli import main
from tracker_sched.errors import InputError
from tracker_sched.fit.generative import FitResult
from tracker_sched.sources.files import read_sweep

TOTAL = 840


@pytest.fixture(scope="module")
def rows() -> list[tuple[int, dict[str, float]]]:
    return logged_rows(read_sweep(FIXTURE).runs[3])


def _feed(advisor: Advisor, rows: list[tuple[int, dict[str, float]]]) -> list[float]:
    lrs = []
    for step, row in rows:
        advisor.observe(step, **row)
        lrs.append(advisor.lr(step))
    return lrs


def _recommend(bundle_dir: Path, hist: Path, *args: str) -> tuple[int, str]:
    """``tracker-sched recommend``: exit status (argparse's usage error included), stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(["recommend", "--bundle", str(bundle_dir), "--history", str(hist), *args])
        except SystemExit as exc:  # argparse's usage error
            rc = int(exc.code or 0)
    return rc, err.getvalue()


def _same_course(a: Advisor, b: Advisor) -> None:
    assert a.plan.status == b.plan.status
    assert a.plan.schedule == b.plan.schedule
    assert a.replans == b.replans


# --------------------------------------------------------------------------- item 4


def test_item4_a_step_in_the_wrong_unit_does_not_poison_later_observations(
    tiny_fit: FitResult, rows: list[tuple[int, dict[str, float]]]
) -> None:
    """Step x100 (beyond the budget) used to make every later observation be dropped, with a
    "planned" status and an lr 18x too low."""
    bundle = tiny_fit.bundle
    bad_at = 5
    bad, ref = Advisor(bundle, TOTAL), Advisor(bundle, TOTAL)
    for i, (step, row) in enumerate(rows):
        bad.observe(step * 100 if i == bad_at else step, **row)
        if i != bad_at:
            ref.observe(step, **row)
    _same_course(bad, ref)
    assert ref.plan.status == "planned"
    for step in (300, 600, 800):
        assert bad.lr(step) == ref.lr(step)


def test_item4_an_early_outlier_inside_the_budget_is_dropped_once_the_run_continues(
    tiny_fit: FitResult, rows: list[tuple[int, dict[str, float]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first step logged x100 (300 for 3) still lies inside the budget: the steps that
    follow it come before it, and after three of them the outlier is the one dropped."""
    caplog.set_level(logging.WARNING, logger="tracker_sched.advisor")
    bundle = tiny_fit.bundle
    bad, ref = Advisor(bundle, TOTAL), Advisor(bundle, TOTAL)
    first_step, first_row = rows[0]
    bad.observe(first_step * 100, **first_row)
    _feed(bad, rows[1:])
    _feed(ref, rows[1:])
    _same_course(bad, ref)
    assert any("300" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("step", [10, 300])
def test_item4_one_warmup_rule_for_a_one_row_history(
    tiny_fit: FitResult, tmp_path: Path, step: int
) -> None:
    """`recommend` used to plan from a single row where the Advisor and the served model
    answer "warmup"."""
    bundle_dir = tiny_fit.bundle.save(tmp_path / "b")
    row = {"step": step, "train_loss": 1.0, "val_metric": 0.5, "lr": 0.01}
    hist = tmp_path / "h.jsonl"
    hist.write_text(json.dumps(row) + "\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["recommend", "--bundle", str(bundle_dir), "--history", str(hist),
                   "--total-steps", str(TOTAL)])
    assert rc == 0
    cli = json.loads(out.getvalue())
    served = answer(tiny_fit.bundle, parse_request(
        {"observations": observations_from_records([row]), "total_steps": TOTAL}))
    adv = Advisor(tiny_fit.bundle, TOTAL)
    local = adv.observe(**row)
    assert cli["status"] == served.status == local.status == "warmup"
    assert math.isclose(cli["lr_now"], served.lr_now)


@pytest.mark.parametrize("value", ["0", "-5", "1e21", "1000000000000000000000", "nan", "2.5"])
def test_item4_item6_total_steps_is_bounded(tiny_fit: FitResult, tmp_path: Path,
                                            value: str) -> None:
    bundle_dir = tiny_fit.bundle.save(tmp_path / "b")
    hist = tmp_path / "h.csv"
    hist.write_text("step,train_loss,val_metric,lr\n10,1.0,0.5,0.01\n")
    rc, err = _recommend(bundle_dir, hist, "--total-steps", value)
    assert rc != 0 and "--total-steps" in err and "Traceback" not in err


# --------------------------------------------------------------------------- item 6


@pytest.mark.parametrize("total", [float("inf"), 1e30, -5, 0, float("nan"), 2.5])
def test_item6_an_advisor_with_an_impossible_budget_says_so(tiny_fit: FitResult,
                                                            total: float) -> None:
    with pytest.raises(InputError, match="total_steps"):
        Advisor(tiny_fit.bundle, total)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="total_steps"):
        RemoteAdvisor("http://127.0.0.1:9", total, initial_lr=0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize("step", [float("inf"), 1e30, -5, float("nan"), 2**70])
def test_item6_an_impossible_step_is_refused_and_the_run_goes_on(
    tiny_fit: FitResult, rows: list[tuple[int, dict[str, float]]], step: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tracker_sched.advisor")
    adv, ref = Advisor(tiny_fit.bundle, TOTAL), Advisor(tiny_fit.bundle, TOTAL)
    _feed(adv, rows[:3])
    rec = adv.observe(step, train_loss=1.0, val_metric=0.5, lr=0.01)  # type: ignore[arg-type]
    assert rec.status == "warmup"  # refused, not a fallback: the plan stands
    assert math.isfinite(adv.lr(step)) and adv.lr(step) > 0  # type: ignore[arg-type]
    _feed(adv, rows[3:])
    _feed(ref, rows)
    _same_course(adv, ref)
    assert ref.plan.status == "planned"
    assert any("step" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("step", ["-5", "1e30", "inf", "2.5"])
def test_item6_recommend_step_is_checked(tiny_fit: FitResult, tmp_path: Path,
                                         step: str) -> None:
    bundle_dir = tiny_fit.bundle.save(tmp_path / "b")
    hist = tmp_path / "h.csv"
    hist.write_text("step,train_loss,val_metric,lr\n10,1.0,0.5,0.01\n")
    rc, err = _recommend(bundle_dir, hist, "--total-steps", "840", f"--step={step}")
    assert rc != 0 and "--step" in err and "Traceback" not in err


@pytest.mark.parametrize("step", ["inf", "1e30", "-5", "nan"])
def test_item6_a_history_with_an_impossible_step_is_one_error_line(
    tiny_fit: FitResult, tmp_path: Path, step: str
) -> None:
    bundle_dir = tiny_fit.bundle.save(tmp_path / "b")
    hist = tmp_path / "h.csv"
    hist.write_text(f"step,train_loss,val_metric,lr\n{step},1.0,0.5,0.01\n")
    rc, err = _recommend(bundle_dir, hist, "--total-steps", "840")
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("tracker-sched: error:")
    assert "step" in lines[0]

