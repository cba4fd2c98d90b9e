"""The live MLflow callback in real torch training loops, against real MLflow stores.

A tiny bundle is fitted once per module on the fixture sweep; each test trains a
small classifier on seeded random data for ``TOTAL`` steps with the callback,
then reads back what reached MLflow with ``MlflowClient``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmarks.mlflow_server import local_mlflow_server
from tests.tiny import FIXTURE, tiny_config
from tracker_sched.advising.advisor import Advisor
from tracker_sched.bundle.folder import Bundle
from tracker_sched.errors import InputError
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.integrations.mlflow import MlflowAdvisorCallback, context
from tracker_sched.integrations.mlflow.callback import (
    LR_APPLIED,
    LR_METRIC,
    TAG_BUNDLE_VERSION,
    TAG_REASON,
    TAG_STATUS,
    map_roles,
    role_keys,
)
from tracker_sched.integrations.mlflow.writer import (
    PLAN_MARKER,
    PLAN_ROWS,
    PREDICTED_FINAL,
    _shown,
    plan_json,
    plan_markdown,
)
from tracker_sched.schema import MetricMap, Recommendation, Schedule
from tracker_sched.sources.files import read_sweep

TOTAL = 120
LOG_EVERY = 2
VAL_EVERY = 10


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    result = fit_sweep(read_sweep(FIXTURE).runs, tiny_config(), workers=1, progress=False)
    return result.bundle.save(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return Bundle.load(bundle_dir)


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded store for the module (creating one costs seconds); one experiment a test."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture(autouse=True)
def _fast_failing_http(monkeypatch: pytest.MonkeyPatch) -> None:
    # A dead server fails at once instead of after MLflow's ~4 minutes of retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


@pytest.fixture(autouse=True)
def _no_callback_left_open() -> Iterator[None]:
    """A callback left open tags every later run: fail the test that leaked it, only it."""
    yield
    with context._lock:
        left = dict(context._open)
        context._open.clear()
    assert not left, f"callbacks left open: {left}"


def tracking(uri: str) -> contextlib.AbstractContextManager[None]:
    """MLflow's default store for a block; restores the unset state (set_tracking_uri pins)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    return _use_tracking_uri(uri)  # type: ignore[no-any-return]


def train(cb: MlflowAdvisorCallback, opt: torch.optim.Optimizer,
          kill_at: tuple[int, int] | None = None) -> list[tuple[int, float, float]]:
    """Train a linear classifier on seeded random data, logging through the callback.

    Returns (step, lr returned by the callback, optimizer lr right after) at each log point.
    ``kill_at=(step, pid)`` kills that process group at that step (a server going away).
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=gen)
    y = (x[:, :5].sum(1) > 0).long()
    model = torch.nn.Linear(20, 2)
    torch.manual_seed(0)
    seen = []
    for step in range(TOTAL):
        if kill_at is not None and step == kill_at[0]:
            os.killpg(kill_at[1], signal.SIGKILL)
        idx = torch.randint(0, 384, (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % LOG_EVERY:
            continue
        metrics = {"train_loss": loss.item()}
        if step % VAL_EVERY == 0:
            with torch.no_grad():
                metrics["val_acc"] = float((model(x[384:]).argmax(1) == y[384:]).float().mean())
        lr = cb.log_metrics(metrics, step)
        seen.append((step, lr, float(opt.param_groups[0]["lr"])))
    return seen


def optimizer() -> torch.optim.Optimizer:
    head = torch.nn.Linear(20, 2)
    body = torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": head.parameters(), "lr": 0.5},
                            {"params": [body], "lr": 0.05}])


def plans(client: MlflowClient, run_id: str) -> dict[str, Recommendation]:
    """The run's plan JSONs by file name; each has its markdown summary beside it."""
    names = [f.path for f in client.list_artifacts(run_id, "tracker_sched")]
    assert sorted(n for n in names if n.endswith(".md")) == sorted(
        n.removesuffix(".json") + ".md" for n in names if n.endswith(".json"))
    out = {}
    for name in (n for n in names if n.endswith(".json")):
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name,
                                                    tracking_uri=client.tracking_uri)
        out[Path(name).name] = Recommendation.model_validate_json(Path(local).read_text())
    return out


