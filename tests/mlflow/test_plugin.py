"""The MLflow plugin: the ``tracker-sched`` deployments target and the run context provider.

Real MLflow throughout: a tiny bundle registered with ``register_bundle`` on an
embedded sqlite store; the ``mlflow`` CLI run as a subprocess (MLflow itself
discovers the plugin through the installed entry points); a live sweep run
logged to the same store for predictions by run id.

Subprocesses run in ``tmp_path`` so that nothing in the working directory
(a stale ``*.egg-info`` of a source checkout) can hide the installed entry points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from tests.tiny import FIXTURE, tiny_config
from tracker_sched.advising.serving import observations_from_records, parse_request, recommend
from tracker_sched.bundle.folder import Bundle
from tracker_sched.errors import InputError
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.integrations.mlflow import context, deployments
from tracker_sched.integrations.mlflow.callback import (
    LR_METRIC,
    TAG_BUNDLE_VERSION,
    TAG_STATUS,
    MlflowAdvisorCallback,
)
from tracker_sched.schema import Recommendation, RunRecord
from tracker_sched.sources.files import read_sweep
from tracker_sched.stores.mlflow_store import register_bundle

MLFLOW = str(Path(sys.executable).parent / "mlflow")
CUT = 300  # the live run has logged up to this step of its 840


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A sqlite store with a registered bundle (``models:/cnn-sched@champion``) and a live run."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("plugin")
    uri = f"sqlite:///{root}/mlflow.db"
    runs = read_sweep(FIXTURE).runs
    bundle_dir = fit_sweep(runs, tiny_config(), workers=1, progress=False).bundle.save(
        root / "bundle")
    ref = register_bundle(bundle_dir, name="cnn-sched", alias="champion", tracking_uri=uri,
                          experiment="fits")
    client = MlflowClient(uri)
    record = runs[0]
    live = client.create_run(client.create_experiment("live"))
    run_id = live.info.run_id
    client.log_batch(run_id, metrics=_metrics(record), synchronous=True)
    client.log_param(run_id, "total_steps", record.total_steps)
    return {"root": root, "uri": uri, "ref": ref, "bundle": Bundle.load(bundle_dir),
            "run_id": run_id, "record": record}


def _metrics(record: RunRecord) -> list[Metric]:
    out = []
    for key, series in (("train_loss", record.train_loss), ("lr", record.lr),
                        ("val_acc", record.val_metric)):
        assert series is not None
        out += [Metric(key, v, 0, s) for s, v in zip(series.step, series.value, strict=True)
                if s <= CUT]
    return out


def window(record: RunRecord) -> list[dict[str, Any]]:
    """The serving format: one row per logged step up to CUT, missing values as None."""
    rows: dict[int, dict[str, Any]] = {}
    for role in ("train_loss", "lr", "val_metric"):
        series = record.series(role)  # type: ignore[arg-type]
        assert series is not None
        for s, v in zip(series.step, series.value, strict=True):
            if s <= CUT:
                rows.setdefault(s, {"step": s, "total_steps": record.total_steps})[role] = v
    return [rows[s] for s in sorted(rows)]


def expected(store: dict[str, Any]) -> Recommendation:
    rows = window(store["record"])
    request = parse_request({"observations": observations_from_records(rows),
                             "total_steps": store["record"].total_steps})
    return recommend(store["bundle"], request)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(deployments.ENV_HOME, str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def client(home: Path) -> Any:
    return deployments.TrackerSchedDeploymentClient("tracker-sched")


def mlflow_cli(args: list[str], store: dict[str, Any], home: Path,
               cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], deployments.ENV_HOME: str(home),
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    env.pop(context.ENV_ENABLED, None)
    return subprocess.run([MLFLOW, "deployments", *args, "-t", "tracker-sched"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------- the CLI, end to end
@pytest.mark.slow
def test_mlflow_deployments_cli_end_to_end(store: dict[str, Any], tmp_path: Path) -> None:
    home = tmp_path / "home"
    model_uri = store["ref"].removeprefix("mlflow:")
    assert model_uri == "models:/cnn-sched@champion"

    made = mlflow_cli(["create", "--name", "cnn", "-m", model_uri], store, home, tmp_path)
    assert made.returncode == 0, made.stderr
    assert "tracker_sched deployment cnn is created" in made.stdout
    registry = json.loads((home / "deployments.json").read_text())
    assert registry["cnn"]["model_uri"] == model_uri
    assert Bundle.load(registry["cnn"]["bundle_path"]).manifest == store["bundle"].manifest

    (tmp_path / "window.json").write_text(json.dumps(window(store["record"])))
    by_window = mlflow_cli(["predict", "--name", "cnn", "--input-path", "window.json"],
                           store, home, tmp_path)
    assert by_window.returncode == 0, by_window.stderr
    rec = Recommendation.model_validate_json(by_window.stdout.strip().splitlines()[-1])
    want = expected(store)
    assert (rec.status, rec.step) == (want.status, want.step)
    assert rec.lr_now == pytest.approx(want.lr_now)
    assert rec.schedule.step == want.schedule.step

    (tmp_path / "run.json").write_text(json.dumps([{"run_id": store["run_id"],
                                                    "log_back": True}]))
    by_run = mlflow_cli(["predict", "--name", "cnn", "--input-path", "run.json"],
                        store, home, tmp_path)
    assert by_run.returncode == 0, by_run.stderr
    from_run = Recommendation.model_validate_json(by_run.stdout.strip().splitlines()[-1])
    assert from_run.lr_now == pytest.approx(want.lr_now)  # same observations, read from MLflow
    client = MlflowClient(store["uri"])
    logged = client.get_metric_history(store["run_id"], LR_METRIC)
    assert [(m.step, m.value) for m in logged] == [(from_run.step, pytest.approx(from_run.lr_now))]
    tags = client.get_run(store["run_id"]).data.tags
    assert tags[TAG_STATUS] == from_run.status
    assert tags[TAG_BUNDLE_VERSION] == store["bundle"].manifest.created_at
    assert [f.path for f in client.list_artifacts(store["run_id"], "tracker_sched")] == [
        f"tracker_sched/plan-step{from_run.step}.{ext}" for ext in ("json", "md")]

    gone = mlflow_cli(["delete", "--name", "cnn"], store, home, tmp_path)
    assert gone.returncode == 0, gone.stderr
    assert not Path(registry["cnn"]["bundle_path"]).exists()
    unknown = mlflow_cli(["get", "--name", "cnn"], store, home, tmp_path)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines()[-1].startswith(
        "Error: no tracker-sched deployment named 'cnn'")
    assert "Traceback" not in unknown.stderr


# ---------------------------------------------------------------------------- the client in-process
def test_create_get_list_update_delete(store: dict[str, Any], client: Any, home: Path) -> None:
    model_uri = store["ref"].removeprefix("mlflow:")
    made = client.create_deployment("a", model_uri, config={"tracking_uri": store["uri"]})
    assert made["flavor"] == "tracker_sched"
    assert made["bundle_version"] == store["bundle"].manifest.created_at
    assert client.get_deployment("a") == made
    with pytest.raises(InputError, match="deployment 'a' exists"):
        client.create_deployment("a", model_uri)
    # A bundle folder deploys too; update keeps the name, changes the model.
    bundle_dir = store["root"] / "bundle"
    client.create_deployment("b", str(bundle_dir))
    assert [d["name"] for d in client.list_deployments()] == ["a", "b"]
    updated = client.update_deployment("b", model_uri=model_uri,
                                       config={"tracking_uri": store["uri"]})
    assert updated["model_uri"] == model_uri
    client.delete_deployment("a")
    assert [d["name"] for d in client.list_deployments()] == ["b"]
    with pytest.raises(InputError, match=r"no tracker-sched deployment named 'a'.*known: b"):
        client.get_deployment("a")
    with pytest.raises(InputError, match="no tracker-sched deployment named 'zzz'"):
        client.predict("zzz", window(store["record"]))


def test_mlflow_accepts_the_module_as_a_deployments_plugin() -> None:
    """MLflow's own plugin check (what ``mlflow deployments help -t tracker-sched`` runs):
    run_local, target_help and exactly one client class."""
    from mlflow.deployments.plugin_manager import DeploymentPlugins

    plugins = DeploymentPlugins()
    plugins.register("tracker-sched-test", deployments.__name__)
    assert plugins["tracker-sched-test"] is deployments
    assert "mlflow deployments create  -t tracker-sched" in deployments.target_help()


def test_run_local_records_a_deployment_that_predicts(store: dict[str, Any], client: Any,
                                                      home: Path) -> None:
    deployments.run_local("local", str(store["root"] / "bundle"))
    assert client.get_deployment("local")["bundle_version"] == \
        store["bundle"].manifest.created_at
    assert client.predict("local", window(store["record"]))["lr_now"] == pytest.approx(
        expected(store).lr_now)


def test_create_refuses_what_it_cannot_serve(store: dict[str, Any], client: Any,
                                             home: Path) -> None:
    with pytest.raises(InputError, match="cannot deploy models:/cnn-sched@nope"):
        client.create_deployment("x", "models:/cnn-sched@nope",
                                 config={"tracking_uri": store["uri"]})
    with pytest.raises(InputError, match="flavor 'sklearn' is not served"):
        client.create_deployment("x", str(store["root"] / "bundle"), flavor="sklearn")
    assert client.list_deployments() == []


def test_predict_by_window_as_frame_records_and_request(store: dict[str, Any], client: Any,
                                                        home: Path) -> None:
    client.create_deployment("w", str(store["root"] / "bundle"))
    want = expected(store)
    rows = window(store["record"])
    frame = client.predict("w", pd.DataFrame(rows))
    assert frame["lr_now"] == pytest.approx(want.lr_now)
    assert json.loads(frame.to_json())["schedule"]["step"] == want.schedule.step
    records = client.predict("w", [{k: v for k, v in r.items() if k != "total_steps"}
                                   for r in rows], params={"total_steps": 840})
    assert records["lr_now"] == pytest.approx(want.lr_now)
    request = client.predict("w", {"observations": observations_from_records(rows)[:5],
                                   "total_steps": 840})
    assert request["status"] == "warmup"  # 5 observations: the window is not ready yet


@pytest.mark.parametrize(("inputs", "params", "message"), [
    ([{"step": 1, "train_loss": 2.0}], None, "total_steps is missing"),
    ([{"step": 1, "train_loss": "abc", "total_steps": 10}], None, "train_loss='abc' is not"),
    ([{"train_loss": 2.0, "total_steps": 10}], None, "observation 1 has no 'step'"),
    ([{"step": 1, "train_loss": 2.0, "total_steps": -3}], None, "total_steps must be a pos"),
    ([], None, "inputs are empty"),
    ("a string", None, "inputs must be a metrics window"),
    ([{"step": 1, "train_loss": 2.0, "total_steps": 10}], {"log_back": True},
     "log_back needs a run_id"),
    ([{"run_id": "0" * 32}], None, "run '0000.*' not found"),
])
def test_predict_bad_inputs_are_clear_errors(store: dict[str, Any], client: Any, home: Path,
                                             inputs: Any, params: Any, message: str) -> None:
    client.create_deployment("w", str(store["root"] / "bundle"),
                             config={"tracking_uri": store["uri"]})
    with pytest.raises(InputError, match=message):
        client.predict("w", inputs, params=params)


def test_predict_by_run_without_budget_names_the_params(store: dict[str, Any], client: Any,
                                                        home: Path) -> None:
    mlflow_client = MlflowClient(store["uri"])
    run_id = mlflow_client.create_run(mlflow_client.get_experiment_by_name("live")
                                      .experiment_id).info.run_id
    mlflow_client.log_batch(run_id, metrics=_metrics(store["record"]), synchronous=True)
    client.create_deployment("r", str(store["root"] / "bundle"),
                             config={"tracking_uri": store["uri"]})
    with pytest.raises(InputError, match="log one of the params total_steps, max_steps"):
        client.predict("r", {"run_id": run_id})
    rec = client.predict("r", {"run_id": run_id, "total_steps": 840})
    assert rec["lr_now"] == pytest.approx(expected(store).lr_now)
    assert mlflow_client.get_metric_history(run_id, LR_METRIC) == []  # no log_back asked


# ---------------------------------------------------------------------------- run context provider
CONTEXT_SCRIPT = """
import json, os, mlflow
mlflow.set_experiment("ctx")
with mlflow.start_run() as off:
    pass
