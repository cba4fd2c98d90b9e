"""``tracker-sched recommend`` on the planner bundle (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker_sched.bundle.folder import Bundle
from tracker_sched.schema import Recommendation, RunRecord


@pytest.fixture(scope="module")
def runs(fixture_runs: list[RunRecord]) -> list[RunRecord]:
    return fixture_runs


@pytest.fixture(scope="module")
def bundle(planner_bundle: Bundle) -> Bundle:
    return planner_bundle


def a_run(runs: list[RunRecord], rid: str = "cnn-onecycle-3e-02-s0") -> RunRecord:
    return next(r for r in runs if r.run_id == rid)


def test_recommend_cli(bundle: Bundle, runs: list[RunRecord], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    from tracker_sched.cli import main

    bundle.save(tmp_path / "b")
    run = a_run(runs)
    assert run.train_loss and run.val_metric and run.lr
    lines = ["step,train_loss,val_metric,lr"]
    for i, step in enumerate(run.train_loss.step):
        if step <= 300:
            lines.append(f"{step},{run.train_loss.value[i]},{run.val_metric.value[i]},"
                         f"{run.lr.value[i]}")
    (tmp_path / "h.csv").write_text("\n".join(lines) + "\n")
    rc = main(["recommend", "--bundle", str(tmp_path / "b"), "--history",
               str(tmp_path / "h.csv"), "--total-steps", "840"])
    assert rc == 0
    rec = Recommendation.model_validate_json(capsys.readouterr().out)
    assert rec.step == max(s for s in run.train_loss.step if s <= 300)
    assert rec.schedule.step[-1] == 840 and rec.lr_now > 0

    (tmp_path / "bad.csv").write_text("step,train_loss\nx,1.0\n")
    rc = main(["recommend", "--bundle", str(tmp_path / "b"), "--history",
               str(tmp_path / "bad.csv"), "--total-steps", "840"])
    assert rc == 1
    assert "integer 'step'" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "train_loss": 1.0}\n[1, 2]\n')
    rc = main(["recommend", "--bundle", str(tmp_path / "b"), "--history",
               str(tmp_path / "bad.jsonl"), "--total-steps", "840"])
    err = capsys.readouterr().err
    assert rc == 1 and "row 2: a JSON object per line" in err and "Traceback" not in err