def test_callback_writes_lr_plans_and_tags_and_drives_the_optimizer(
        bundle_dir: Path, bundle: Bundle, sqlite_uri: str) -> None:
    client = MlflowClient(sqlite_uri)
    exp = client.create_experiment("live")
    run_id = client.create_run(exp).info.run_id
    opt = optimizer()
    with MlflowAdvisorCallback(bundle_dir, TOTAL, run_id=run_id, tracking_uri=sqlite_uri,
                               optimizer=opt) as cb:
        seen = train(cb, opt)
        final = cb.plan
    assert cb.close(timeout_s=5)
    assert cb.tracker_errors == 0 and cb.dropped == 0

    # The optimizer follows the advisor, both groups keeping their 10:1 ratio.
    for _, lr, opt_lr in seen:
        assert opt_lr == pytest.approx(lr)
    assert opt.param_groups[1]["lr"] == pytest.approx(seen[-1][1] / 10)
    assert final.status == "planned"
    lrs = [lr for _, lr, _ in seen]
    assert len(set(lrs)) > 10 and max(lrs) < 0.5  # a schedule, not the script's constant 0.5

    # tracker_sched.lr_recommended at every log point, equal to what the callback applied;
    # tracker_sched.lr_applied: the lr the step trained with (the one set a log point before).
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, LR_METRIC))
    assert [s for s, _ in history] == [s for s, _, _ in seen]
    assert [v for _, v in history] == pytest.approx(lrs, rel=1e-4)  # 5 significant digits
    applied = sorted((m.step, m.value) for m in client.get_metric_history(run_id, LR_APPLIED))
    assert [s for s, _ in applied] == [s for s, _, _ in seen]
    assert [v for _, v in applied[1:]] == pytest.approx(lrs[:-1], rel=1e-4)
    assert applied[0][1] == pytest.approx(0.5)  # the script's own lr before any advice
    # A marker at each plan (0 warm-up at step 0, 1 planned), the prediction at the plan.
    markers = sorted((m.step, m.value) for m in client.get_metric_history(run_id, PLAN_MARKER))
    assert markers == [(0, 0.0), (final.step, 1.0)]
    (predicted,) = client.get_metric_history(run_id, PREDICTED_FINAL)
    assert (predicted.step, predicted.value) == (final.step, pytest.approx(final.predicted_final))
    assert len(client.get_metric_history(run_id, "train_loss")) == len(seen)
    assert len(client.get_metric_history(run_id, "val_acc")) == TOTAL // VAL_EVERY

    # One plan artifact per plan: the warm-up plan and the replan.
    written = plans(client, run_id)
    assert set(written) == {"plan-step0.json", f"plan-step{final.step}.json"}
    assert written["plan-step0.json"].status == "warmup"
    got = written[f"plan-step{final.step}.json"]
    assert (got.status, got.step, got.schedule.step) == (final.status, final.step,
                                                         final.schedule.step)
    assert got.schedule.lr == pytest.approx(final.schedule.lr, rel=1e-5)  # rounded to 6 digits

    tags = client.get_run(run_id).data.tags
    assert tags[TAG_BUNDLE_VERSION] == bundle.manifest.created_at
    assert tags[TAG_STATUS] == "planned"
    assert tags[TAG_REASON] == final.reason
    assert tags["tracker_sched.bundle"] == str(bundle_dir)
    # which planner advised the run, and why (auto: this bundle has no decision, its kind)
    assert tags["tracker_sched.mode"] == final.mode == "generative"
    assert "generative" in tags["tracker_sched.mode_reason"]


def test_callback_on_the_active_run_of_a_server(bundle: Bundle, mlflow_server: str) -> None:
    """The default run is the active one; scripts that log themselves call on_step."""
    client = MlflowClient(mlflow_server)
    # An explicit experiment, not set_experiment: that one is process-wide (and sets
    # MLFLOW_EXPERIMENT_ID) and would leak into later tests and their subprocesses.
    exp = client.create_experiment("live-active")
    with tracking(mlflow_server):
        with mlflow.start_run(experiment_id=exp) as run, \
                MlflowAdvisorCallback(bundle, TOTAL) as cb:
            assert context.enabled()
            for step in range(0, TOTAL, 4):
                lr = cb.on_step(step, train_loss=2.0 - step / TOTAL, lr=0.01,
                                val_metric=0.5 + step / 400 if step % 20 == 0 else None)
                assert lr == pytest.approx(cb.advisor.lr(step))
            assert cb.close(timeout_s=10)
        assert not context.enabled()
    history = client.get_metric_history(run.info.run_id, LR_METRIC)
    assert len(history) == TOTAL // 4
    assert client.get_run(run.info.run_id).data.tags[TAG_STATUS] == cb.plan.status
    assert cb.tracker_errors == 0


