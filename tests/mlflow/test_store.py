"""The MLflow model store against real MLflow: a server and the embedded sqlite store.

A tiny bundle is fitted once for the module; it is registered as a pyfunc model,
loaded back every way a URI allows, and must give the same recommendation as
the bundle it came from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

import mlflow.artifacts
import mlflow.pyfunc
import pandas as pd
from mlflow.tracking import MlflowClient

from tests.tiny import FIXTURE, tiny_config
from tracker_sched.advising.serving import (
    Observation,
    RecommendRequest,
    answer,
    recommend,
    recommendation_from_row,
    recommendation_to_row,
)
from tracker_sched.bundle.folder import Bundle
from tracker_sched.bundle.manifest import FitReport
from tracker_sched.cli import main
from tracker_sched.errors import BundleError
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.planning.control import mode_reason
from tracker_sched.schema import Recommendation, RunRecord
from tracker_sched.stores import load_bundle
from tracker_sched.stores.mlflow_store import download_bundle, register_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, sweep_records: list[RunRecord]) -> Path:
    result = fit_sweep(sweep_records, tiny_config(), progress=False)
    return result.bundle.save(tmp_path_factory.mktemp("bundle") / "bundle")


def live_request(record: RunRecord, fraction: float) -> RecommendRequest:
    """A fixture run observed up to ``fraction`` of its budget, as a live run would send it."""
    assert record.total_steps is not None
    upto = fraction * record.total_steps
    rows: dict[int, dict[str, float]] = {}
    for role in ("train_loss", "val_metric", "lr"):
        series = record.series(role)
        assert series is not None
        for s, v in zip(series.step, series.value, strict=True):
            if s <= upto:
                rows.setdefault(s, {})[role] = v
    obs = [Observation(step=s, **row) for s, row in sorted(rows.items())]
    return RecommendRequest(observations=obs, total_steps=record.total_steps)


def frame(request: RecommendRequest) -> pd.DataFrame:
    return pd.DataFrame([o.model_dump(exclude_none=True) for o in request.observations])


@pytest.fixture(scope="module")
def server_model(mlflow_server: str, bundle_dir: Path) -> str:
    """The bundle registered once on the session's server, with alias champion."""
    return register_bundle(bundle_dir, name="cnn-sched", alias="champion",
                           experiment="store-tests", tracking_uri=mlflow_server)


@pytest.fixture()
def on_server(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Loading follows MLflow's own resolution: point it at the server for the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def test_register_returns_alias_uri_and_logs_the_fit_run(
    server_model: str, mlflow_server: str
) -> None:
    assert server_model == "mlflow:models:/cnn-sched@champion"
    client = MlflowClient(tracking_uri=mlflow_server)
    version = client.get_model_version_by_alias("cnn-sched", "champion")
    run = client.get_run(version.run_id)
    assert run.info.experiment_id == client.get_experiment_by_name("store-tests").experiment_id
    metrics = run.data.metrics
    assert metrics["fit.wall_s"] > 0
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"report.json", "report.md"} <= artifacts
    assert version.tags["tracker_sched.created_at"]
    # What a person reads in the UI: the split, headline metrics first, descriptions, and
    # the registered name and number on the fit run and the version.
    params = run.data.params
    assert params["scheme"] in ("holdout", "cross-fit") and int(params["folds"]) >= 1
    assert int(params["runs_fit"]) == int(metrics["fit.runs_fit"]) > 0
    # Only the headline metrics: the 36 diagnostics would sort before the training runs'
    # val_acc/test_acc in the runs table's column list. They are in report.json/report.md.
    assert {"fit.val_rmse", "fit.val_rmse_last", "fit.runs_fit", "fit.runs_holdout",
            "fit.folds", "fit.wall_s"} <= set(metrics)
    assert all(k.startswith("fit.") for k in metrics)
    def text_of(name: str) -> str:
        return Path(mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=name, tracking_uri=mlflow_server)).read_text()

    report = FitReport.model_validate_json(text_of("report.json"))
    row = report.holdout.row(0.5, "val_metric", "model") if report.holdout else None
    assert row is not None  # the headline to 4 significant digits
    assert metrics["fit.val_rmse"] == pytest.approx(row.rmse_pooled, rel=1e-3)
    text = text_of("report.md")
    assert text.startswith("# tracker-sched fit report") and "Forecast RMSE" in text
    assert f"{row.rmse_pooled:.3f}" in text or f"{row.rmse_pooled * 100:.3f}" in text
    assert report.forecast_trust is not None  # the verdict, with its reasons, for a person
    assert f"forecast trust: {report.forecast_trust.level.upper()}" in text and "curve" in text
    assert run.data.tags["tracker_sched.registered_model"] == "cnn-sched"
    assert run.data.tags["tracker_sched.registered_version"] == str(version.version)
    assert version.tags["tracker_sched.registered_version"] == str(version.version)
    note = run.data.tags["mlflow.note.content"]
    assert f"version {version.version}" in note and "split:" in note
    assert f"forecast trust: {report.forecast_trust.level}" in note
    assert version.description == note
    assert "tracker-sched" in client.get_registered_model("cnn-sched").description


