"""Fault matrix: the MLflow tracking server is killed (SIGKILL, as in a crash) in the middle of
a read, of a registration and of a live run. Real ``mlflow server`` processes on 127.0.0.1,
started by this module on one sqlite store and killed by their own process id; a restart on
the same store shows what survived.

One server is started per row that needs a live one (about 6-12 s each, three in all): the
rows run in file order and share the store.

| row | what must survive |
|---|---|
| killed mid-read | the process: one clear error within seconds (no hang, no traceback) |
| killed mid-registration | the local bundle; the champion alias still names the old version,
  no new version; cost: the fit run it had started, left RUNNING without a model |
| killed mid-run | the training loop (no exception, finite lr, ``close()`` within its timeout)
  and the plan made after the crash (saved to ``fallback_dir``) |
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")

import mlflow
from mlflow.tracking import MlflowClient

from benchmarks.mlflow_server import LocalMlflowServer
from tests.tiny import FIXTURE
from tracker_sched.bundle.folder import Bundle
from tracker_sched.cli import main
from tracker_sched.errors import BundleError
from tracker_sched.fit.generative import FitResult
from tracker_sched.sources.files import read_sweep
from tracker_sched.sources.mlflow_log import log_sweep
from tracker_sched.sources.mlflow_source import MlflowSource

FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMlflowServer]:
    server = LocalMlflowServer(tmp_path_factory.mktemp("killed") / "store")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


@pytest.fixture(autouse=True)
def fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's client retries a dead server for minutes by default (docs: trackers.md)."""
    for key, value in FAIL_FAST.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _up(tracker: LocalMlflowServer) -> str:
    return tracker.uri if tracker.alive else tracker.start()


def test_killed_mid_read(tracker: LocalMlflowServer, state: dict[str, Any],
                         tiny_fit: FitResult, monkeypatch: pytest.MonkeyPatch,
                         tmp_path: Path) -> None:
    uri = _up(tracker)
    records = read_sweep(FIXTURE).runs[:8]
    state["parent"] = log_sweep(records, experiment="killed", tracking_uri=uri)
    # A champion to protect in the next row.
    older = tiny_fit.bundle.save(tmp_path / "older")
    from tracker_sched.stores.mlflow_store import register_bundle

    register_bundle(older, name="killed-model", alias="champion", tracking_uri=uri,
                    experiment="killed")
    real = MlflowSource._histories

    def die_then_read(self: MlflowSource, *args: Any, **kwargs: Any) -> Any:
        tracker.kill()  # the run list is read; the histories are not
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowSource, "_histories", die_then_read)
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["fit", "--source", "mlflow", "--project", "killed", "--sweep",
                   state["parent"], "--tracking-uri", uri, "--out", str(tmp_path / "b"),
                   "--no-progress", "--workers", "1"])
    assert time.perf_counter() - t0 < 60
    assert rc == 1, err.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert lines[-1].startswith("tracker-sched: error:") and "Traceback" not in err.getvalue()
    assert not (tmp_path / "b").exists()


def test_killed_mid_registration(tracker: LocalMlflowServer, state: dict[str, Any],
                                 tiny_fit: FitResult, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    uri = _up(tracker)
    client = MlflowClient(uri)
    before = client.get_model_version_by_alias("killed-model", "champion").version
    newer = tiny_fit.bundle.save(tmp_path / "newer")
    real = mlflow.pyfunc.log_model

    def die_then_log(*args: Any, **kwargs: Any) -> Any:
        tracker.kill()  # the fit run exists; the model is not logged yet
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.pyfunc, "log_model", die_then_log)
    from tracker_sched.stores.mlflow_store import register_bundle

    t0 = time.perf_counter()
    with pytest.raises(BundleError):
        register_bundle(newer, name="killed-model", alias="champion", tracking_uri=uri,
                        experiment="killed")
    assert time.perf_counter() - t0 < 60
    assert mlflow.active_run() is None  # no half-open run left in this process
    assert Bundle.load(newer).manifest.created_at == tiny_fit.bundle.manifest.created_at
    uri = tracker.start()  # restart on the same store
    client = MlflowClient(uri)
    assert client.get_model_version_by_alias("killed-model", "champion").version == before
    assert len(client.search_model_versions("name='killed-model'")) == 1  # no half version
    # What the crash costs: the fit run it had started, left unfinished, without a model.
    fits = client.search_runs([client.get_experiment_by_name("killed").experiment_id],
                              "tags.`tracker_sched.kind` = 'fit'", order_by=["start_time DESC"])
    assert fits[0].info.status == "RUNNING" and len(fits) == 2


def test_killed_mid_run(tracker: LocalMlflowServer, state: dict[str, Any],
                        tiny_fit: FitResult, tmp_path: Path) -> None:
    from tracker_sched.integrations.mlflow import MlflowAdvisorCallback

    uri = _up(tracker)
    records = read_sweep(FIXTURE).runs
    record = records[4]
    rows: dict[int, dict[str, float]] = {}
    for role, key in (("train_loss", "train_loss"), ("val_metric", "val_acc"), ("lr", "lr")):
        series = record.series(role)  # type: ignore[arg-type]
        assert series is not None
        for s, v in zip(series.step, series.value, strict=True):
            rows.setdefault(s, {})[key] = v
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("killed-live"))
    cb = MlflowAdvisorCallback(tiny_fit.bundle, 840, run_id=run.info.run_id, tracking_uri=uri,
                               flush_timeout_s=3.0, fallback_dir=tmp_path / "plans")
    lrs, slowest = [], 0.0
    for i, (step, metrics) in enumerate(sorted(rows.items())):
        if i == 5:  # before the window is ready: the plan is made with the tracker gone
            tracker.kill()
        t0 = time.perf_counter()
        lr = cb.log_metrics(metrics, step=step)
        slowest = max(slowest, time.perf_counter() - t0)
        lrs.append(lr)
    t0 = time.perf_counter()
    cb.close()
    assert time.perf_counter() - t0 < 3.0 + 2.0
    assert all(math.isfinite(x) and x > 0 for x in lrs)
    assert slowest < 1.0  # the tracker's death never reaches the training step
    assert cb.tracker_errors > 0 or cb.dropped > 0  # and it was noticed, not hidden
    assert cb.advisor.plan.status == "planned"  # the plan made after the crash...
    assert list((tmp_path / "plans").glob("*.json"))  # ...is saved beside, not lost

