"""The W&B API source: a sweep's runs read from a W&B server with ``wandb.Api``.

``--source wandb --project ENTITY/PROJECT [--sweep SWEEP_ID] [--filter JSON]``.
Runs come from ``Api.runs(project, filters=...)`` (the sweep's runs are the
filter ``{"sweep": SWEEP_ID}``, which W&B combines with a ``--filter`` by
``$and``), one page of 100 runs per request, with config, summary and state.
Each run's full history then comes from ``run.scan_history(keys=None)``: with
``keys=[...]`` W&B returns only the rows holding every key, which drops the
validation rows of a run that logs its loss every step and its validation
metric every N, so all rows are read and the keys are picked here.

A run whose history cannot be read (a server error, a deleted run) becomes a
:class:`~tracker_sched.schema.RunIssue`; the other runs are kept. An unknown
project or sweep is a :class:`~tracker_sched.errors.SourceError`.

wandb is imported inside the functions that need it. See ``docs/wandb.md``.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import JsonValue, ValidationError

from tracker_sched._optional import require
from tracker_sched.errors import InputError, SourceError
from tracker_sched.schema import MetricMap, RunIssue, RunRecord, missing_roles_message
from tracker_sched.sources.base import SourceResult
from tracker_sched.sources.files import record_from_raw
from tracker_sched.sources.wandb_history import (
    AUTO,
    Metrics,
    as_series,
    choose_step_key,
    missing_step_key,
    repeat_note,
    rows_to_metrics,
)

log = logging.getLogger(__name__)

RUNS_PER_PAGE = 100
HISTORY_PAGE_SIZE = 1000


def _wandb() -> Any:
    return require("wandb")


def split_project(project: str) -> tuple[str, str]:
    """``"ENTITY/PROJECT"`` -> ``(entity, project)``; anything else is an InputError."""
    parts = project.strip().strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise InputError(f"W&B project must be ENTITY/PROJECT (e.g. my-team/cnn-sweep), "
                         f"got {project!r}")
    return parts[0], parts[1]


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict values as dotted keys, the way the offline source names them."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "_type" not in value:  # "_type": a media object
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def history_metrics(rows: Any, step_key: str = AUTO) -> tuple[Metrics, dict[str, int], str]:
    """Rows of ``scan_history`` -> per-key ``{step: value}``, per key how many repeated steps
    changed the value, and the step key used (:mod:`~tracker_sched.sources.wandb_history`).

    Each key keeps the steps at which it was logged, so a loss logged every step
    and a validation metric logged every N steps both come out whole. A step key
    no row has raises ValueError naming the keys logged.
    """
    flat = [_flatten(row) for row in rows]
    key = choose_step_key(flat, step_key)
    missing = missing_step_key(flat, key)
    if missing:
        raise ValueError(missing)
    metrics, conflicts = rows_to_metrics(flat, key)
    return metrics, conflicts, key


def _json_safe(value: Any) -> JsonValue:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


class WandbApiSource:
    """``--source wandb --project ENTITY/PROJECT [--sweep SWEEP_ID] [--filter JSON]``.

    Args:
        project: ``"ENTITY/PROJECT"``.
        sweep: the sweep id (the last part of the sweep's URL); None reads every
            run of the project that matches ``filters``.
        filters: a W&B (MongoDB-style) run filter, e.g. ``{"config.model": "cnn"}``
            or ``{"state": "finished"}``.
        metric_map: which keys play which role (defaults know ``train/loss``,
            ``lr``, HF's ``train/learning_rate``...).
        step_key: the history key used as the step; ``"auto"`` (default): the
            framework step metric (``train/global_step``, ``trainer/global_step``)
            where most rows have it, else W&B's ``_step``.
        api: a ``wandb.Api`` to use; None makes one from the environment
            (``WANDB_API_KEY`` or ``wandb login``, ``WANDB_BASE_URL``).
        progress: show a progress bar while histories are read.

    >>> result = WandbApiSource("my-team/cnn", sweep="abc123").read()  # doctest: +SKIP
    >>> len(result.runs), result.issues  # doctest: +SKIP
    """

    name = "wandb"

    def __init__(
        self,
        project: str,
        *,
        sweep: str | None = None,
        filters: dict[str, Any] | None = None,
        metric_map: MetricMap | None = None,
        step_key: str = AUTO,
        api: object | None = None,
        progress: bool = True,
    ) -> None:
        self.entity, self.project_name = split_project(project)
        self.project = f"{self.entity}/{self.project_name}"
        self.sweep = sweep.strip() if sweep and sweep.strip() else None
        if filters is not None and not isinstance(filters, dict):
            raise InputError(f"W&B filters must be a JSON object, got {type(filters).__name__}")
        self.filters = filters or {}
        self.metric_map = metric_map or MetricMap()
        self.step_key = step_key
        self.api = api
        self.progress = progress

    # -- runs -------------------------------------------------------------------------------

    def _api(self) -> Any:
        if self.api is not None:
            return self.api
        wandb = _wandb()
        try:
            return wandb.Api(overrides={"entity": self.entity, "project": self.project_name})
        except Exception as exc:  # wandb raises UsageError, AuthenticationError, CommError...
            raise SourceError(
                f"cannot connect to W&B: {_one_line(exc)}. Log in with `wandb login` or set "
                "WANDB_API_KEY (and WANDB_BASE_URL for a private server)"
            ) from exc

    def _filters(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if self.sweep:
            parts.append({"sweep": self.sweep})
        if self.filters:
            parts.append(self.filters)
        return parts[0] if len(parts) == 1 else {"$and": parts} if parts else {}

    def _list_runs(self, api: Any) -> list[Any]:
        try:
            return list(api.runs(self.project, filters=self._filters(), per_page=RUNS_PER_PAGE,
                                 lazy=False))
        except Exception as exc:
            if "could not find project" in str(exc).lower():
                raise SourceError(
                    f"W&B project {self.project!r} not found (or not visible to this API "
                    "key); pass --project ENTITY/PROJECT as in the project's URL"
                ) from exc
            raise SourceError(f"W&B could not list the runs of {self.project!r} with filters "
                              f"{self._filters()}: {_one_line(exc)}") from exc

    def _no_runs(self, api: Any) -> SourceError:
        if self.sweep:
            try:
                api.sweep(f"{self.project}/{self.sweep}")
            except Exception:
                return SourceError(
                    f"W&B sweep {self.sweep!r} not found in project {self.project!r}; "
                    "pass --sweep with the id from the sweep's URL (.../sweeps/ID)"
                )
        what = f"sweep {self.sweep!r}" if self.sweep else "the project"
        extra = f" matching filters {self.filters}" if self.filters else ""
        return SourceError(f"no runs in {what} of W&B project {self.project!r}{extra}; "
                           "check --sweep and --filter")

    # -- records ----------------------------------------------------------------------------

    def read(self) -> SourceResult:
        """Read every run; a run whose history cannot be read or that does not fit
        the schema becomes an issue, not an exception."""
        api = self._api()
        runs = self._list_runs(api)
        if not runs:
            raise self._no_runs(api)
        from tqdm.auto import tqdm

        histories: list[tuple[Any, Metrics, dict[str, int], str]] = []
        issues: list[RunIssue] = []
        for run in tqdm(runs, desc="wandb histories", unit="run", disable=not self.progress,
                        leave=False):
            try:
                rows = run.scan_history(keys=None, page_size=HISTORY_PAGE_SIZE)
                metrics, repeats, step_key = history_metrics(rows, self.step_key)
            except ValueError as exc:  # no row on the step key: named with the keys seen
                issues.append(RunIssue(run_id=str(run.id), action="excluded", reason=str(exc)))
                continue
            except Exception as exc:  # wandb's CommError and friends: this run only
                log.warning("W&B run %s: history could not be read: %s", run.id, exc)
                issues.append(RunIssue(run_id=str(run.id), action="excluded",
                                       reason=f"history could not be read: {_one_line(exc)}"))
                continue
            histories.append((run, metrics, repeats, step_key))
        if histories and not any(self.metric_map.key_for("lr", m) for _, m, _, _ in histories):
            seen = sorted({k for _, m, _, _ in histories for k in m})
            raise InputError(f"no run of W&B {self.project} logged a learning rate: "
                             f"{missing_roles_message(['lr'], seen, self.metric_map)}")
        records: list[RunRecord] = []
        for run, metrics, repeats, step_key in histories:
            rid = str(run.id)
            try:
                rec = self._record(run, metrics, step_key)
            except (ValidationError, ValueError, TypeError) as exc:
                issues.append(RunIssue(run_id=rid, action="excluded",
                                       reason="does not match the run schema: "
                                       + _one_line(exc)))
                continue
            records.append(rec)
            note = repeat_note(repeats, rec.metric_keys.values(), step_key)
            if note:
                issues.append(RunIssue(run_id=rid, action="repaired", reason=note))
        return SourceResult(runs=records, issues=issues)

    def _record(self, run: Any, metrics: Metrics, step_key: str) -> RunRecord:
        config: dict[str, Any] = {str(k): _json_safe(v) for k, v in dict(run.config).items()
                                  if not str(k).startswith("_")}
        summary = {str(k): _json_safe(v) for k, v in dict(run.summary).items()
                   if not str(k).startswith("_")}
        config["_wandb"] = {"entity": self.entity, "project": self.project_name,
                            "summary": summary}
        obj = {
            "run_id": str(run.id),
            "source": "wandb",
            "sweep_id": getattr(run, "sweep_name", None) or self.sweep,
            "name": run.name,
            "config": config,
            "state": str(run.state).lower(),
            "metrics": as_series(metrics),
        }
        rec = record_from_raw(obj, self.metric_map)
        if step_key != "_step":
            rec = rec.model_copy(update={"metric_keys": {**rec.metric_keys, "step": step_key}})
        return rec


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