def test_loaded_bundle_recommends_the_same(
    server_model: str, on_server: str, bundle_dir: Path, sweep_records: list[RunRecord],
    tmp_path: Path,
) -> None:
    original = Bundle.load(bundle_dir)
    request = live_request(sweep_records[0], 0.5)
    want = recommend(original, request)
    assert want.status in ("planned", "fallback")
    client = MlflowClient()
    version = client.get_model_version_by_alias("cnn-sched", "champion")
    for uri in (server_model, f"mlflow:models:/cnn-sched/{version.version}",
                f"mlflow:runs:/{version.run_id}/bundle"):
        loaded = load_bundle(uri)
        assert loaded.manifest == original.manifest, uri
        assert recommend(loaded, request) == want, uri
    # download_bundle with an explicit destination puts the bundle there
    path = download_bundle("models:/cnn-sched@champion", dst=tmp_path / "dl")
    assert path.is_relative_to(tmp_path / "dl") and (path / "bundle.json").is_file()


def test_pyfunc_predict_round_trips_the_recommendation(
    server_model: str, on_server: str, bundle_dir: Path, sweep_records: list[RunRecord],
) -> None:
    model = mlflow.pyfunc.load_model("models:/cnn-sched@champion")
    original = Bundle.load(bundle_dir)
    request = live_request(sweep_records[1], 0.6)
    out = model.predict(frame(request), params={"total_steps": request.total_steps})
    assert list(out.columns)[:3] == ["status", "reason", "step"] and len(out) == 1
    got = recommendation_from_row(out.iloc[0].to_dict())
    assert got == recommend(original, request)
    assert got.schedule.step[-1] == request.total_steps
    assert int(out.iloc[0]["ready_step"]) <= request.observations[-1].step
    assert out.iloc[0]["mode_reason"] == mode_reason(original)

    # Early in the run the model answers the warm-up plan, not an error.
    early = live_request(sweep_records[1], 0.05)
    warm = model.predict(frame(early), params={"total_steps": early.total_steps})
    warm_rec = recommendation_from_row(warm.iloc[0].to_dict())
    assert warm_rec.status == "warmup"
    assert warm_rec == answer(original, early)
    assert int(warm.iloc[0]["ready_step"]) > early.observations[-1].step

    # params: an explicit step, and the current schedule the run follows
    current = json.dumps({"step": [0, request.total_steps], "lr": [0.05, 0.05]})
    at = model.predict(frame(request), params={"total_steps": request.total_steps,
                                               "step": request.observations[-1].step,
                                               "current": current})
    assert recommendation_from_row(at.iloc[0].to_dict()).step == request.observations[-1].step


def test_pyfunc_predict_without_total_steps_says_so(server_model: str, on_server: str) -> None:
    model = mlflow.pyfunc.load_model("models:/cnn-sched@champion")
    with pytest.raises(Exception, match="total_steps"):
        model.predict(pd.DataFrame({"step": [0, 10]}))