def test_metric_names_map_to_roles(bundle: Bundle) -> None:
    """The bundle's own keys first, then the ecosystem's names; our write-back never counts."""
    preferred = role_keys(bundle)
    assert preferred == {"train_loss": "train_loss", "lr": "lr", "val_metric": "val_acc"}
    hf = ["loss", "learning_rate", "eval_accuracy", LR_METRIC, "epoch"]
    assert map_roles(hf, preferred, MetricMap()) == {
        "train_loss": "loss", "lr": "learning_rate", "val_metric": "eval_accuracy"}
    assert map_roles([LR_METRIC, "val_acc"], preferred, MetricMap()) == {"val_metric": "val_acc"}
    assert map_roles(["my_loss"], preferred, MetricMap(train_loss="my_loss")) == {
        "train_loss": "my_loss"}


def test_no_active_run_or_budget_is_a_clear_error(bundle: Bundle, sqlite_uri: str) -> None:
    with tracking(sqlite_uri), pytest.raises(InputError, match="no active MLflow run"):
        MlflowAdvisorCallback(bundle, TOTAL)
    with pytest.raises(InputError, match="total_steps is required"):
        MlflowAdvisorCallback(bundle, run_id="x")
    with pytest.raises(InputError, match="expected a bundle"):
        MlflowAdvisorCallback(42, TOTAL, run_id="x")  # type: ignore[arg-type]


class BrokenAdvisor:
    """An advisor that fails after a while (a foreign advisor may raise; ours never does)."""

    def __init__(self, inner: Advisor) -> None:
        self.inner = inner
        self.calls = 0

    @property
    def plan(self) -> Recommendation:
        return self.inner.plan

    def observe(self, step: int, *, train_loss: float | None = None,
                val_metric: float | None = None, lr: float | None = None) -> Recommendation:
        self.calls += 1
        if self.calls > 5:
            raise RuntimeError("advisor exploded")
        return self.inner.observe(step, train_loss=train_loss, val_metric=val_metric, lr=lr)

    def lr(self, step: int) -> float:
        return self.inner.lr(step)


