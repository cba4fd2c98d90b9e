"""The W&B API source against a loopback GraphQL stub: a contract test pinned to wandb 0.31.

No W&B server can run here (the real one is a closed Docker image), so the
read path is exercised against ``tests/wandb/graphql_stub.py``: a real HTTP
server on 127.0.0.1 that ``WANDB_BASE_URL`` points at, answering the GraphQL
operations wandb 0.31 sends (``Viewer``, ``Runs``, ``GetSweep``,
``RunHistoryKeys``, ``RunParquetHistory``, ``HistoryPage``...). The real
``wandb`` package runs unpatched: ``wandb.Api`` and ``run.scan_history`` go
through wandb-core to the stub exactly as they would to api.wandb.ai. If a wandb
upgrade changes the queries, ``stub.unknown`` names the new operations (every
test checks it is empty).

The stub serves the small CNN sweep of ``tests/fixtures/cnn_sweep_small.jsonl``
under W&B-style keys (``train/loss``, ``lr``, ``val/acc``), plus edge runs:
NaN values, no lr key, a loss logged every step with a validation metric every
100 steps over 2,500 steps (three history pages), and a run whose history
requests fail with HTTP 500.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

wandb = pytest.importorskip("wandb")

from tests.tiny import FIXTURE  # noqa: E402
from tests.wandb.graphql_stub import GraphQLStub, StubRun  # noqa: E402
from tracker_sched.cli import main  # noqa: E402
from tracker_sched.data.validation import validate_sweep  # noqa: E402
from tracker_sched.errors import InputError, SourceError  # noqa: E402
from tracker_sched.schema import MetricMap, RunRecord  # noqa: E402
from tracker_sched.sources import wandb_api  # noqa: E402
from tracker_sched.sources.base import Source, SourceResult  # noqa: E402
from tracker_sched.sources.files import read_sweep  # noqa: E402
from tracker_sched.sources.wandb_api import WandbApiSource  # noqa: E402

KEYS = {"train_loss": "train/loss", "lr": "lr", "val_metric": "val/acc"}
SWEEP, EDGE, NO_LR = "cnn1sweep", "edge2swp", "nolr3swp"
MIXED_STEPS, VAL_EVERY = 2500, 100


def fixture_rows(rec: RunRecord) -> list[dict[str, Any]]:
    """A fixture run's series as W&B history rows (one row per step, each key where logged)."""
    rows: dict[int, dict[str, Any]] = {}
    for role, key in KEYS.items():
        series = rec.series(role)  # type: ignore[arg-type]
        assert series is not None
        for step, value in zip(series.step, series.value, strict=True):
            rows.setdefault(step, {"_step": step, "_runtime": step / 10})[key] = value
    return [rows[s] for s in sorted(rows)]


def served_config(rec: RunRecord) -> dict[str, Any]:
    return {**rec.config, "total_steps": rec.total_steps}


def edge_runs() -> list[StubRun]:
    nan_rows = [{"_step": s, "train/loss": 2.0 - s / 100, "lr": 0.01, "val/acc": s / 100}
                for s in range(0, 100, 10)]
    nan_rows[4]["train/loss"] = math.nan
    nan_rows[6]["val/acc"] = math.inf
    mixed = [{"_step": s, "train/loss": 1 / (s + 1), "lr": 1e-3,
              **({"val/acc": s / MIXED_STEPS} if s % VAL_EVERY == 0 else {})}
             for s in range(MIXED_STEPS)]
    no_lr = [{"_step": s, "train/loss": 1.0, "val/acc": 0.5} for s in range(0, 50, 5)]
    ok = [{"_step": s, "train/loss": 1.0, "lr": 0.1, "val/acc": 0.5} for s in range(0, 50, 5)]
    return [
        StubRun("nan1", "nan-run", config={"total_steps": 100}, sweep=EDGE, rows=nan_rows),
        StubRun("mixed1", "mixed-rates", config={"total_steps": MIXED_STEPS}, sweep=EDGE,
                rows=mixed, summary={"val/acc": 0.96, "_runtime": 12.0}),
        StubRun("nolr1", "no-lr", config={"total_steps": 50}, sweep=EDGE, rows=no_lr),
        StubRun("fail1", "history-fails", config={"total_steps": 50}, sweep=EDGE, rows=ok,
                fail_history=True),
        StubRun("nolr2", "no-lr-a", sweep=NO_LR, rows=no_lr, state="crashed"),
        StubRun("nolr3", "no-lr-b", sweep=NO_LR, rows=no_lr),
    ]