def test_row_round_trip_keeps_every_field() -> None:
    rec = Recommendation(status="planned", reason="r", step=5, lr_now=0.1,
                         schedule={"step": [5, 10], "lr": [0.1, 0.01]},  # type: ignore[arg-type]
                         predicted_final=0.9, predicted_spread=0.01, samples_accepted=3,
                         samples_drawn=8, model_version="v")
    row = recommendation_to_row(rec)
    assert isinstance(row["schedule"], str)
    assert recommendation_from_row(json.loads(json.dumps(row))) == rec


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("models:/cnn-sched@nope", "has no alias 'nope' (its aliases: champion)"),
        ("models:/no-such-model@champion", "no registered model 'no-such-model'"),
        ("models:/cnn-sched/999", "has no version 999"),
        ("runs:/0123456789abcdef0123456789abcdef/bundle", "no MLflow run"),
        ("s3://bucket/bundle", "not an MLflow bundle reference"),
    ],
)
def test_missing_model_alias_version_run_is_a_bundle_error(
    server_model: str, on_server: str, ref: str, message: str
) -> None:
    with pytest.raises(BundleError, match=re.escape(message)):
        download_bundle(ref)


def test_run_artifact_that_is_no_bundle(server_model: str, on_server: str) -> None:
    run_id = MlflowClient().get_model_version_by_alias("cnn-sched", "champion").run_id
    with pytest.raises(BundleError, match="neither a tracker-sched bundle"):
        download_bundle(f"runs:/{run_id}/report.json")


def test_register_refuses_a_folder_that_is_no_bundle(tmp_path: Path, mlflow_server: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        register_bundle(tmp_path / "empty", name="never", tracking_uri=mlflow_server)
    assert not MlflowClient(tracking_uri=mlflow_server).search_registered_models("name='never'")


@pytest.mark.slow
def test_embedded_sqlite_default_and_version_uri(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    sweep_records: list[RunRecord],
) -> None:
    """No tracking URI anywhere: MLflow's embedded sqlite store in the working directory."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    plot = tmp_path / "extra.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    uri = register_bundle(bundle_dir, name="local-sched", plots=[plot])
    assert uri == "mlflow:models:/local-sched/1"
    assert (tmp_path / "mlflow.db").is_file()
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    loaded = load_bundle(uri)
    request = live_request(sweep_records[2], 0.5)
    assert recommend(loaded, request) == recommend(Bundle.load(bundle_dir), request)
    run_id = MlflowClient().get_model_version("local-sched", "1").run_id
    assert [a.path for a in MlflowClient().list_artifacts(run_id, "plots")] == ["plots/extra.png"]
    # A second registration is version 2; an alias can be added then.
    assert register_bundle(bundle_dir, name="local-sched", alias="champion") == \
        "mlflow:models:/local-sched@champion"
    assert str(MlflowClient().get_model_version_by_alias("local-sched", "champion").version) == "2"


def test_a_stale_active_experiment_falls_back_to_the_default(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLFLOW_EXPERIMENT_ID naming an experiment this store lacks (set for another store,
    or left over): the fit run lands in the store's Default experiment instead of failing."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "424242")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ref = register_bundle(bundle_dir, name="stale-sched", tracking_uri=uri)
    assert ref == "mlflow:models:/stale-sched/1"
    run_id = MlflowClient(uri).get_model_version("stale-sched", "1").run_id
    assert MlflowClient(uri).get_run(run_id).info.experiment_id == "0"


@pytest.mark.slow
def test_cli_fit_register_end_to_end(
    mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, sweep_records: list[RunRecord],
) -> None:
    config = tmp_path / "fit.json"
    config.write_text(tiny_config().model_dump_json())
    out = tmp_path / "bundle"
    code = main(["fit", "--source", "files", "--path", str(FIXTURE), "--out", str(out),
                 "--config", str(config), "--no-progress", "--register", "cli-sched",
                 "--alias", "champion", "--tracking-uri", mlflow_server])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "registered mlflow:models:/cli-sched@champion" in printed
    client = MlflowClient(tracking_uri=mlflow_server)
    run_id = client.get_model_version_by_alias("cli-sched", "champion").run_id
    if (out / "forecast.png").is_file():  # plots need matplotlib, an optional extra
        assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/forecast.png"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    request = live_request(sweep_records[3], 0.5)
    assert recommend(load_bundle("mlflow:models:/cli-sched@champion"), request) == \
        recommend(Bundle.load(out), request)
