"""What the MLflow store keeps and leaves behind, and what the served model accepts (issue 15,
items 6, 7 and 8), against a real sqlite store.

- The registered artifact holds the bundle's own files, with secrets redacted, never a user's
  file that lies in the bundle folder.
- ``mlflow:`` bundle loads leave no temporary folder behind.
- The pyfunc model refuses oversized requests and impossible steps with one clear line.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("mlflow")

import pandas as pd
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from tracker_sched.bundle.folder import MANIFEST, Bundle
from tracker_sched.errors import InputError
from tracker_sched.fit.generative import FitResult
from tracker_sched.limits import MAX_CURRENT_CHARS, MAX_ROWS
from tracker_sched.stores import load_bundle
from tracker_sched.stores.mlflow_pyfunc import TrackerSchedModel
from tracker_sched.stores.mlflow_store import register_bundle

SECRET = "hf_SECRETTOKEN9"


@pytest.fixture(scope="module")
def store(tiny_fit: FitResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bundle folder as an older tracker-sched wrote it (a config secret in bundle.json) with
    a user's file beside it, registered in a sqlite store."""
    root = tmp_path_factory.mktemp("hygiene")
    folder = tiny_fit.bundle.save(root / "bundle")
    raw = json.loads((folder / MANIFEST).read_text())
    raw["sweep"]["best_config"]["hf_token"] = SECRET
    raw.pop("redacted", None)
    (folder / MANIFEST).write_text(json.dumps(raw))
    (folder / "NOTES.md").write_text("private notes")
    uri = f"sqlite:///{root}/mlflow.db"
    ref = register_bundle(folder, name="hygiene", alias="champion", tracking_uri=uri,
                          experiment="hygiene")
    return {"uri": uri, "ref": ref, "folder": folder, "root": root}


def test_item7_the_registered_artifact_holds_no_secret_and_no_user_file(
    store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    version = MlflowClient().get_model_version_by_alias("hygiene", "champion")
    run_files = Path(download_artifacts(run_id=version.run_id, artifact_path="",
                                        dst_path=str(tmp_path / "run")))
    model_files = Path(download_artifacts(artifact_uri="models:/hygiene@champion",
                                          dst_path=str(tmp_path / "model")))
    files = [p for root in (run_files, model_files) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == MANIFEST for p in files)
    assert not any(p.name == "NOTES.md" for p in files)
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    manifest = next(p for p in files if p.name == MANIFEST)
    assert json.loads(manifest.read_text())["redacted"] == ["hf_token"]


def test_item8_mlflow_loads_leave_no_temporary_folder(
    store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for _ in range(3):
        bundle = load_bundle(store["ref"])
        assert bundle.manifest.redacted == ["hf_token"]
    left = [p for p in scratch.rglob("*") if p.is_file()]
    assert left == [], left


@pytest.fixture(scope="module")
def model(store: dict[str, Any]) -> TrackerSchedModel:
    m = TrackerSchedModel()
    m.load_context(SimpleNamespace(artifacts={"bundle": str(store["folder"])}))
    return m


def test_item8_served_rows_are_bounded(model: TrackerSchedModel) -> None:
    """A 10^6-row request used to take 8 s and 1.5 GB; now it is refused at once."""
    frame = pd.DataFrame({"step": range(MAX_ROWS + 1), "lr": 0.01})
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="rows"):
        model.predict(None, frame, params={"total_steps": 10**7})
    assert time.perf_counter() - t0 < 2.0


def test_item8_served_bytes_are_bounded(model: TrackerSchedModel) -> None:
    current = json.dumps({"step": [0] * MAX_CURRENT_CHARS, "lr": [0.1] * MAX_CURRENT_CHARS})
    with pytest.raises(InputError, match="current"):
        model.predict(None, pd.DataFrame({"step": [0], "lr": [0.01]}),
                      params={"total_steps": 100, "current": current})


@pytest.mark.parametrize("step", [float("inf"), 1e30, -5, float("nan"), 2.5])
def test_item6_served_steps_are_checked(model: TrackerSchedModel, step: float) -> None:
    with pytest.raises(InputError, match="step"):
        model.predict(None, pd.DataFrame({"step": [0], "lr": [0.01]}),
                      params={"total_steps": 100, "step": step})


@pytest.mark.parametrize("total", [float("inf"), 1e30, 0, -5, 1e21])
def test_item6_served_budgets_are_checked(model: TrackerSchedModel, total: float) -> None:
    with pytest.raises(InputError, match="total_steps"):
        model.predict(None, pd.DataFrame({"step": [0], "lr": [0.01]}),
                      params={"total_steps": total})


def test_registering_leaves_the_local_folder_as_it_was(store: dict[str, Any]) -> None:
    assert Bundle.load(store["folder"]).manifest.sweep.best_config["hf_token"] == SECRET
    assert (store["folder"] / "NOTES.md").read_text() == "private notes"