os.environ["TRACKER_SCHED_ENABLED"] = "1"
with mlflow.start_run() as on:
    pass
client = mlflow.MlflowClient()
print(json.dumps([{k: v for k, v in client.get_run(r.info.run_id).data.tags.items()
                   if k.startswith("tracker_sched")} for r in (off, on)]))
"""


def test_context_provider_tags_runs_only_when_enabled(store: dict[str, Any],
                                                      tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    env.pop(context.ENV_ENABLED, None)
    out = subprocess.run([sys.executable, "-c", CONTEXT_SCRIPT], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Failure attempting to register" not in out.stderr  # MLflow loaded the provider
    off, on = json.loads(out.stdout.strip().splitlines()[-1])
    assert off == {}
    from tracker_sched import __version__

    assert on == {"tracker_sched.enabled": "true", "tracker_sched.version": __version__}


def test_context_is_on_while_a_callback_is_open(store: dict[str, Any],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(context.ENV_ENABLED, raising=False)
    provider = context.TrackerSchedContext()
    assert provider.in_context() is False
    mlflow_client = MlflowClient(store["uri"])
    run = mlflow_client.create_run(mlflow_client.get_experiment_by_name("live").experiment_id)
    cb = MlflowAdvisorCallback(store["bundle"], 840, run_id=run.info.run_id,
                               tracking_uri=store["uri"])
    try:
        assert provider.in_context() is True
        assert provider.tags()[TAG_BUNDLE_VERSION] == store["bundle"].manifest.created_at
    finally:
        assert cb.close(timeout_s=10)
    assert provider.in_context() is False
    monkeypatch.setenv(context.ENV_ENABLED, "1")
    assert provider.in_context() is True
    assert TAG_BUNDLE_VERSION not in provider.tags()
