"""The MLflow source against real MLflow: a server (bulk endpoint) and the embedded sqlite store."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

pytest.importorskip("mlflow")

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tracker_sched.data.validation import validate_sweep
from tracker_sched.errors import InputError, MissingDependencyError, SourceError
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.model.latent import ModelConfig
from tracker_sched.schema import ROLES, RunRecord
from tracker_sched.sources import mlflow_history
from tracker_sched.sources.base import Source
from tracker_sched.sources.mlflow_log import log_sweep
from tracker_sched.sources.mlflow_source import MlflowSource, parse_param

EXPERIMENT = "cnn-sweep"


@pytest.fixture(scope="module")
def server_sweep(mlflow_server: str, sweep_records: list[RunRecord]) -> tuple[str, str]:
    """The fixture sweep logged once to the server: (tracking uri, parent run id)."""
    return mlflow_server, log_sweep(sweep_records, EXPERIMENT, tracking_uri=mlflow_server)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded sqlite store for the module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow-sqlite')}/mlflow.db"


@pytest.fixture(scope="module")
def sqlite_sweep(sqlite_store: str, sweep_records: list[RunRecord]) -> tuple[str, str]:
    return sqlite_store, log_sweep(sweep_records, EXPERIMENT, tracking_uri=sqlite_store)


@pytest.fixture(scope="module")
def one_thread() -> None:
    """Torch runs on one thread in every test (tests/conftest.py)."""


def assert_same_sweep(read: list[RunRecord], logged: list[RunRecord], sweep_id: str) -> None:
    assert len(read) == len(logged)
    by_name = {r.name: r for r in read}
    assert len(by_name) == len(read)
    for want in logged:
        got = by_name[want.name]
        assert got.source == "mlflow"
        assert got.sweep_id == sweep_id
        assert got.state == want.state
        assert got.total_steps == want.total_steps
        assert got.metric_keys == want.metric_keys
        assert got.config == {**want.config, "total_steps": want.total_steps}
        for role in ROLES:
            g, w = got.series(role), want.series(role)
            assert g is not None and w is not None
            assert g.step == w.step
            assert g.value == pytest.approx(w.value, rel=1e-12, abs=0.0)


def experiment_id(uri: str, name: str = EXPERIMENT) -> str:
    exp = MlflowClient(uri).get_experiment_by_name(name)
    assert exp is not None
    return str(exp.experiment_id)


def timed_read(source: MlflowSource) -> tuple[list[RunRecord], float]:
    t0 = time.perf_counter()
    result = source.read()
    assert not result.issues
    return result.runs, time.perf_counter() - t0


# -- round trips ------------------------------------------------------------------------------


def test_server_round_trip_bulk_equals_client(
    server_sweep: tuple[str, str], sweep_records: list[RunRecord],
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri, parent = server_sweep
    bulk = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri)
    client = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri, use_bulk=False)
    assert isinstance(bulk, Source) and bulk.name == "mlflow"
    bulk_runs, bulk_s = timed_read(bulk)
    client_runs, client_s = timed_read(client)
    assert (bulk.history_path, client.history_path) == ("bulk", "client")
    assert_same_sweep(bulk_runs, sweep_records, parent)
    key = lambda r: r.run_id  # noqa: E731
    assert sorted(bulk_runs, key=key) == sorted(client_runs, key=key)
    with capsys.disabled():
        print(f"\n[mlflow read, 48 runs x 3 metrics from the server] bulk {bulk_s:.2f} s, "
              f"get_metric_history x8 threads {client_s:.2f} s")


def test_sqlite_round_trip(
    sqlite_sweep: tuple[str, str], sweep_records: list[RunRecord],
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri, parent = sqlite_sweep
    source = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri)
    runs, seconds = timed_read(source)
    assert source.history_path == "client"  # no REST on an embedded store
    assert_same_sweep(runs, sweep_records, parent)
    with capsys.disabled():
        print(f"\n[mlflow read, 48 runs from sqlite] get_metric_history x8 threads {seconds:.2f} s")


def test_default_tracking_uri_is_mlflows_own(
    sqlite_sweep: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, parent = sqlite_sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert len(MlflowSource(EXPERIMENT, parent_run_id=parent).read().runs) == 48


def test_bulk_chunks_stay_within_the_point_limit(
    server_sweep: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, parent = server_sweep
    want = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri).read().runs
    # 94 points a run: a 300-point limit forces requests of at most 3 runs and splits.
    monkeypatch.setattr(mlflow_history, "BULK_MAX_POINTS", 300)
    source = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri,
                          bulk_endpoint="full")
    assert source.read().runs == want
    assert source.history_path == "bulk"
    # A single run over the limit cannot be read in bulk: the client pages it instead.
    monkeypatch.setattr(mlflow_history, "BULK_MAX_POINTS", 50)
    source = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri,
                          bulk_endpoint="full")
    assert source.read().runs == want
    assert source.history_path == "client"


def test_interval_endpoint_reads_long_histories_exactly_or_sampled_on_request(
    server_sweep: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, parent = server_sweep
    want = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri,
                        use_bulk=False).read().runs
    # 94 points a run against a 50-point interval cap: every series may have been
    # sampled, so each is read again through the exact endpoint.
    monkeypatch.setattr(mlflow_history, "INTERVAL_MAX_POINTS", 50)
    source = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri)
    assert source.read().runs == want
    assert source.history_path == "bulk"
    # Accepting the server's sampling: at most 20 points, first and last kept.
    sampled = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri,
                           sample_points=20).read().runs
    assert [r.run_id for r in sampled] == [r.run_id for r in want]
    for got, full in zip(sampled, want, strict=True):
        assert 2 <= len(got.lr.step) <= 20
        assert got.lr.step[0] == full.lr.step[0] and got.lr.step[-1] == full.lr.step[-1]
        assert set(got.lr.step) <= set(full.lr.step)
    with pytest.raises(ValueError, match="sample_points"):
        MlflowSource(EXPERIMENT, sample_points=5000)


def test_missing_interval_endpoint_uses_the_exact_bulk_endpoint(
    server_sweep: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, parent = server_sweep
    want = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri).read().runs
    monkeypatch.setattr(mlflow_history, "INTERVAL_ENDPOINT", "/api/2.0/mlflow/metrics/no-such")
    source = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri)
    assert source.read().runs == want
    assert source.history_path == "bulk"


def test_missing_bulk_endpoint_falls_back_to_the_client(
    server_sweep: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    uri, parent = server_sweep
    want = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri).read().runs
    monkeypatch.setattr(mlflow_history, "BULK_ENDPOINT", "/ajax-api/2.0/mlflow/metrics/no-such")
    monkeypatch.setattr(mlflow_history, "INTERVAL_ENDPOINT", "/api/2.0/mlflow/metrics/no-such")
    source = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri)
    assert source.read().runs == want
    assert source.history_path == "client"
    assert "falling back to get_metric_history" in caplog.text


def test_bulk_endpoint_contract(server_sweep: tuple[str, str]) -> None:
    """The limits and response shape the bulk reader relies on, checked on the real server."""
    uri, parent = server_sweep
    ids = [r.info.run_id for r in MlflowClient(uri).search_runs(
        [experiment_id(uri)], f"tags.mlflow.parentRunId = '{parent}'")]
    url = uri + mlflow_history.BULK_ENDPOINT
    params: dict[str, Any] = {"run_id": ids[:2], "metric_key": "lr"}
    resp = requests.get(url, params=params, timeout=30)
    assert resp.status_code == 200
    metrics = resp.json()["metrics"]
    assert len(metrics) == 2 * 94
    assert set(metrics[0]) == {"key", "value", "timestamp", "step", "run_id"}
    params = {"run_id": ids, "metric_key": "lr", "max_results": 10}
    capped = requests.get(url, params=params, timeout=30)
    assert len(capped.json()["metrics"]) == 10  # cut off silently: chunks must stay under
    params = {"run_id": [*ids, *ids, *ids][:101], "metric_key": "lr"}
    too_many = requests.get(url, params=params, timeout=30)
    assert too_many.status_code == 400
    assert "more than 100 run_ids" in too_many.text
    # The interval endpoint: every point when a run has at most max_results, else an even
    # sample keeping the first and last.
    url = uri + mlflow_history.INTERVAL_ENDPOINT
    full = requests.get(url, params={"run_ids": ids[:2], "metric_key": "lr",
                                     "max_results": 2500}, timeout=30).json()["metrics"]
    assert len(full) == 2 * 94
    assert {"run_id", "value", "step", "timestamp"} <= set(full[0])
    few = requests.get(url, params={"run_ids": ids[:1], "metric_key": "lr",
                                    "max_results": 10}, timeout=30).json()["metrics"]
    assert len(few) == 10
    assert int(few[-1]["step"]) == max(int(m["step"]) for m in full if m["run_id"] == ids[0])
    over = requests.get(url, params={"run_ids": ids[:1], "metric_key": "lr",
                                     "max_results": 2501}, timeout=30)
    assert over.status_code == 400


# -- selecting the sweep ------------------------------------------------------------------------


def test_filter_by_param(server_sweep: tuple[str, str]) -> None:
    uri, parent = server_sweep
    flt = "params.schedule = 'onecycle'"
    with_parent = MlflowSource(EXPERIMENT, parent_run_id=parent, filter=flt, tracking_uri=uri)
    whole_experiment = MlflowSource(EXPERIMENT, filter=flt, tracking_uri=uri)
    for source in (with_parent, whole_experiment):
        runs = source.read().runs
        assert len(runs) == 12
        assert {r.config["schedule"] for r in runs} == {"onecycle"}
    assert {r.sweep_id for r in whole_experiment.read().runs} == {experiment_id(uri)}
    # Without a parent or filter: every run but the sweep's container (the parent) run.
    everything = MlflowSource(EXPERIMENT, tracking_uri=uri).read().runs
    assert len(everything) == 48 and parent not in {r.run_id for r in everything}


def test_experiment_not_found(server_sweep: tuple[str, str]) -> None:
    uri, _ = server_sweep
    with pytest.raises(SourceError) as err:
        MlflowSource("no-such-experiment", tracking_uri=uri).read()
    msg = str(err.value)
    assert "'no-such-experiment' not found" in msg and uri in msg and repr(EXPERIMENT) in msg


def test_parent_run_not_found(server_sweep: tuple[str, str]) -> None:
    uri, _ = server_sweep
    with pytest.raises(SourceError, match=r"parent run '0123456789abcdef' not found"):
        MlflowSource(EXPERIMENT, parent_run_id="0123456789abcdef", tracking_uri=uri).read()


def test_sweep_with_no_runs(server_sweep: tuple[str, str], sqlite_store: str) -> None:
    uri, parent = server_sweep
    with pytest.raises(SourceError, match=r"no runs .*params.schedule = 'nope'"):
        MlflowSource(EXPERIMENT, parent_run_id=parent, filter="params.schedule = 'nope'",
                     tracking_uri=uri).read()
    client = MlflowClient(sqlite_store)
    client.create_experiment("empty")
    with pytest.raises(SourceError, match=r"no runs in MLflow experiment 'empty'.*no filter"):
        MlflowSource("empty", tracking_uri=sqlite_store).read()


def test_bad_filter_is_a_source_error(server_sweep: tuple[str, str]) -> None:
    uri, _ = server_sweep
    with pytest.raises(SourceError, match="search failed"):
        MlflowSource(EXPERIMENT, filter="params.schedule ~~ 1", tracking_uri=uri).read()


# -- metric names, missing and repaired data ----------------------------------------------------


def _renamed(rec: RunRecord, keys: dict[str, str]) -> RunRecord:
    return rec.model_copy(update={"metric_keys": keys})


def test_hf_and_lightning_names(sqlite_store: str, sweep_records: list[RunRecord]) -> None:
    hf = {"train_loss": "loss", "lr": "learning_rate", "val_metric": "eval_accuracy"}
    lightning = {"train_loss": "train_loss", "lr": "lr-AdamW", "val_metric": "val_acc"}
    logged = [_renamed(r, hf) for r in sweep_records[:3]]
    logged += [_renamed(r, lightning) for r in sweep_records[3:6]]
    parent = log_sweep(logged, "names", tracking_uri=sqlite_store)
    runs = {r.name: r for r in
            MlflowSource("names", parent_run_id=parent, tracking_uri=sqlite_store).read().runs}
    for want in logged:
        got = runs[want.name]
        assert got.metric_keys == want.metric_keys
        assert got.lr == want.lr and got.train_loss == want.train_loss
    assert len(validate_sweep(list(runs.values())).runs) == 6


def test_runs_missing_lr_are_excluded_by_validation(
    server_sweep: tuple[str, str], sweep_records: list[RunRecord],
) -> None:
    uri, _ = server_sweep
    logged = [r.model_copy(update={"lr": None, "metric_keys": {}}) if i < 3 else r
              for i, r in enumerate(sweep_records[:8])]
    parent = log_sweep(logged, "some-without-lr", tracking_uri=uri)
    result = MlflowSource("some-without-lr", parent_run_id=parent, tracking_uri=uri).read()
    assert len(result.runs) == 8 and not result.issues
    no_lr = {r.run_id for r in result.runs if r.lr is None}
    assert len(no_lr) == 3
    validated = validate_sweep(result.runs)
    assert set(validated.excluded_ids()) == no_lr
    assert all("learning rate" in i.reason for i in validated.issues)


def test_no_run_has_lr_names_the_keys_seen(
    sqlite_store: str, sweep_records: list[RunRecord],
) -> None:
    logged = [r.model_copy(update={"lr": None, "metric_keys": {}}) for r in sweep_records[:2]]
    parent = log_sweep(logged, "without-lr", tracking_uri=sqlite_store)
    with pytest.raises(InputError) as err:
        MlflowSource("without-lr", parent_run_id=parent, tracking_uri=sqlite_store).read()
    msg = str(err.value)
    assert "--lr-key" in msg and "Keys seen: train_loss, val_metric" in msg


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "client"])
def test_duplicate_steps_keep_the_last_logged(server_sweep: tuple[str, str], bulk: bool) -> None:
    uri, _ = server_sweep
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("dupes") or client.create_experiment("dupes")
    exp_id = exp if isinstance(exp, str) else exp.experiment_id
    if not client.search_runs([exp_id]):
        run_id = client.create_run(exp_id, run_name="dupes").info.run_id
        # Out of order, and step 2 logged twice: the later timestamp wins.
        client.log_batch(run_id, metrics=[
            Metric("lr", 0.3, 1003, 3), Metric("lr", 0.1, 1001, 1), Metric("lr", 0.2, 1002, 2),
            Metric("lr", 0.25, 1010, 2), Metric("loss", 1.0, 1001, 1),
            Metric("loss", math.nan, 1002, 2),
        ])
        client.set_terminated(run_id, "KILLED")
    result = MlflowSource("dupes", tracking_uri=uri, use_bulk=bulk).read()
    (run,) = result.runs
    assert run.lr is not None and run.train_loss is not None
    assert (run.lr.step, run.lr.value) == ([1, 2, 3], [0.1, 0.25, 0.3])
    assert run.train_loss.step == [1, 2] and math.isnan(run.train_loss.value[1])
    assert run.state == "killed" and run.total_steps is None
    (issue,) = result.issues
    assert issue.action == "repaired" and "'lr': 1 point(s)" in issue.reason


def test_parse_param() -> None:
    assert parse_param("840") == 840 and parse_param("0.1") == 0.1
    assert parse_param("1e-3") == 1e-3 and parse_param("True") is True
    assert parse_param("nan") == "nan" and parse_param("adamw") == "adamw"
    assert parse_param("[1, 2]") == "[1, 2]"


def test_missing_mlflow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingDependencyError, match=r'tracker-sched\[mlflow\]'):
        MlflowSource("x", tracking_uri="sqlite:///unused.db").read()


# -- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_from_the_server(server_sweep: tuple[str, str], one_thread: None,
                             tmp_path: Path) -> None:
    uri, parent = server_sweep
    runs = MlflowSource(EXPERIMENT, parent_run_id=parent, tracking_uri=uri).read().runs
    config = FitConfig(max_iterations=20, eval_every=10, batch_size=16, grid_points=40,
                       window=10, ensemble=1,
                       model=ModelConfig(latent_dim=4, ode_dim=8, hidden=16, encoder_hidden=16))
    result = fit_sweep(runs, config, workers=1, progress=False)

    # The same through the command line: `tracker-sched fit --source mlflow`.
    from tracker_sched.bundle.folder import Bundle
    from tracker_sched.cli import main

    cfg = tmp_path / "fit.json"
    cfg.write_text(config.model_dump_json())
    rc = main(["fit", "--source", "mlflow", "--project", EXPERIMENT, "--sweep", parent,
               "--tracking-uri", uri, "--out", str(tmp_path / "b"), "--config", str(cfg),
               "--workers", "1", "--no-progress", "--no-plots"])
    assert rc == 0
    assert Bundle.load(tmp_path / "b").manifest.report.runs_used == 48
    assert result.report.runs_total == 48
    assert result.report.runs_used == 48
    assert result.report.val_key == "val_acc"
    assert set(result.report.holdout_ids) <= {r.run_id for r in runs}


def test_cli_mlflow_errors(mlflow_server: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    from tracker_sched.cli import main

    assert main(["fit", "--source", "mlflow", "--out", str(tmp_path / "b")]) == 1
    assert "--project" in capsys.readouterr().err
    rc = main(["fit", "--source", "mlflow", "--project", "no-such-experiment",
               "--tracking-uri", mlflow_server, "--out", str(tmp_path / "b")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tracker-sched: error:")
    assert "no-such-experiment" in err[-1]


def test_runs_logged_without_steps_are_placed_by_timestamp(sqlite_store: str) -> None:
    """``mlflow.log_metric(key, value)`` with no step stores step 0 for every point: the
    points are ordered by time, a step counting the train-loss points, and the budget is
    the last of them (a config budget counts another unit)."""
    client = MlflowClient(sqlite_store)
    exp_id = client.create_experiment("no-steps")
    for i, lr in enumerate((0.1, 0.01, 0.1, 0.01)):
        rid = client.create_run(exp_id, run_name=f"r{i}").info.run_id
        t0, metrics = 1_000_000, []
        for k in range(20):  # loss and lr every call, the val metric every 5th
            metrics += [Metric("loss", 1.0 / (k + 1), t0 + 10 * k, 0),
                        Metric("lr", lr, t0 + 10 * k, 0)]
            if k % 5 == 4:
                metrics.append(Metric("val_acc", 0.5 + k / 40, t0 + 10 * k + 5, 0))
        client.log_batch(rid, metrics=metrics,
                         params=[Param("lr", str(lr)),
                                 Param("seed", str(i // 2)),
                                 Param("total_steps", "2000")])
        client.set_terminated(rid, "FINISHED")
    result = MlflowSource("no-steps", tracking_uri=sqlite_store).read()
    run = result.runs[0]
    assert run.train_loss is not None and run.val_metric is not None
    assert run.train_loss.step == list(range(1, 21))
    assert run.val_metric.step == [5, 10, 15, 20]
    assert run.total_steps is None and run.metric_keys["step"] == "timestamp"
    assert all(i.action == "repaired" and "no steps logged" in i.reason for i in result.issues)
    from tracker_sched.data.preflight import preflight

    checked = preflight(result.runs, source_issues=result.issues)
    assert checked.problems == []
    assert {r.total_steps for r in checked.runs} == {20}  # not the config's 2000
    assert checked.configurations.describe() == "2 configurations x 2 seeds"
