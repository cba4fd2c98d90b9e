"""The command line: fit, inspect, validate, export in-process; errors; the entry points."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tiny import FIXTURE, tiny_config
from tracker_sched import __version__
from tracker_sched.bundle.folder import Bundle
from tracker_sched.cli import main
from tracker_sched.sources.files import read_sweep

TINY = tiny_config()



@dataclass
class CliFit:
    rc: int
    out: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(TINY.model_dump_json())
    return path


@pytest.fixture(scope="module")
def cli_fit(tmp_path_factory: pytest.TempPathFactory, tiny_config_file: Path) -> CliFit:
    out = tmp_path_factory.mktemp("cli") / "bundle"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["fit", "--source", "files", "--path", str(FIXTURE), "--out", str(out),
                   "--config", str(tiny_config_file), "--no-progress", "--workers", "1"])
    return CliFit(rc, out, stdout.getvalue(), stderr.getvalue())


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tracker-sched: error:"), err
    return lines[0]


# --------------------------------------------------------------------------- fit / inspect


def test_fit_writes_a_bundle_report_and_plot(cli_fit: CliFit) -> None:
    assert cli_fit.rc == 0, cli_fit.stderr
    for name in ("bundle.json", "weights.pt", "report.json", "forecast.png"):
        assert (cli_fit.out / name).is_file(), name
    assert (cli_fit.out / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Forecast RMSE" in cli_fit.stdout
    assert "Rank correlation" in cli_fit.stdout
    assert f"bundle written to {cli_fit.out}" in cli_fit.stdout
    assert "read 48 runs" in cli_fit.stderr

    bundle = Bundle.load(cli_fit.out)
    # the config file was honoured
    assert bundle.manifest.model == TINY.model
    assert bundle.manifest.grid_points == TINY.grid_points
    assert bundle.manifest.fit["max_iterations"] == TINY.max_iterations
    report = json.loads((cli_fit.out / "report.json").read_text())
    assert report["runs_total"] == 48
    assert report == json.loads(bundle.manifest.report.model_dump_json())
    assert f"sweep best: {bundle.manifest.sweep.best_run_id}" in cli_fit.stdout
    # --mode auto is the default: the decision is stored and printed
    decision = bundle.manifest.planner
    assert decision is not None
    assert f"planner mode (auto): {decision.mode}" in cli_fit.stdout
    assert decision.best_schedule is not None
    assert decision.best_schedule.run_id == bundle.manifest.sweep.best_run_id


def test_inspect_prints_the_best_run(cli_fit: CliFit, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(cli_fit.out)]) == 0
    out = capsys.readouterr().out
    best = Bundle.load(cli_fit.out).manifest.sweep.best_run_id
    assert f"best {best}" in out
    assert "1 member(s)" in out
    assert "Forecast RMSE" in out
    assert "planner mode (auto): " in out and "  why: " in out


def test_inspect_json(cli_fit: CliFit, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(cli_fit.out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["schema_version"] == 1
    assert manifest["members"] == 1
    assert manifest["sweep"]["runs_used"] == 48


# --------------------------------------------------------------------------- validate / export


def test_validate_counts_usable_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--path", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "48 usable runs" in out


def test_validate_lists_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "s.jsonl"
    lines = FIXTURE.read_text().splitlines()[:5]
    sweep.write_text("\n".join([*lines, "{not json", "[1, 2]"]) + "\n")
    assert main(["validate", "--path", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "5 usable runs of 7" in out
    assert "s.jsonl:6" in out and "not valid JSON" in out
    assert "s.jsonl:7" in out and "must be a JSON object" in out


def test_export_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "x.jsonl"
    assert main(["export", "--path", str(FIXTURE), "--out", str(dest)]) == 0
    assert "wrote 48 runs" in capsys.readouterr().out
    again = read_sweep(dest)
    assert again.issues == []
    assert len(again.runs) == 48
    assert again.runs == read_sweep(FIXTURE).runs


# --------------------------------------------------------------------------- errors


def test_fit_on_a_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["fit", "--path", "/nonexistent", "--out", str(tmp_path / "d")])
    assert rc == 1
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert "/nonexistent" in line and "does not exist" in line
    assert not (tmp_path / "d").exists()


def test_inspect_a_missing_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "/nonexistent"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "no bundle at /nonexistent" in line


def test_fit_without_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--out", str(tmp_path / "d")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "--path" in line


def test_fit_with_too_few_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "s.jsonl"
    sweep.write_text("\n".join(FIXTURE.read_text().splitlines()[:3]) + "\n")
    rc = main(["fit", "--path", str(sweep), "--out", str(tmp_path / "d"), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0].startswith("read 3 runs")  # progress note, the checks, then the error
    assert "3 usable runs of 3 (3 finished)" in lines[1]
    error = err[err.index("tracker-sched: error:"):]
    assert error.startswith("tracker-sched: error: this sweep cannot be fitted:\n")
    assert "  - 3 usable runs of 3 (need >= 4)" in error
    assert not (tmp_path / "d").exists()


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: tracker-sched" in capsys.readouterr().out


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--source", "nowhere", "--out", "x"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_fit_with_a_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["fit", "--path", str(FIXTURE), "--out", str(tmp_path / "d"),
               "--config", str(tmp_path / "missing.json")])
    assert rc == 1
    assert "missing.json" in _one_error_line(capsys.readouterr().err)


def test_fit_with_an_invalid_flag_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["fit", "--path", str(FIXTURE), "--out", str(tmp_path / "d"), "--iterations", "0"])
    assert rc == 1
    assert "max_iterations" in _one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- entry points


def test_module_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "tracker_sched.cli", "--version"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == __version__


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "tracker-sched"
    assert script.is_file(), f"console script not installed next to {sys.executable}"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage: tracker-sched" in proc.stdout
    for command in ("fit", "validate", "export", "inspect"):
        assert command in proc.stdout
