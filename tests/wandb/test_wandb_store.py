"""The W&B bundle store with real wandb in offline mode.

A tiny bundle is fitted once for the module and logged as a W&B Artifact by
``wandb.init(mode="offline")`` runs in a temporary folder. Nothing is mocked:
the checks read back what wandb wrote, the artifact record in the run's
``.wandb`` transaction log (with the offline source's own record reader) and
the staged files under ``WANDB_DATA_DIR/artifacts/staging``.

Downloading needs a W&B server, which cannot run here. The download path runs
against the loopback GraphQL stub of ``tests/wandb/graphql_stub.py`` (a contract
test pinned to wandb 0.31: the real ``wandb.Api().artifact(...).download()``
talks to a real HTTP server on 127.0.0.1), serving the very files an offline
run staged; the error paths (unknown alias, wrong type, no server, offline run,
malformed reference) are tested too. ``use_artifact`` inside a live run needs an
online run, which the stub does not serve: that branch is untested here.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

wandb = pytest.importorskip("wandb")

from tests.tiny import FIXTURE, tiny_config  # noqa: E402
from tests.wandb.graphql_stub import GraphQLStub, StubArtifact  # noqa: E402
from tests.wandb.sweep_helpers import offline_env  # noqa: E402
from tracker_sched.bundle.folder import MANIFEST, WEIGHTS, Bundle  # noqa: E402
from tracker_sched.bundle.manifest import SCHEMA_VERSION  # noqa: E402
from tracker_sched.cli import main  # noqa: E402
from tracker_sched.errors import BundleError, InputError  # noqa: E402
from tracker_sched.fit.generative import FitResult, fit_sweep  # noqa: E402
from tracker_sched.sources.files import read_sweep  # noqa: E402
from tracker_sched.sources.wandb_log import Scan, iter_log_records, record_class  # noqa: E402
from tracker_sched.sources.wandb_offline import find_logs  # noqa: E402
from tracker_sched.stores import load_bundle  # noqa: E402
from tracker_sched.stores.wandb_store import (  # noqa: E402
    ARTIFACT_TYPE,
    FIT_JOB_TYPE,
    download_bundle,
    log_bundle_artifact,
)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[FitResult, Path]:
    result = fit_sweep(read_sweep(FIXTURE).runs, tiny_config(), workers=1, progress=False)
    return result, result.bundle.save(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """wandb in offline mode, every folder it writes inside ``tmp_path``."""
    offline_env(monkeypatch, tmp_path)
    wandb.teardown()
    yield tmp_path
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()


def records(root: Path) -> dict[str, list[Any]]:
    """Every record of every offline run under ``root``, by record type.

    ``wandb.teardown()`` first: ``run.finish()`` can return before wandb-core has
    written the run's last records; stopping the service flushes them.
    """
    assert wandb.run is None, "finish the run before reading its log"
    wandb.teardown()
    record_cls = record_class()
    out: dict[str, list[Any]] = {}
    for log in find_logs(root / "wandb"):
        with log.open("rb") as fh:
            for _, _, payload in iter_log_records(fh, Scan()):
                rec = record_cls()
                rec.ParseFromString(payload)
                kind = rec.WhichOneof("record_type")
                out.setdefault(kind, []).append(getattr(rec, kind))
    return out


def test_own_run_logs_the_staged_artifact(
    fitted: tuple[FitResult, Path], offline: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    result, bundle_dir = fitted
    with caplog.at_level(logging.WARNING, logger="tracker_sched.stores.wandb_store"):
        uri = log_bundle_artifact(bundle_dir, name="lr-model", aliases=["champion"],
                                  report=result.report, project="team/cnn")
    assert uri == "wandb:team/cnn/lr-model:champion"
    assert "offline" in caplog.text and "wandb sync" in caplog.text
    assert wandb.run is None  # the run it started is finished

    recs = records(offline)
    [run] = recs["run"]
    assert (run.entity, run.project, run.job_type) == ("team", "cnn", FIT_JOB_TYPE)
    assert [e.exit_code for e in recs["exit"]] == [0]
    [art] = recs["artifact"]
    assert (art.type, art.name) == (ARTIFACT_TYPE, "lr-model")
    assert set(art.aliases) == {"champion", "latest"}
    meta = json.loads(art.metadata)
    report = result.report
    assert meta["bundle_schema_version"] == SCHEMA_VERSION
    assert meta["runs_used"] == report.runs_used and meta["runs_holdout"] == report.runs_holdout
    assert meta["versions"]["torch"] == result.bundle.manifest.versions["torch"]
    assert report.holdout is not None
    rank = report.holdout.rank(0.5, "model")
    assert meta["rank_spearman"]["model.tau0.50"] == pytest.approx(rank.spearman)
    row = report.holdout.row(0.5, "val_metric", "model")
    assert meta["forecast_rmse"]["model.val_metric.tau0.50"] == pytest.approx(row.rmse_pooled)

    staged = {e.path: Path(e.local_path) for e in art.manifest.contents}
    assert set(staged) == {MANIFEST, WEIGHTS}
    for path, local in staged.items():
        assert local.is_file() and (offline / ".wandb-home") in local.parents
        assert local.read_bytes() == (bundle_dir / path).read_bytes()


def test_active_run_is_used_and_left_open(fitted: tuple[FitResult, Path], offline: Path) -> None:
    _, bundle_dir = fitted
    run = wandb.init(project="live", entity="team", mode="offline", job_type="train",
                     settings=wandb.Settings(silent=True, x_disable_stats=True))
    uri = log_bundle_artifact(bundle_dir, name="lr-model")  # report from the bundle itself
    assert uri == "wandb:team/live/lr-model:latest"
    assert wandb.run is run  # not ours to finish
    run.finish()
    recs = records(offline)
    [art] = recs["artifact"]
    assert [r.job_type for r in recs["run"]] == ["train"]
    meta = json.loads(art.metadata)
    assert meta["runs_used"] == fitted[0].report.runs_used and "rank_spearman" in meta


def test_without_a_project_is_an_input_error(fitted: tuple[FitResult, Path],
                                             offline: Path) -> None:
    with pytest.raises(InputError, match="WANDB_PROJECT"):
        log_bundle_artifact(fitted[1], name="lr-model")
    assert wandb.run is None  # refused before any run started


def test_project_from_the_environment(fitted: tuple[FitResult, Path], offline: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "envproj")
    monkeypatch.setenv("WANDB_ENTITY", "envteam")
    uri = log_bundle_artifact(fitted[1], name="m", aliases=["a1", "b2"])
    assert uri == "wandb:envteam/envproj/m:a1"
    [art] = records(offline)["artifact"]
    assert set(art.aliases) == {"a1", "b2", "latest"}


def test_bad_inputs(fitted: tuple[FitResult, Path], offline: Path, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-bundle"
    empty.mkdir()
    with pytest.raises(BundleError, match="not a bundle folder"):
        log_bundle_artifact(empty, name="m", project="p")
    with pytest.raises(InputError, match="artifact name"):
        log_bundle_artifact(fitted[1], name="bad/name", project="p")
    with pytest.raises(InputError, match="aliases"):
        log_bundle_artifact(fitted[1], name="m", aliases=["v:1"], project="p")


def test_cli_fit_register_store_wandb(offline: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "cli")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    config = tmp_path / "fit.json"
    config.write_text(tiny_config().model_dump_json())
    out = tmp_path / "cli-bundle"
    rc = main(["fit", "--source", "files", "--path", str(FIXTURE), "--out", str(out),
               "--config", str(config), "--workers", "1", "--no-plots", "--no-progress",
               "--register", "cli-model", "--alias", "champion", "--store", "wandb"])
    assert rc == 0
    assert "registered wandb:team/cli/cli-model:champion" in capsys.readouterr().out
    [art] = records(offline)["artifact"]
    assert art.name == "cli-model" and "champion" in art.aliases


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_download_without_a_server_is_a_bundle_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub_env(monkeypatch, f"http://127.0.0.1:{_closed_port()}", tmp_path)
    try:
        with pytest.raises(BundleError, match=r"cannot download W&B bundle 'team/cnn/m:champ'"):
            load_bundle("wandb:team/cnn/m:champ")
    finally:
        wandb.teardown()


def test_download_in_an_offline_run_is_a_bundle_error(offline: Path) -> None:
    wandb.init(project="p", entity="team", mode="offline",
               settings=wandb.Settings(silent=True, x_disable_stats=True))
    with pytest.raises(BundleError, match=r"'team/p/m:latest'"):
        download_bundle("team/p/m:latest", dst=offline / "dl")


@pytest.mark.parametrize("ref", ["team/p/m", "a/b/c/d:x", "m"])
def test_malformed_reference(ref: str) -> None:
    with pytest.raises(BundleError, match="ENTITY/PROJECT/NAME:ALIAS"):
        download_bundle(ref)


def stub_env(mp: pytest.MonkeyPatch, url: str, home: Path) -> None:
    """Point wandb at a loopback server, online, with a dummy key the stub accepts."""
    mp.delenv("WANDB_MODE", raising=False)
    mp.setenv("WANDB_BASE_URL", url)
    mp.setenv("WANDB_API_KEY", "x" * 40)
    mp.setenv("WANDB_ERROR_REPORTING", "false")
    mp.setenv("WANDB__GRAPHQL_RETRY_MAX", "1")
    mp.setenv("WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS", "0.1")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        mp.setenv(var, str(home))
    wandb.teardown()


def test_staged_artifact_downloads_and_loads(
    fitted: tuple[FitResult, Path], offline: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, bundle_dir = fitted
    uri = log_bundle_artifact(bundle_dir, name="lr-model", aliases=["champion"],
                              report=result.report, project="team/cnn")
    [art] = records(offline)["artifact"]
    served = tmp_path / "served"  # what `wandb sync` would upload: the staged files
    for entry in art.manifest.contents:
        (served / entry.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry.local_path, served / entry.path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("a,b\n1,2\n")
    artifacts = [
        StubArtifact("lr-model", art.type, served, aliases=list(art.aliases),
                     metadata=json.loads(art.metadata)),
        StubArtifact("a-dataset", "dataset", other),
        StubArtifact("no-bundle", ARTIFACT_TYPE, other),
    ]
    with GraphQLStub("team", "cnn", [], artifacts=artifacts) as stub:
        stub_env(monkeypatch, stub.url, tmp_path / "home")
        try:
            loaded = load_bundle(uri)
            assert loaded.manifest == result.bundle.manifest
            assert loaded.manifest == Bundle.load(bundle_dir).manifest
            for a, b in zip(loaded.models, result.bundle.models, strict=True):
                for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(),
                                              strict=True):
                    assert ka == kb and bool((va == vb).all())
            dst = download_bundle("team/cnn/lr-model:latest", dst=tmp_path / "dl")
            assert dst == tmp_path / "dl" and (dst / WEIGHTS).is_file()
            with pytest.raises(BundleError, match=r"'team/cnn/lr-model:nope'"):
                download_bundle("team/cnn/lr-model:nope")
            with pytest.raises(BundleError, match=r"'team/cnn/a-dataset:latest'.*type"):
                download_bundle("team/cnn/a-dataset:latest")
            with pytest.raises(BundleError, match=r"holds no tracker-sched bundle"):
                download_bundle("team/cnn/no-bundle:latest")
        finally:
            wandb.teardown()
    assert not stub.unknown, stub.unknown
    assert any(path.endswith("/weights.pt") for path in stub.downloads)


def test_item7_the_artifact_holds_no_secret_and_no_user_file(
    fitted: tuple[FitResult, Path], offline: Path, tmp_path: Path
) -> None:
    """Issue 15, item 7: a bundle folder as an older tracker-sched saved it (a config secret
    in bundle.json), with a user's file beside it, is logged without either."""
    src = fitted[0].bundle.save(tmp_path / "older")
    raw = json.loads((src / MANIFEST).read_text())
    raw["sweep"]["best_config"]["wandb_api_key"] = "SECRETKEY7"
    raw.pop("redacted", None)
    (src / MANIFEST).write_text(json.dumps(raw))
    (src / "NOTES.md").write_text("private")
    log_bundle_artifact(src, name="lr-model", project="team/cnn")
    [art] = records(offline)["artifact"]
    staged = {e.path: Path(e.local_path) for e in art.manifest.contents}
    assert set(staged) == {MANIFEST, WEIGHTS}
    assert all(b"SECRETKEY7" not in p.read_bytes() for p in staged.values())
    assert json.loads(staged[MANIFEST].read_text())["redacted"] == ["wandb_api_key"]
