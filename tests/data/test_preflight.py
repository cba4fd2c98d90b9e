"""Fail fast: every error the data can cause ends a fit before any training step.

Each unfittable sweep below is fitted through the CLI (generative and control
mode) and through the library, with the training functions replaced by spies
that record a call: the spies must never be called, the command must exit 1
within seconds, and every reason (the sweep's and each run's) must be listed.
``validate`` runs the same stage and exits 1 on the same sweeps.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tracker_sched.fit.control as control_mod
import tracker_sched.fit.generative as fit_mod
from tests.tiny import tiny_config
from tracker_sched.cli import main
from tracker_sched.data.preflight import preflight
from tracker_sched.errors import TrackerSchedError
from tracker_sched.fit.control import ControlFitConfig, fit_control
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.schema import RunIssue, RunRecord, Series
from tracker_sched.sources.files import write_sweep

STEPS = list(range(3, 151, 3))  # logged every 3 steps, budget 152: the last point is 150


def run(run_id: str, *, lr: float = 0.1, seed: int = 0, state: str = "finished",
        total: int | None = 152, steps: list[int] = STEPS, val_key: str = "val_acc",
        with_lr: bool = True, config: dict[str, Any] | None = None) -> RunRecord:
    n = len(steps)
    return RunRecord(
        run_id=run_id, state=state, total_steps=total,
        config=config if config is not None else {"lr": lr, "seed": seed},
        train_loss=Series(step=steps, value=[2.0 / (1 + i) + lr for i in range(n)]),
        lr=Series(step=steps, value=[lr] * n) if with_lr else None,
        val_metric=Series(step=steps, value=[0.5 + lr * i / n for i in range(n)]),
        metric_keys={"val_metric": val_key},
    )


def good(n_configs: int = 2) -> list[RunRecord]:
    return [run(f"c{c}-s{s}", lr=0.1 * (c + 1), seed=s) for c in range(n_configs) for s in (0, 1)]


#: name -> (runs, phrases the error must hold: the sweep's problem and each run's reason)
UNFITTABLE: dict[str, tuple[list[RunRecord], list[str]]] = {
    "too few usable runs": (
        [run("ok-1"), *(run(f"nolr-{i}", lr=0.2, seed=i, with_lr=False) for i in range(3))],
        ["1 usable runs of 4 (need >= 4)", "nolr-0: no learning rate", "nolr-2: no learning"]),
    "different validation metrics": (
        [*good()[:2], *(run(f"loss-{s}", lr=0.3, seed=s, val_key="val_loss") for s in (0, 1))],
        ["different validation metrics (val_acc, val_loss)", "--val-key"]),
    "direction unknown": (
        [run(r.run_id, lr=float(r.config["lr"]), seed=int(r.config["seed"]),  # type: ignore[arg-type]
             val_key="foo") for r in good()],
        ["cannot tell whether 'foo' is maximised or minimised", "--val-direction"]),
    "no run reached its budget": (
        [run(f"k{c}-{s}", lr=0.1 * (c + 1), seed=s, state="killed" if s else "finished",
             total=300) for c in range(2) for s in (0, 1)],
        ["no finished run reached the end of its budget", "k0-0: finished; its series end",
         "k1-1: state 'killed'", "--total-steps"]),
    "one configuration": (
        [run(f"s{s}", seed=s, config={"lr": 0.1, "seed": s, "output_dir": f"/o/{s}"})
         for s in range(4)],
        ["all 4 usable runs are one configuration (they differ in output_dir, seed)"]),
    "budget in another unit": (
        [run(f"u{c}-{s}", lr=0.1 * (c + 1), seed=s, total=8) for c in range(2) for s in (0, 1)],
        ["0 usable runs of 4", "u0-0: the step axis reaches 150 but the budget is 8"]),
}


class Spies:
    """Every training entry point of both fits, replaced by a recorder."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for mod, name in [(fit_mod, "train_ensemble"), (fit_mod, "train_member"),
                          (control_mod, "train_control_ensemble"),
                          (control_mod, "train_control_member")]:
            monkeypatch.setattr(mod, name, self._spy(name))

    def _spy(self, name: str) -> Callable[..., Any]:
        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            raise AssertionError(f"{name} ran: training started on an unfittable sweep")
        return spy


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> Spies:
    return Spies(monkeypatch)


