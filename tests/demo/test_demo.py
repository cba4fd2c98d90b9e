"""``tracker-sched demo``: the README's main job, at toy size, on a real embedded MLflow store.

One real ``tracker-sched demo --quick`` run in a subprocess (a fresh sqlite store,
real MNIST-1D training, a real fit, a real registered model, the real MLflow
callback); the tests then read that store back with MlflowClient. The bad-input
tests run in-process and stop before any training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tracker_sched import cli
from tracker_sched.demo.results import DemoConfig
from tracker_sched.demo.run import ALIAS, EXPERIMENT, MARKER, MODEL_NAME, check_folder, run_demo
from tracker_sched.demo.view import VIEW_KEY, VIEW_TAG, column_key
from tracker_sched.errors import InputError, MissingDependencyError

pytest.importorskip("mlflow")
pytest.importorskip("mnist1d")

QUICK_RUNS = 6  # DemoConfig.quick: 2 schedules x 3 peaks x 1 seed
QUICK_POINTS = 28  # 3 epochs x 28 steps, logged every 3 steps


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "tracker_sched.cli", "demo", "--quick", "--dir", str(folder),
         "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {"folder": folder, "stdout": proc.stdout, "client": client, "runs": runs, "uri": uri}


def _tagged(runs: list[Any], value: str) -> list[Any]:
    return [r for r in runs if r.data.tags.get("tracker_sched.demo") == value]


@pytest.mark.slow
def test_demo_prints_the_comparison_and_the_ui_command(demo: dict[str, Any]) -> None:
    out = demo["stdout"]
    for stage in ("[1/4] sweep", "[2/4] fit", "[3/4] register", "[4/4] compare"):
        assert stage in out
    assert "  mean " in out and "diff" in out
    assert "not a benchmark" in out and "docs/benchmarks.md" in out
    assert f"mlflow ui --backend-store-uri {demo['uri']}" in out
    exp = demo["client"].get_experiment_by_name(EXPERIMENT)
    assert (f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs"
            f"?viewStateShareKey={VIEW_KEY}") in out
    # The UI opens the experiment on its training runs, with a description.
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "tracker-sched demo" in exp.tags["mlflow.note.content"]
    # The printed URL's view shows metric columns that the runs really logged, first.
    view = json.loads(exp.tags[VIEW_TAG])
    logged = {"metrics": {k for r in demo["runs"] for k in r.data.metrics},
              "params": {k for r in demo["runs"] for k in r.data.params}}
    want = [column_key(kind, name) for kind in logged for name in sorted(logged[kind])]
    shown = [c for c in view["selectedColumns"] if not c.startswith("attributes.")]
    assert shown and set(shown) <= set(want)
    assert shown[:2] == [column_key("metrics", "val_acc"), column_key("metrics", "test_acc")]
    assert column_key("metrics", "fit.val_rmse") in shown


@pytest.mark.slow
def test_the_sweep_is_one_parent_with_its_runs_and_full_histories(demo: dict[str, Any]) -> None:
    client, runs = demo["client"], demo["runs"]
    (parent,) = [r for r in _tagged(runs, "sweep") if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == QUICK_RUNS
    for run in children:
        assert run.info.status == "FINISHED"
        assert {"schedule", "peak_lr", "seed", "total_steps"} <= set(run.data.params)
        assert run.data.tags["mlflow.note.content"].startswith("Sweep run: MNIST-1D CNN")
        for key in ("train_loss", "lr", "val_acc"):
            assert len(client.get_metric_history(run.info.run_id, key)) == QUICK_POINTS


@pytest.mark.slow
def test_the_fit_is_registered_under_the_champion_alias(demo: dict[str, Any]) -> None:
    client = demo["client"]
    version = client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    fit_run = client.get_run(version.run_id)
    assert fit_run.data.tags.get("tracker_sched.kind") == "fit"
    assert fit_run.info.experiment_id == client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert {"scheme", "folds", "runs_fit"} <= set(fit_run.data.params)
    assert fit_run.data.tags["tracker_sched.registered_version"] == str(version.version)
    assert version.description and client.get_registered_model(MODEL_NAME).description
    assert (demo["folder"] / "bundle" / "bundle.json").is_file()


@pytest.mark.slow
def test_the_advisor_run_carries_the_recommended_lr(demo: dict[str, Any]) -> None:
    client, runs = demo["client"], demo["runs"]
    (compare,) = _tagged(runs, "comparison")
    (advisor,) = _tagged(runs, "advisor")
    (parametric,) = _tagged(runs, "parametric")
    for arm in (advisor, parametric):
        assert arm.data.tags["mlflow.parentRunId"] == compare.info.run_id
        assert arm.data.params["seed"] == "100"
        assert "test_acc" in arm.data.metrics
        assert arm.data.tags["mlflow.note.content"].startswith("Comparison arm")
    assert set(advisor.data.params) == set(parametric.data.params)  # one set of columns
    assert (advisor.data.params["arm"], parametric.data.params["arm"]) == ("advisor",
                                                                           "parametric")
    lrs = client.get_metric_history(advisor.info.run_id, "tracker_sched.lr_recommended")
    assert len(lrs) == QUICK_POINTS
    assert all(m.value > 0 for m in lrs)
    # What the run trained with is its own lr: the recommendation of the log point before.
    applied = sorted((m.step, m.value) for m in client.get_metric_history(advisor.info.run_id,
                                                                          "lr"))
    recommended = sorted((m.step, m.value) for m in lrs)
    assert len(applied) == len(recommended)
    marks = sorted(client.get_metric_history(advisor.info.run_id, "tracker_sched.plan"),
                   key=lambda m: m.step)
    assert marks[0].value == 0.0  # the warm-up plan, at step 0
    version = client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    assert advisor.data.tags["tracker_sched.registered_model"] == MODEL_NAME
    assert advisor.data.tags["tracker_sched.registered_version"] == str(version.version)
    assert advisor.data.tags["tracker_sched.bundle"] == f"mlflow:models:/{MODEL_NAME}@{ALIAS}"
    assert advisor.data.tags["tracker_sched.status"] in {"planned", "warmup", "fallback"}
    assert "advisor error" not in advisor.data.tags.get("tracker_sched.reason", "")
    plans = [a.path for a in client.list_artifacts(advisor.info.run_id, "tracker_sched")]
    assert plans and {p.rsplit(".", 1)[-1] for p in plans} == {"json", "md"}
    assert not [k for k in parametric.data.metrics if k.startswith("tracker_sched.")]


@pytest.mark.slow
def test_plots_are_written_and_logged_on_both_parents(demo: dict[str, Any]) -> None:
    client, runs, folder = demo["client"], demo["runs"], demo["folder"]
    names = {"schedules.png", "accuracy.png", "forecast.png"}
    for name in names:
        png = folder / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for parent in (*[r for r in _tagged(runs, "sweep") if "mlflow.parentRunId" not in r.data.tags],
                   *_tagged(runs, "comparison")):
        logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "demo")}
        assert names | {"comparison.json"} <= logged
    assert (folder / MARKER).is_file()


def test_a_folder_with_other_files_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["demo", "--quick", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tracker-sched: error:") and "not empty" in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "x"
    target.write_text("")
    with pytest.raises(InputError, match="not a folder"):
        check_folder(target)


def test_a_previous_demo_folder_and_an_empty_one_are_accepted(tmp_path: Path) -> None:
    check_folder(tmp_path / "new")
    check_folder(tmp_path)
    (tmp_path / "mlflow.db").write_text("")
    (tmp_path / MARKER).write_text("{}")
    check_folder(tmp_path)


def test_bad_seed_and_worker_counts_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["demo", "--quick", "--dir", str(tmp_path / "a"), "--seeds", "0"]) == 1
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert cli.main(["demo", "--quick", "--dir", str(tmp_path / "b"), "--workers", "0"]) == 1
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_missing_mnist1d_names_the_demo_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # import mnist1d now fails
    with pytest.raises(MissingDependencyError, match=r'tracker-sched\[demo\]'):
        run_demo(DemoConfig.quick(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_task_names_the_extra_when_mnist1d_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracker_sched.tasks import mnist1d

    monkeypatch.setattr(mnist1d, "_SPLITS", {})
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "tracker-sched\[demo\]"'):
        mnist1d.load_splits()


@pytest.mark.slow
def test_a_rerun_in_the_same_folder_adds_a_version_and_restores_mlflow_state(
    demo: dict[str, Any],
) -> None:
    """In-process, one worker: the second path through the sweep, and MLflow's global
    tracking URI is the caller's again afterwards. Runs last: it adds to the store."""
    import mlflow

    before = mlflow.get_tracking_uri()
    result = run_demo(DemoConfig.quick(demo["folder"], workers=1), progress=False)
    assert mlflow.get_tracking_uri() == before
    client = demo["client"]
    assert str(client.get_model_version_by_alias(MODEL_NAME, ALIAS).version) == "2"
    sweeps = client.search_runs(
        [result.experiment_id],
        "tags.tracker_sched.demo = 'sweep' and attributes.run_name = 'sweep'")
    assert len(sweeps) == 2
    assert {r.arm for r in result.runs} == {"parametric", "advisor"}
