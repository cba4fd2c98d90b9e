"""The MLflow source: a sweep's runs, with params, state and full metric histories.

A sweep is either the child runs of a parent run (``tags.mlflow.parentRunId``)
or an experiment's runs narrowed by an MLflow search filter. Runs come from
``MlflowClient.search_runs``, which gives params, state and the keys of every
metric a run logged (latest values only). Full histories then come from:

- an ``http(s)`` tracking server: the public bulk endpoint
  ``GET /api/2.0/mlflow/metrics/get-history-bulk-interval`` (one metric key, up
  to 100 runs and 2,500 points per run per request, a few requests in flight).
  It returns every point of a run that logged at most 2,500; it samples longer
  histories evenly, so those (run, key) pairs are read again, exactly, through
  ``GET /ajax-api/2.0/mlflow/metrics/get-history-bulk`` (up to 25,000 points a
  request; chunks adapt so none is truncated), unless ``sample_points`` accepts
  the sampling. The interval endpoint selects columns where the other builds
  an ORM object per point, and takes 100 runs a request whatever their length;
  most of the gain over per-metric calls comes from the requests in flight
  (measured in ``benchmarks/ingest_mlflow.py``);
- anything else (the embedded ``sqlite:///`` default, a server without the
  endpoint, an auth scheme that needs MLflow's own transport):
  ``MlflowClient.get_metric_history``, one call per (run, key), in a thread pool.

mlflow is imported inside the functions that need it, never at module import.
See ``docs/mlflow.md``.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import JsonValue, ValidationError

from tracker_sched._optional import require
from tracker_sched.errors import InputError, SourceError
from tracker_sched.schema import MetricMap, RunIssue, RunRecord, missing_roles_message
from tracker_sched.sources.base import SourceResult
from tracker_sched.sources.files import record_from_raw
from tracker_sched.sources.mlflow_history import (
    INTERVAL_MAX_POINTS,
    HistoryReader,
    Point,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
RUN_ID_TAG = "tracker_sched.run_id"
_STATES = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed", "RUNNING": "running"}
_INT = re.compile(r"[+-]?\d+")

def _mlflow() -> Any:
    return require("mlflow")


def _client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    mlflow = _mlflow()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or str(mlflow.get_tracking_uri())  # MLflow's own default resolution
    return MlflowClient(tracking_uri=uri), uri


def parse_param(value: str) -> JsonValue:
    """An MLflow param (always a string) as config: ints, finite floats and booleans parsed."""
    text = value.strip()
    if _INT.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return {"True": True, "true": True, "False": False, "false": False}.get(text, value)
    return number if math.isfinite(number) else value


def clean_history(points: list[Point]) -> tuple[list[int], list[float], int]:
    """Sort by step; where a step was logged more than once keep the last value logged.

    Returns steps, values and how many repeated points had another value than the
    one kept (a repeat of the same value, such as HF Trainer's ``epoch`` in its
    training and its eval log at one step, changes nothing and is not counted).
    """
    latest: dict[int, Point] = {}
    for p in sorted(points, key=lambda p: (p[0], p[1])):  # stable: server order breaks ties
        latest[p[0]] = p
    steps = sorted(latest)
    changed = sum(1 for p in points if not _same(p[2], latest[p[0]][2]))
    return steps, [latest[s][2] for s in steps], changed


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def steps_from_timestamps(history: dict[str, list[Point]], loss_key: str | None
                          ) -> dict[str, list[Point]] | None:
    """Where a run logged without steps (MLflow then stores step 0 for every point),
    place each point by time: step ``n`` is the ``n``-th train-loss point, and a point
    of another metric gets the number of train-loss points logged at or before it.
    None when the run has steps (or nothing to order)."""
    if any(p[0] != 0 for pts in history.values() for p in pts):
        return None
    if all(len(pts) <= 1 for pts in history.values()):
        return None
    ref_key = loss_key if loss_key in history else max(history, key=lambda k: len(history[k]))
    ref = sorted(p[1] for p in history[ref_key])
    out: dict[str, list[Point]] = {}
    for key, pts in history.items():
        ordered = sorted(pts, key=lambda p: p[1])
        if key == ref_key:
            out[key] = [(i + 1, p[1], p[2]) for i, p in enumerate(ordered)]
        else:
            out[key] = [(bisect.bisect_right(ref, p[1]), p[1], p[2]) for p in ordered]
    return out


class MlflowSource(HistoryReader):
    """``--source mlflow --project EXPERIMENT [--sweep PARENT_RUN_ID] [--filter F]``.

    Args:
        experiment: experiment name (or id).
        parent_run_id: read the children of this run; else every active run of
            the experiment that matches ``filter``.
        filter: an MLflow search filter, e.g. ``"params.schedule = 'onecycle'"``;
            combined with the parent filter by ``and``.
        tracking_uri: None uses MLflow's own resolution (``MLFLOW_TRACKING_URI``,
            else the embedded ``sqlite:///<cwd>/mlflow.db``).
        metric_map: which keys play which role (defaults know HF Trainer and Lightning).
        max_workers: threads for the per-(run, key) fallback.
        use_bulk: False forces ``MlflowClient.get_metric_history`` even against a server.
        sample_points: None (default) reads every point. An int (at most 2,500) accepts
            the server's even sampling of longer histories to that many points per run
            and key (first and last kept): one request per 100 runs and key, however
            long the runs. The fit resamples onto ``grid_points`` (default 100) anyway.
        bulk_workers: bulk requests in flight at once.
        bulk_endpoint: "interval" (default, see the module docstring) or "full" (only the
            25,000-point endpoint; for servers where the interval endpoint misbehaves).
        timeout_s: per-request timeout of the bulk endpoints.
        progress: show a progress bar; None shows one on a terminal.

    >>> result = MlflowSource("cnn-sweep", parent_run_id="0a1b2c...").read()  # doctest: +SKIP
    >>> len(result.runs), result.issues  # doctest: +SKIP
    """

    name = "mlflow"

    def __init__(
        self,
        experiment: str,
        *,
        parent_run_id: str | None = None,
        filter: str | None = None,
        tracking_uri: str | None = None,
        metric_map: MetricMap | None = None,
        max_workers: int = 8,
        use_bulk: bool = True,
        sample_points: int | None = None,
        bulk_workers: int = 3,
        bulk_endpoint: Literal["interval", "full"] = "interval",
        timeout_s: float = 60.0,
        progress: bool | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.filter = filter
        self.tracking_uri = tracking_uri
        self.metric_map = metric_map or MetricMap()
        self.max_workers = max_workers
        if sample_points is not None and not 1 <= sample_points <= INTERVAL_MAX_POINTS:
            raise ValueError(f"sample_points must be in [1, {INTERVAL_MAX_POINTS}], "
                             f"got {sample_points}")
        self.use_bulk = use_bulk
        self.sample_points = sample_points
        self.bulk_workers = max(1, bulk_workers)
        self.bulk_endpoint = bulk_endpoint
        self.timeout_s = timeout_s
        self.progress = progress
        self.history_path = ""  # "bulk" or "client" after read(): which path fetched histories

    # -- runs -------------------------------------------------------------------------------

    def _experiment_id(self, client: MlflowClient, uri: str) -> str:
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None and self.experiment.isdigit():
            from mlflow.exceptions import MlflowException

            try:
                exp = client.get_experiment(self.experiment)
            except MlflowException:
                exp = None
        if exp is None:
            names = [e.name for e in client.search_experiments(max_results=10)]
            listed = ", ".join(repr(n) for n in names) if names else "none"
            raise SourceError(
                f"MLflow experiment {self.experiment!r} not found at tracking URI {uri}. "
                f"Experiments there: {listed}. Pass --project NAME (and --tracking-uri URI "
                "if the sweep is on another server)"
            )
        return str(exp.experiment_id)

    def _filter_string(self) -> str:
        parts = []
        if self.parent_run_id:
            parts.append(f"tags.{PARENT_TAG} = '{self.parent_run_id}'")
        if self.filter and self.filter.strip():
            parts.append(self.filter.strip())  # MLflow's grammar has only AND: no parentheses
        return " and ".join(parts)

    def _search(self, client: MlflowClient, experiment_id: str) -> list[Run]:
        from mlflow.entities import ViewType
        from mlflow.exceptions import MlflowException

        runs: list[Run] = []
        token: str | None = None
        try:
            while True:
                page = client.search_runs(
                    [experiment_id], self._filter_string(), run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=1000, order_by=["attributes.start_time ASC"], page_token=token,
                )
                runs.extend(page)
                token = page.token
                if not token:
                    return runs
        except MlflowException as exc:
            raise SourceError(
                f"MLflow search failed for filter {self._filter_string()!r}: {exc.message}"
            ) from exc

    def _check_parent(self, client: MlflowClient, experiment_id: str, uri: str) -> None:
        from mlflow.exceptions import MlflowException

        assert self.parent_run_id is not None
        try:
            parent = client.get_run(self.parent_run_id)
        except MlflowException as exc:
            raise SourceError(
                f"parent run {self.parent_run_id!r} not found at tracking URI {uri} "
                f"({exc.error_code}); pass the sweep's parent run id with --sweep"
            ) from exc
        if parent.info.experiment_id != experiment_id:
            raise SourceError(
                f"parent run {self.parent_run_id!r} belongs to experiment id "
                f"{parent.info.experiment_id}, not to {self.experiment!r} ({experiment_id})"
            )

    # -- records ----------------------------------------------------------------------------

    def read(self) -> SourceResult:
        """Read every run of the sweep; a run that does not fit the schema becomes an issue.

        A tracking server that fails mid-read (killed, unreachable) is a SourceError with
        MLflow's reason, never MLflow's own exception (tests/faults/test_tracker_killed.py).
        """
        from mlflow.exceptions import MlflowException

        try:
            return self._read()
        except MlflowException as exc:
            reason = str(exc.message).splitlines()[0][:300]
            raise SourceError(f"MLflow failed while the sweep was read ({reason}); nothing "
                              "was fitted: run it again once the server answers") from exc

    def _read(self) -> SourceResult:
        client, uri = _client(self.tracking_uri)
        experiment_id = self._experiment_id(client, uri)
        if self.parent_run_id:
            self._check_parent(client, experiment_id, uri)
        found = self._search(client, experiment_id)
        # A run that is the parent of another run is a sweep's container, not a training run.
        parents = {r.data.tags.get(PARENT_TAG) for r in found} | {self.parent_run_id}
        runs = [r for r in found if r.info.run_id not in parents]
        if not runs:
            what = f"filter {self._filter_string()!r}" if self._filter_string() else "no filter"
            raise SourceError(
                f"no runs in MLflow experiment {self.experiment!r} at {uri} with {what}; "
                "check --sweep (the parent run id) and --filter"
            )
        keys = {r.info.run_id: sorted(r.data.metrics) for r in runs}
        seen = sorted({k for ks in keys.values() for k in ks})
        if not any(self.metric_map.key_for("lr", ks) for ks in keys.values()):
            raise InputError(f"no run of the sweep logged a learning rate: "
                             f"{missing_roles_message(['lr'], seen, self.metric_map)}")
        histories = self._histories(client, uri, keys)
        sweep_id = self.parent_run_id or experiment_id
        records: list[RunRecord] = []
        issues: list[RunIssue] = []
        for run in runs:
            rid = run.info.run_id
            try:
                rec, repaired = self._record(run, histories[rid], sweep_id)
            except (ValidationError, ValueError, TypeError) as exc:
                issues.append(RunIssue(run_id=rid, action="excluded",
                                       reason="does not match the run schema: "
                                       + str(exc).replace("\n", " ")))
                continue
            records.append(rec)
            if repaired:
                issues.append(RunIssue(run_id=rid, action="repaired", reason=repaired))
        return SourceResult(runs=records, issues=issues)

    def _record(self, run: Run, history: dict[str, list[Point]],
                sweep_id: str) -> tuple[RunRecord, str]:
        config = {k: parse_param(v) for k, v in sorted(run.data.params.items())}
        lengths = {k: len(v) for k, v in history.items()}
        loss_key = self.metric_map.key_for("train_loss", history, lengths)
        by_time = steps_from_timestamps(history, loss_key)
        metrics: dict[str, dict[str, list[Any]]] = {}
        changed: dict[str, int] = {}
        for key, points in sorted((by_time or history).items()):
            steps, values, n_changed = clean_history(points)
            metrics[key] = {"step": steps, "value": values}
            changed[key] = n_changed
        raw: dict[str, Any] = {
            "run_id": run.info.run_id,
            "source": "mlflow",
            "sweep_id": sweep_id,
            "name": run.info.run_name,
            "config": config,
            "state": _STATES.get(run.info.status, str(run.info.status).lower()),
            "metrics": metrics,
        }
        if by_time is not None:  # a config budget counts steps, not these logging counts
            raw["total_steps"] = None
            raw["budget_source"] = "none: steps made from timestamps count no config unit"
            raw["metric_keys"] = {"step": "timestamp"}
        rec = record_from_raw(raw, self.metric_map)
        notes = [f"{k!r}: {changed[k]} point(s) at an already-logged step"
                 for k in sorted(set(rec.metric_keys.values())) if changed.get(k)]
        repaired = ("steps logged more than once with different values, the last value "
                    "logged kept: " + "; ".join(notes)) if notes else ""
        if by_time is not None:
            repaired = "; ".join(x for x in (
                f"no steps logged (MLflow stored step 0 for every point): a step counts the "
                f"{loss_key or 'longest series'}'s points in the order of their timestamps, and "
                "the budget is the last of them", repaired) if x)
        return rec, repaired