@pytest.mark.parametrize("mode", ["generative", "control"])
@pytest.mark.parametrize("case", list(UNFITTABLE))
def test_cli_fit_fails_before_training_with_every_reason(
    case: str, mode: str, spies: Spies, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    runs, phrases = UNFITTABLE[case]
    path = write_sweep(tmp_path / "sweep.jsonl", runs)
    out = tmp_path / "bundle"
    t0 = time.perf_counter()
    rc = main(["fit", "--path", str(path), "--out", str(out), "--mode", mode,
               "--iterations", "3", "--ensemble", "1", "--no-progress", "--no-plots"])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 1
    assert spies.calls == []  # no training step ran
    assert elapsed < 10
    assert "this sweep cannot be fitted" in err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    assert not out.exists()


@pytest.mark.parametrize("case", list(UNFITTABLE))
def test_library_fits_raise_before_training(case: str, spies: Spies) -> None:
    runs, phrases = UNFITTABLE[case]
    with pytest.raises(TrackerSchedError) as generative:
        fit_sweep(runs, tiny_config(), workers=1, progress=False)
    with pytest.raises(TrackerSchedError) as control:
        fit_control(runs, ControlFitConfig(iterations=2, members=1), workers=1)
    assert spies.calls == []
    for phrase in phrases:
        assert phrase in str(generative.value) and phrase in str(control.value)


@pytest.mark.parametrize("case", list(UNFITTABLE))
def test_validate_lists_the_same_reasons_and_exits_1(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    runs, phrases = UNFITTABLE[case]
    path = write_sweep(tmp_path / "sweep.jsonl", runs)
    assert main(["validate", "--path", str(path)]) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    for phrase in phrases:
        assert phrase in text, (phrase, text)


def test_validate_on_a_fittable_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path / "sweep.jsonl", good(3))
    assert main(["validate", "--path", str(path)]) == 0
    out = capsys.readouterr().out
    assert "6 usable runs of 6 (6 finished); 6 reached the end of their budget" in out
    assert "3 configurations x 2 seeds (hyperparameters: lr; left out: seed (seed))" in out
    assert "budget: 152 steps from total_steps (6 runs)" in out


def test_repaired_runs_are_counted_once() -> None:
    """A source's "repaired" note is about a run it read: "18 usable runs of 36" was wrong."""
    runs = good(2)
    notes = [RunIssue(run_id=r.run_id, action="repaired", reason="epoch logged twice")
             for r in runs]
    lost = [RunIssue(run_id="unreadable", action="excluded", reason="cut off")]
    checked = preflight(runs, source_issues=[*notes, *lost])
    assert checked.runs_read == 5
    assert checked.describe()[0].startswith("4 usable runs of 5 ")


def test_budget_flags_fix_what_defaults_cannot(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    runs = UNFITTABLE["budget in another unit"][0]
    path = write_sweep(tmp_path / "sweep.jsonl", runs)
    assert main(["validate", "--path", str(path), "--total-steps", "152"]) == 0
    assert "budget: 152 steps from --total-steps 152" in capsys.readouterr().out
    assert main(["validate", "--path", str(path), "--total-steps", "0"]) == 1
    assert "--total-steps must be a positive number" in capsys.readouterr().err


def test_ignore_config_key_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [run(f"c{c}-s{s}", lr=0.1 * (c + 1), seed=s,
                config={"lr": 0.1 * (c + 1), "seed": s, "job": f"job-{c}{s}"})
            for c in range(2) for s in (0, 1)]
    path = write_sweep(tmp_path / "sweep.jsonl", runs)
    assert main(["validate", "--path", str(path)]) == 0
    assert "4 configurations x 1 seed" in capsys.readouterr().out
    assert main(["validate", "--path", str(path), "--ignore-config-key", "job"]) == 0
    assert "2 configurations x 2 seeds" in capsys.readouterr().out


def test_fit_as_a_subprocess_fails_in_seconds(tmp_path: Path) -> None:
    """The whole command, interpreter start-up included. The CPU time is what the command
    costs; wall time on a loaded CI machine can be longer, and is only printed."""
    runs, _ = UNFITTABLE["no run reached its budget"]
    path = write_sweep(tmp_path / "sweep.jsonl", runs)
    exe = Path(sys.executable).with_name("tracker-sched")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe), "fit", "--path", str(path), "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"\n[fail fast] tracker-sched fit exited {proc.returncode} after {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU")
    assert proc.returncode == 1
    assert "no finished run reached the end of its budget" in proc.stderr
    assert cpu < 10
    assert wall < 60  # generous: CI's 2 cores are shared; the in-process tests assert < 10 s