def test_a_failing_advisor_keeps_the_last_lr(bundle: Bundle, sqlite_uri: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    client = MlflowClient(sqlite_uri)
    run_id = client.create_run(client.create_experiment("broken")).info.run_id
    opt = optimizer()
    with (MlflowAdvisorCallback(BrokenAdvisor(Advisor(bundle, TOTAL)), run_id=run_id,
                                tracking_uri=sqlite_uri, optimizer=opt) as cb,
          caplog.at_level(logging.WARNING)):
        lrs = [cb.on_step(s, train_loss=1.0) for s in range(10)]
        assert cb.log_metrics({"train_loss": "n/a", "val_acc": 0.5}, 10) == lrs[4]
    assert lrs[5:] == [lrs[4]] * 5
    assert opt.param_groups[0]["lr"] == pytest.approx(lrs[4])
    assert sum("advisor exploded" in r.message for r in caplog.records) == 1  # logged once
    assert any("'n/a' is not a number" in r.message for r in caplog.records)


def test_over_a_remote_advisor_whose_model_server_is_down(sqlite_uri: str) -> None:
    """Any advisor works; a remote one that cannot reach its server says so on the run."""
    from benchmarks.mlflow_server import free_port
    from tracker_sched.advising.remote import RemoteAdvisor

    remote = RemoteAdvisor(f"http://127.0.0.1:{free_port()}", TOTAL, initial_lr=0.02,
                           timeout=0.5, retries=0)
    client = MlflowClient(sqlite_uri)
    run_id = client.create_run(client.create_experiment("remote")).info.run_id
    with MlflowAdvisorCallback(remote, run_id=run_id, tracking_uri=sqlite_uri) as cb:
        lrs = [cb.log_metrics({"loss": 1.0 - s / 200, "learning_rate": 0.03}, s)
               for s in range(0, 40, 2)]
    assert lrs == [pytest.approx(0.03)] * len(lrs)  # the run's logged lr, not initial_lr
    tags = client.get_run(run_id).data.tags
    assert tags[TAG_STATUS] == "fallback"
    assert tags[TAG_REASON].startswith("server:")
    assert TAG_BUNDLE_VERSION not in tags  # no bundle in this process
    assert len(client.get_metric_history(run_id, LR_METRIC)) == len(lrs)


def _server_pid(uri: str) -> int:
    """The pid of the ``mlflow server`` this test started on ``uri``'s port (its group leader)."""
    port = uri.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in argv and b"--port" in argv and argv[argv.index(b"--port") + 1] == \
                port.encode() and os.getpgid(int(proc.name)) == int(proc.name):
            return int(proc.name)
    raise AssertionError(f"no mlflow server process for {uri}")


@pytest.mark.slow
def test_server_going_away_mid_run_never_stops_training(bundle: Bundle, tmp_path: Path) -> None:
    """The tracking server is killed (SIGKILL) at step 20 of a live run, before the replan."""
    opt = optimizer()
    spool = tmp_path / "undelivered"
    with local_mlflow_server(tmp_path / "server") as uri:
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        cb = MlflowAdvisorCallback(bundle, TOTAL, run_id=run_id, tracking_uri=uri,
                                   optimizer=opt, fallback_dir=spool)
        try:
            start = time.perf_counter()
            seen = train(cb, opt, kill_at=(20, _server_pid(uri)))
            elapsed = time.perf_counter() - start
            assert cb.close(timeout_s=20)
        finally:
            cb.close(timeout_s=0)  # unregisters it even when the test failed
    assert len(seen) == TOTAL // LOG_EVERY  # every step trained
    assert all(opt_lr == pytest.approx(lr) for _, lr, opt_lr in seen)
    assert cb.plan.status == "planned"  # the advisor is local: it kept planning
    assert elapsed < 20
    assert cb.tracker_errors > 0
    assert cb.last_error is not None and "Connection" in cb.last_error
    # The replan came after the outage: its plan is saved locally instead.
    saved = Recommendation.model_validate_json(
        (spool / f"plan-step{cb.plan.step}.json").read_text())
    assert (saved.step, saved.status, saved.schedule.step) == (
        cb.plan.step, cb.plan.status, cb.plan.schedule.step)
    assert (spool / f"plan-step{cb.plan.step}.md").read_text().startswith(
        f"# tracker-sched plan at step {cb.plan.step}")


def test_a_hung_tracker_never_blocks_training(bundle: Bundle,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket that accepts connections and never answers stands for a hung server."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "6")  # each request hangs 6 s
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        cb = MlflowAdvisorCallback(bundle, TOTAL, run_id="0" * 32, tracking_uri=uri,
                                   queue_size=2, replan_every=1, max_replans=None)
        try:
            start = time.perf_counter()
            for step in range(0, TOTAL, 2):
                cb.on_step(step, train_loss=1.0 - step / 300, lr=0.01,
                           val_metric=0.5 + step / 500 if step % 10 == 0 else None)
            elapsed = time.perf_counter() - start
            assert cb.advisor.replans > 5  # many plans, each one a write
            assert cb.dropped > 0  # more than the queue holds: dropped, not waited for
            assert elapsed < 3, "training waited on the tracker"
            assert cb.close(timeout_s=0.2) is False  # close waits only as long as told
        finally:
            hung.close()  # now every request fails at once
            closed = cb.close(timeout_s=20)
    assert closed is True
    assert cb.tracker_errors > 0


def test_plan_json_reads_summary_first() -> None:
    """The plan artifact: the summary on top, each array on one line, floats rounded."""
    rec = Recommendation(status="planned", reason="best of 64", step=120, lr_now=0.0123456789,
                         schedule=Schedule(step=list(range(120, 840, 4)),
                                           lr=[0.05 * 0.99 ** i for i in range(180)]),
                         predicted_final=0.8123456789, predicted_spread=0.01)
    text = plan_json(rec)
    lines = text.splitlines()
    assert lines[1].strip() == '"status": "planned",'
    assert [ln.split(":")[0].strip() for ln in lines[2:5]] == ['"step"', '"lr_now"',
                                                               '"predicted_final"']
    assert len(lines) < 20  # 180 points, one line per array
    assert '"lr_now": 0.0123457' in text
    back = Recommendation.model_validate_json(text)
    assert back.schedule.step == rec.schedule.step
    assert back.schedule.lr == pytest.approx(rec.schedule.lr, rel=1e-5)
    assert back.predicted_final == pytest.approx(0.812346)
    # For a person: the summary and a dozen points of the schedule, as markdown tables.
    md = plan_markdown(rec.model_copy(update={"reason": "best | of 64"}))
    assert md.splitlines()[0] == "# tracker-sched plan at step 120: planned"
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert rows[1:5] == ["| status | planned |", "| step | 120 |", "| lr now | 0.0123457 |",
                         "| predicted final | 0.812346 ± 0.01 |"]
    assert "| reason | best \\| of 64 |" in rows  # a | in the reason does not split the row
    points = rows[rows.index("| step | lr |") + 1:]
    assert len(points) == PLAN_ROWS
    assert points[0] == "| 120 | 0.05 |" and points[-1] == f"| 836 | {0.05 * 0.99 ** 179:.4g} |"
    assert "`plan-step120.json`" in md
    # The lr metrics are logged short enough for the runs table to show them whole.
    assert _shown(LR_METRIC, 9.88846518234e-07) == 9.8885e-07
    assert _shown("train_loss", 0.123456789) == 0.123456789