@pytest.fixture(scope="module")
def fixture_runs() -> list[RunRecord]:
    return read_sweep(FIXTURE).runs


@pytest.fixture(scope="module")
def stub(fixture_runs: list[RunRecord], tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[GraphQLStub]:
    runs = [StubRun(r.run_id, r.name or r.run_id, config=served_config(r),
                    summary={"val/acc": r.val_metric.value[-1] if r.val_metric else None},
                    state=r.state, sweep=SWEEP, rows=fixture_rows(r)) for r in fixture_runs]
    # Two runs of the same project outside the sweep: a sweep read must leave them out.
    runs += [StubRun(f"loose{i}", f"loose-{i}", config=served_config(fixture_runs[i]),
                     rows=fixture_rows(fixture_runs[i])) for i in range(2)]
    home = tmp_path_factory.mktemp("wandb-home")
    with GraphQLStub("team", "cnn", runs + edge_runs(), sweeps={SWEEP, EDGE, NO_LR}) as server, \
            pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_BASE_URL", server.url)
        mp.setenv("WANDB_API_KEY", "x" * 40)  # the stub accepts any key
        mp.setenv("WANDB_ERROR_REPORTING", "false")
        mp.setenv("WANDB_SILENT", "true")
        # One retry, not minutes of them, for the run whose history answers HTTP 500.
        mp.setenv("WANDB__GRAPHQL_RETRY_MAX", "1")
        mp.setenv("WANDB__GRAPHQL_RETRY_WAIT_MIN_SECONDS", "0.05")
        mp.setenv("WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS", "0.1")
        for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR",
                    "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(home))
        for var in ("WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_SWEEP_ID",
                    "WANDB_RUN_ID"):
            mp.delenv(var, raising=False)
        wandb.teardown()  # settings are read from the environment when wandb sets up
        try:
            yield server
        finally:
            wandb.teardown()
    assert not server.unknown, f"GraphQL operations the stub does not know: {server.unknown}"


@pytest.fixture(scope="module")
def sweep_result(stub: GraphQLStub) -> SourceResult:
    return WandbApiSource("team/cnn", sweep=SWEEP, progress=False).read()


@pytest.fixture(scope="module")
def edge_result(stub: GraphQLStub) -> SourceResult:
    return WandbApiSource("team/cnn", sweep=EDGE, progress=False).read()


def test_is_a_source() -> None:
    assert isinstance(WandbApiSource("e/p"), Source)


def test_sweep_matches_the_fixture(sweep_result: SourceResult, fixture_runs: list[RunRecord],
                                   stub: GraphQLStub) -> None:
    assert sweep_result.issues == []
    got = {r.run_id: r for r in sweep_result.runs}
    assert sorted(got) == sorted(r.run_id for r in fixture_runs)  # no loose runs
    for want in fixture_runs:
        rec = got[want.run_id]
        assert rec.source == "wandb"
        assert rec.sweep_id == SWEEP
        assert rec.name == want.name
        assert rec.state == want.state
        assert rec.total_steps == want.total_steps
        assert rec.metric_keys == KEYS
        config = dict(rec.config)
        wandb_meta = config.pop("_wandb")
        assert config == served_config(want)
        assert want.val_metric is not None
        assert wandb_meta == {"entity": "team", "project": "cnn",
                              "summary": {"val/acc": pytest.approx(want.val_metric.value[-1])}}
        for role in KEYS:
            a, b = rec.series(role), want.series(role)  # type: ignore[arg-type]
            assert a is not None and b is not None
            assert a.step == b.step
            assert a.value == pytest.approx(b.value, rel=1e-12, nan_ok=True)
    assert stub.unknown == []


def test_the_sweep_validates_like_the_fixture(sweep_result: SourceResult,
                                              fixture_runs: list[RunRecord]) -> None:
    ours, theirs = validate_sweep(sweep_result.runs), validate_sweep(fixture_runs)
    assert sorted(r.run_id for r in ours.runs) == sorted(r.run_id for r in theirs.runs)
    assert len(ours.issues) == len(theirs.issues)


def test_filter_narrows_the_sweep_and_the_project(stub: GraphQLStub,
                                                  fixture_runs: list[RunRecord]) -> None:
    cosine = WandbApiSource("team/cnn", sweep=SWEEP, filters={"config.schedule": "cosine"},
                            progress=False).read()
    want = sorted(r.run_id for r in fixture_runs if r.config["schedule"] == "cosine")
    assert want and sorted(r.run_id for r in cosine.runs) == want
    # Without --sweep the filter runs over the whole project: the loose runs come back too.
    loose_schedule = fixture_runs[0].config["schedule"]
    project = WandbApiSource("team/cnn", filters={"config.schedule": loose_schedule},
                             progress=False).read()
    ids = {r.run_id for r in project.runs}
    assert {"loose0", "loose1"} <= ids
    assert all(r.config["schedule"] == loose_schedule for r in project.runs)


def test_runs_are_paged(stub: GraphQLStub, fixture_runs: list[RunRecord],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wandb_api, "RUNS_PER_PAGE", 7)
    before = stub.operations.count("Runs")
    result = WandbApiSource("team/cnn", sweep=SWEEP, progress=False).read()
    assert len(result.runs) == len(fixture_runs)
    assert stub.operations.count("Runs") - before >= math.ceil(len(fixture_runs) / 7)


def test_unknown_project_is_a_clear_source_error(stub: GraphQLStub) -> None:
    with pytest.raises(SourceError, match=r"W&B project 'team/nope' not found") as info:
        WandbApiSource("team/nope", progress=False).read()
    assert "\n" not in str(info.value)


def test_unknown_sweep_is_a_clear_source_error(stub: GraphQLStub) -> None:
    with pytest.raises(SourceError, match=r"sweep 'zz9' not found in project 'team/cnn'"):
        WandbApiSource("team/cnn", sweep="zz9", progress=False).read()


def test_filter_matching_nothing_says_so(stub: GraphQLStub) -> None:
    with pytest.raises(SourceError, match=r"no runs in sweep 'cnn1sweep'.*matching filters"):
        WandbApiSource("team/cnn", sweep=SWEEP, filters={"state": "running"},
                       progress=False).read()


@pytest.mark.parametrize("project", ["cnn", "a/b/c", "/cnn", ""])
def test_project_must_be_entity_slash_project(project: str) -> None:
    with pytest.raises(InputError, match="ENTITY/PROJECT"):
        WandbApiSource(project)


def test_no_lr_key_names_the_keys_seen(stub: GraphQLStub) -> None:
    with pytest.raises(InputError, match="learning rate") as info:
        WandbApiSource("team/cnn", sweep=NO_LR, progress=False).read()
    msg = str(info.value)
    assert "Keys seen: train/loss, val/acc" in msg and "--lr-key" in msg


def test_lr_key_flag_names_what_is_missing(stub: GraphQLStub) -> None:
    with pytest.raises(InputError, match=r"'my_lr'.*Keys seen: lr, train/loss, val/acc"):
        WandbApiSource("team/cnn", sweep=SWEEP, metric_map=MetricMap(lr="my_lr"),
                       progress=False).read()


def test_failed_history_is_an_issue_and_the_rest_is_kept(edge_result: SourceResult) -> None:
    assert sorted(r.run_id for r in edge_result.runs) == ["mixed1", "nan1", "nolr1"]
    [issue] = edge_result.issues
    assert issue.run_id == "fail1" and issue.action == "excluded"
    assert "history could not be read" in issue.reason and "500" in issue.reason


def test_nan_values_come_through_at_their_steps(edge_result: SourceResult) -> None:
    rec = next(r for r in edge_result.runs if r.run_id == "nan1")
    assert rec.train_loss is not None and rec.val_metric is not None
    assert rec.train_loss.step == list(range(0, 100, 10))
    assert math.isnan(rec.train_loss.value[4])
    assert rec.val_metric.value[6] == math.inf
    # Validation, not the source, decides what a NaN means (here: a diverged run).
    checked = validate_sweep(edge_result.runs)
    assert any(i.run_id == "nan1" for i in checked.issues)


def test_mixed_logging_rates_keep_every_series_whole(edge_result: SourceResult) -> None:
    rec = next(r for r in edge_result.runs if r.run_id == "mixed1")
    assert rec.train_loss is not None and rec.val_metric is not None and rec.lr is not None
    assert rec.train_loss.step == list(range(MIXED_STEPS))  # read over three history pages
    assert rec.val_metric.step == list(range(0, MIXED_STEPS, VAL_EVERY))
    assert rec.val_metric.value == pytest.approx([s / MIXED_STEPS for s in rec.val_metric.step])
    assert rec.total_steps == MIXED_STEPS
    meta = rec.config["_wandb"]
    assert isinstance(meta, dict) and meta["summary"] == {"val/acc": 0.96}


def test_run_without_lr_is_kept_for_validation_to_explain(edge_result: SourceResult) -> None:
    rec = next(r for r in edge_result.runs if r.run_id == "nolr1")
    assert rec.lr is None and rec.config["_keys_seen"] == ["train/loss", "val/acc"]
    checked = validate_sweep(edge_result.runs)
    [issue] = [i for i in checked.issues if i.run_id == "nolr1"]
    assert issue.action == "excluded" and "no learning rate" in issue.reason


def test_history_metrics_selects_keys_per_row() -> None:
    rows = [{"_step": 0, "loss": 1.0, "media": {"_type": "image-file"}, "text": "hi"},
            {"_step": 1, "loss": "NaN", "nested": {"acc": 0.5}},
            {"_runtime": 3.0, "loss": 9.0},  # no step: cannot be placed
            {"_step": 1, "loss": 0.25}]
    metrics, repeats, step_key = wandb_api.history_metrics(rows)
    assert metrics == {"loss": {0: 1.0, 1: 0.25}, "nested.acc": {1: 0.5}}
    assert repeats == {"loss": 1} and step_key == "_step"


def test_history_metrics_finds_the_framework_step() -> None:
    """HF Trainer rows: ``_step`` counts log calls, ``train/global_step`` is the step."""
    rows = [{"_step": 2 * i, "train/global_step": 5 * (i + 1), "train/loss": 1.0,
             "train/epoch": (i + 1) / 4} for i in range(4)]
    rows += [{"_step": 2 * i + 1, "train/global_step": 5 * (i + 1), "eval/loss": 0.5,
              "train/epoch": (i + 1) / 4} for i in range(4)]
    metrics, repeats, step_key = wandb_api.history_metrics(sorted(rows, key=lambda r: r["_step"]))
    assert step_key == "train/global_step"
    assert sorted(metrics["eval/loss"]) == [5, 10, 15, 20]
    assert repeats == {}  # train/epoch twice per step, with one value each time


def test_cli_validate_end_to_end(stub: GraphQLStub, fixture_runs: list[RunRecord],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["validate", "--source", "wandb", "--project", "team/cnn", "--sweep", EDGE])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 1  # the edge cases leave too few usable runs: validate says a fit would fail
    assert "usable runs of 4" in out
    assert "fail1: history could not be read" in out
    assert "this sweep cannot be fitted" in captured.err and "(need >= 4)" in captured.err
    rc = main(["validate", "--source", "wandb", "--project", "team/cnn", "--sweep", SWEEP,
               "--filter", json.dumps({"config.seed": 0})])
    out = capsys.readouterr().out
    n = sum(1 for r in fixture_runs if r.config["seed"] == 0)
    assert rc == 0 and f"of {n}" in out.splitlines()[0]


def test_cli_errors_are_one_line(stub: GraphQLStub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--source", "wandb", "--project", "team/cnn", "--sweep",
                 "zz9"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tracker-sched: error: W&B sweep 'zz9' not found")
    assert "\n" not in err
    assert main(["validate", "--source", "wandb", "--project", "team/cnn", "--filter",
                 "{bad"]) == 1
    assert "--filter for wandb must be JSON" in capsys.readouterr().err
