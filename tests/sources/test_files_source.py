"""The files source: JSON Lines sweeps, raw tracker keys, bad lines and the real fixture."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.tiny import FIXTURE
from tracker_sched.data.validation import validate_sweep
from tracker_sched.errors import SourceError
from tracker_sched.schema import MetricMap, RunRecord, Series
from tracker_sched.sources import FilesSource, Source, read_sweep, write_sweep
from tracker_sched.sources.files import FORMAT_VERSION, HEADER_KEY

STEPS = list(range(10, 201, 10))  # 20 points


def make_run(run_id: str, *, nan_at: int | None = None, total_steps: int | None = 200) -> RunRecord:
    loss = [2.0 / (1 + 0.1 * i) for i in range(len(STEPS))]
    if nan_at is not None:
        loss[nan_at] = math.nan
    return RunRecord(
        run_id=run_id,
        sweep_id="sw",
        name=f"name-{run_id}",
        config={"peak_lr": 0.1, "seed": 3, "tags": ["a"], "nested": {"x": None}},
        total_steps=total_steps,
        train_loss=Series(step=STEPS, value=loss),
        lr=Series(step=STEPS, value=[0.1] * len(STEPS)),
        val_metric=Series(step=STEPS, value=[0.5 + 0.01 * i for i in range(len(STEPS))]),
        metric_keys={"train_loss": "loss", "lr": "lr", "val_metric": "val_acc"},
    )


def same_run(a: RunRecord, b: RunRecord) -> bool:
    """Equality that treats NaN as equal to NaN (JSON round trips make new float objects)."""
    return a.model_dump_json() == b.model_dump_json()


def raw_series(n: int = 20, start: float = 1.0, step: float = -0.01) -> dict[str, list[Any]]:
    return {"step": STEPS[:n], "value": [start + step * i for i in range(n)]}


def raw_line(run_id: str, metrics: dict[str, Any], **extra: Any) -> str:
    return json.dumps({"run_id": run_id, "total_steps": 200, "metrics": metrics, **extra})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- round trip -------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path: Path) -> None:
    runs = [make_run("a"), make_run("b", nan_at=7), make_run("c", total_steps=None)]
    path = write_sweep(tmp_path / "sub" / "sweep.jsonl", runs, meta={"project": "p"})
    assert path == tmp_path / "sub" / "sweep.jsonl"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert json.loads(first) == {HEADER_KEY: FORMAT_VERSION, "project": "p"}
    result = read_sweep(path)
    assert result.issues == []
    assert len(result.runs) == len(runs)
    for got, want in zip(result.runs, runs, strict=True):
        assert same_run(got, want)
    b = result.runs[1]
    assert b.train_loss is not None and math.isnan(b.train_loss.value[7])
    assert "NaN" in path.read_text(encoding="utf-8")
    # No temporary file is left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["sweep.jsonl"]


def test_write_sweep_header_without_meta(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "s.jsonl", [make_run("a")])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == json.dumps({HEADER_KEY: FORMAT_VERSION})
    assert len(lines) == 2


def test_write_sweep_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_sweep(path, [make_run("a"), make_run("b")])
    write_sweep(path, [make_run("c")])
    assert [r.run_id for r in read_sweep(path).runs] == ["c"]


def test_folder_of_two_files_reads_both(tmp_path: Path) -> None:
    write_sweep(tmp_path / "b.jsonl", [make_run("b1")])
    write_sweep(tmp_path / "a.jsonl", [make_run("a1"), make_run("a2")])
    (tmp_path / "notes.txt").write_text("not a sweep", encoding="utf-8")
    result = read_sweep(tmp_path)
    assert result.issues == []
    # Files in name order, lines in file order.
    assert [r.run_id for r in result.runs] == ["a1", "a2", "b1"]


def test_files_source_reads_path(tmp_path: Path) -> None:
    write_sweep(tmp_path / "s.jsonl", [make_run("a")])
    src = FilesSource(tmp_path / "s.jsonl")
    assert isinstance(src, Source)
    assert src.name == "files"
    assert [r.run_id for r in src.read().runs] == ["a"]


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", ["", make_run("a").model_dump_json(), "   ", ""])
    result = read_sweep(path)
    assert result.issues == []
    assert [r.run_id for r in result.runs] == ["a"]


# --- raw tracker keys -------------------------------------------------------------------------


def test_raw_keys_mapped_through_default_metric_map(tmp_path: Path) -> None:
    metrics = {
        "loss": raw_series(),
        "learning_rate": raw_series(start=0.1, step=-0.001),
        "eval_accuracy": raw_series(start=0.5, step=0.01),
        "grad_norm": raw_series(),
    }
    path = write_lines(tmp_path / "s.jsonl", [raw_line("r1", metrics, config={"seed": 1})])
    result = read_sweep(path)
    assert result.issues == []
    (rec,) = result.runs
    assert rec.run_id == "r1" and rec.total_steps == 200
    assert rec.metric_keys == {
        "train_loss": "loss",
        "lr": "learning_rate",
        "val_metric": "eval_accuracy",
    }
    assert rec.train_loss == Series(**metrics["loss"])
    assert rec.lr == Series(**metrics["learning_rate"])
    assert rec.val_metric == Series(**metrics["eval_accuracy"])
    assert rec.config == {"seed": 1}
    assert validate_sweep(result.runs).issues == []


def test_raw_keys_with_custom_metric_map(tmp_path: Path) -> None:
    metrics = {
        "loss": raw_series(),
        "lr": raw_series(start=9.0, step=0.0),
        "my_lr": raw_series(start=0.05, step=0.0),
        "val_loss": raw_series(start=0.8),
    }
    path = write_lines(tmp_path / "s.jsonl", [raw_line("r1", metrics)])
    (rec,) = read_sweep(path, MetricMap(lr="my_lr")).runs
    assert rec.metric_keys["lr"] == "my_lr"
    assert rec.lr is not None and rec.lr.value == [0.05] * 20
    # Same file, default map: the plain "lr" key wins.
    (default_rec,) = read_sweep(path).runs
    assert default_rec.metric_keys["lr"] == "lr"
    assert default_rec.lr is not None and default_rec.lr.value == [9.0] * 20


def test_files_source_passes_metric_map(tmp_path: Path) -> None:
    metrics = {
        "loss": raw_series(),
        "my_lr": raw_series(start=0.05, step=0.0),
        "val_acc": raw_series(),
    }
    path = write_lines(tmp_path / "s.jsonl", [raw_line("r1", metrics)])
    (rec,) = FilesSource(path, MetricMap(lr="my_lr")).read().runs
    assert rec.metric_keys["lr"] == "my_lr"


def test_raw_run_without_lr_is_read_then_excluded(tmp_path: Path) -> None:
    metrics = {"loss": raw_series(), "val_acc": raw_series(), "momentum": raw_series()}
    good = {"loss": raw_series(), "lr": raw_series(start=0.1, step=0.0), "val_acc": raw_series()}
    path = write_lines(tmp_path / "s.jsonl", [raw_line("nolr", metrics), raw_line("ok", good)])
    result = read_sweep(path)
    assert result.issues == []
    assert [r.run_id for r in result.runs] == ["nolr", "ok"]
    nolr = result.runs[0]
    assert nolr.lr is None
    assert "lr" not in nolr.metric_keys
    assert nolr.config["_keys_seen"] == ["loss", "momentum", "val_acc"]
    sweep = validate_sweep(result.runs)
    assert [r.run_id for r in sweep.runs] == ["ok"]
    (issue,) = sweep.issues
    assert issue.run_id == "nolr"
    assert issue.action == "excluded"
    assert "no learning rate logged" in issue.reason
    # The reason names the keys the run logged and the flag that picks one.
    assert "keys seen: loss, momentum, val_acc" in issue.reason and "--lr-key" in issue.reason


# --- bad lines --------------------------------------------------------------------------------


def _good_and(tmp_path: Path, bad: str) -> tuple[list[str], list[Any]]:
    path = write_lines(
        tmp_path / "sweep.jsonl",
        [make_run("g1").model_dump_json(), bad, make_run("g2").model_dump_json()],
    )
    result = read_sweep(path)
    return [r.run_id for r in result.runs], result.issues


def test_invalid_json_line_becomes_issue(tmp_path: Path) -> None:
    kept, issues = _good_and(tmp_path, '{"run_id": "x", "total_steps": ')
    assert kept == ["g1", "g2"]
    (issue,) = issues
    assert issue.action == "excluded"
    assert issue.run_id == "sweep.jsonl:2"
    assert "not valid JSON" in issue.reason


def test_non_object_line_becomes_issue(tmp_path: Path) -> None:
    kept, issues = _good_and(tmp_path, "[1, 2, 3]")
    assert kept == ["g1", "g2"]
    (issue,) = issues
    assert issue.action == "excluded"
    assert issue.run_id == "sweep.jsonl:2"
    assert "must be a JSON object" in issue.reason


@pytest.mark.parametrize(
    ("line", "run_id", "phrase"),
    [
        ('{"run_id": "bad", "total_steps": -3}', "bad", "total_steps"),
        ('{"run_id": ""}', "", "run_id"),
        ('{"total_steps": 10}', "sweep.jsonl:2", "run_id"),
        (
            '{"run_id": "bad", "train_loss": {"step": [1, 2], "value": [0.5]}}',
            "bad",
            "same length",
        ),
        ('{"run_id": "bad", "lr": {"step": [1.5], "value": [0.5]}}', "bad", "lr.step"),
        ('{"run_id": "bad", "metrics": [1, 2]}', "bad", "'metrics' must map"),
        ('{"run_id": "bad", "metrics": {"lr": {"step": [1]}}}', "bad", "value"),
    ],
    ids=["total_steps", "empty-id", "no-id", "lengths", "float-step", "metrics-list", "raw-series"],
)
def test_schema_violating_line_becomes_issue(
    tmp_path: Path, line: str, run_id: str, phrase: str
) -> None:
    kept, issues = _good_and(tmp_path, line)
    assert kept == ["g1", "g2"]
    (issue,) = issues
    assert issue.action == "excluded"
    assert issue.run_id == run_id
    assert issue.reason.startswith("sweep.jsonl:2: does not match the run schema")
    assert phrase in issue.reason
    assert "\n" not in issue.reason


@pytest.mark.parametrize(
    "extra",
    [{"metric_keys": "oops"}, {"config": None}, {"config": [1, 2]}],
    ids=["metric_keys-str", "config-null", "config-list"],
)
def test_raw_line_with_non_object_fields_becomes_issue(
    tmp_path: Path, extra: dict[str, Any]
) -> None:
    metrics = {"loss": raw_series(), "val_acc": raw_series()}  # no lr: config gets _keys_seen
    kept, issues = _good_and(tmp_path, raw_line("bad", metrics, **extra))
    assert kept == ["g1", "g2"]
    (issue,) = issues
    assert issue.action == "excluded"
    assert issue.run_id == "bad"
    assert "sweep.jsonl:2" in issue.reason


# --- header and paths -------------------------------------------------------------------------


def test_newer_format_version_raises(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "s.jsonl",
        [json.dumps({HEADER_KEY: FORMAT_VERSION + 1}), make_run("a").model_dump_json()],
    )
    with pytest.raises(SourceError, match="upgrade tracker-sched") as info:
        read_sweep(path)
    assert f"sweep format {FORMAT_VERSION + 1}" in str(info.value)


def test_non_integer_format_version_raises(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [json.dumps({HEADER_KEY: "1.0"})])
    with pytest.raises(SourceError, match="upgrade tracker-sched"):
        read_sweep(path)


def test_missing_path_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(SourceError, match="does not exist") as info:
        read_sweep(missing)
    assert str(missing) in str(info.value)


def test_empty_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x", encoding="utf-8")
    with pytest.raises(SourceError, match=r"no \.jsonl sweep files in folder"):
        read_sweep(tmp_path)


def test_undecodable_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SourceError, match="cannot read"):
        read_sweep(path)


# --- the real fixture -------------------------------------------------------------------------


def test_fixture_reads_and_validates_cleanly() -> None:
    result = read_sweep(FIXTURE)
    assert result.issues == []
    assert len(result.runs) == 48
    assert len({r.run_id for r in result.runs}) == 48
    sweep = validate_sweep(result.runs)
    assert len(sweep.runs) == 48
    assert sweep.excluded_ids() == []
    assert not [i for i in sweep.issues if i.action == "excluded"]
    for run in sweep.runs:
        assert run.record.source == "files"
        assert run.total_steps > 0
