"""The W&B offline source: runs read straight from wandb's offline transaction logs.

``wandb`` in offline mode (``WANDB_MODE=offline``) writes each run to
``offline-run-<time>-<id>/run-<id>.wandb``; wandb ships no Python reader for
these files (``wandb sync`` is done by the Go ``wandb-core``), so this is ours.

The file format and its decoder are :mod:`tracker_sched.sources.wandb_log`.

Damage (a cut-off file, a chunk whose checksum fails) costs only the records
it touches: good records before and after it are kept, and the run gets a
``repaired`` :class:`~tracker_sched.schema.RunIssue` saying which bytes were
unreadable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tracker_sched.errors import SourceError
from tracker_sched.schema import MetricMap, RunIssue, RunRecord
from tracker_sched.sources.base import SourceResult
from tracker_sched.sources.files import record_from_raw
from tracker_sched.sources.wandb_history import (
    AUTO,
    as_series,
    choose_step_key,
    missing_step_key,
    repeat_note,
    rows_to_metrics,
)
from tracker_sched.sources.wandb_log import NotALog, Scan, iter_log_records, record_class


class _NoStep(Exception):
    """No history row has the step key."""


@dataclass
class _RawRun:
    """Everything collected from one log before it becomes a RunRecord."""

    run_id: str
    entity: str = ""
    project: str = ""
    name: str | None = None
    sweep_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    declared_steps: list[str] = field(default_factory=list)  # define_metric step metrics


def _item_key(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _apply_updates(target: dict[str, Any], updates: Any, removes: Any = ()) -> None:
    for item in updates:
        path = _item_key(item)
        node = target
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = _loads(item.value_json)
    for item in removes:
        path = _item_key(item)
        node = target
        for part in path[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)


def _add_row(raw: _RawRun, history: Any) -> None:
    row: dict[str, Any] = {}
    for item in history.item:
        row[".".join(_item_key(item))] = _loads(item.value_json)
    if "_step" not in row and history.HasField("step"):
        row["_step"] = int(history.step.num)
    raw.rows.append(row)


def _declare(raw: _RawRun, metric: Any) -> None:
    """A ``define_metric`` record: remember its step metric (``"*"`` ones first)."""
    step = metric.step_metric
    if not step or step in raw.declared_steps:
        return
    if metric.glob_name == "*":
        raw.declared_steps.insert(0, step)
    else:
        raw.declared_steps.append(step)


def _read_run(path: Path) -> tuple[_RawRun | None, Scan, str | None]:
    """Parse one ``.wandb`` file. Returns (run or None, scan, reason it was excluded)."""
    record_cls = record_class()
    from google.protobuf.message import DecodeError

    file_id = path.stem[4:] if path.stem.startswith("run-") else path.stem
    raw = _RawRun(run_id=file_id)
    scan = Scan()
    try:
        with path.open("rb") as fh:
            for start, end, payload in iter_log_records(fh, scan):
                rec = record_cls()
                try:
                    rec.ParseFromString(payload)
                except DecodeError:
                    scan.records -= 1
                    scan.bad(start, end, "record does not decode")
                    continue
                _apply_record(raw, rec)
    except NotALog as exc:
        return None, scan, f"not a W&B transaction log: {exc}"
    except OSError as exc:
        return None, scan, f"cannot read {path}: {exc}"
    if scan.records == 0 and scan.damage:
        return None, scan, "no readable records: " + _damage_text(scan)
    if scan.records == 0:
        return None, scan, ("no records: the file holds only the W&B header (a run killed "
                            "before its first flush, which wandb does every 15 s, leaves this)")
    return raw, scan, None


def _apply_record(raw: _RawRun, rec: Any) -> None:
    kind = rec.WhichOneof("record_type")
    if kind == "history":
        _add_row(raw, rec.history)
    elif kind == "metric":
        _declare(raw, rec.metric)
    elif kind == "run":
        run = rec.run
        raw.run_id = run.run_id or raw.run_id
        raw.entity = run.entity or raw.entity
        raw.project = run.project or raw.project
        raw.name = run.display_name or raw.name
        raw.sweep_id = run.sweep_id or raw.sweep_id
        _apply_updates(raw.config, run.config.update, run.config.remove)
        _apply_updates(raw.summary, run.summary.update, run.summary.remove)
    elif kind == "config":
        _apply_updates(raw.config, rec.config.update, rec.config.remove)
    elif kind == "summary":
        _apply_updates(raw.summary, rec.summary.update, rec.summary.remove)
    elif kind == "exit":
        raw.exit_code = int(rec.exit.exit_code)


def _to_record(raw: _RawRun, metric_map: MetricMap, step_key: str) -> tuple[RunRecord, str]:
    """The run as a RunRecord, and a repair note for steps logged twice ("" if none)."""
    config = {k: v for k, v in raw.config.items() if k != "_wandb"}
    summary = {k: v for k, v in raw.summary.items() if not k.startswith("_")}
    config["_wandb"] = {"entity": raw.entity, "project": raw.project,
                        "exit_code": raw.exit_code, "summary": summary}
    # No exit record: the run was killed, or is still running.
    state = ("crashed" if raw.exit_code is None
             else "finished" if raw.exit_code == 0 else "failed")
    key = choose_step_key(raw.rows, step_key, raw.declared_steps)
    missing = missing_step_key(raw.rows, key)
    if missing:
        raise _NoStep(missing)
    metrics, conflicts = rows_to_metrics(raw.rows, key)
    obj = {
        "run_id": raw.run_id,
        "source": "wandb",
        "sweep_id": raw.sweep_id,
        "name": raw.name,
        "config": config,
        "state": state,
        "metrics": as_series(metrics),
    }
    rec = record_from_raw(obj, metric_map)
    if key != "_step":
        rec = rec.model_copy(update={"metric_keys": {**rec.metric_keys, "step": key}})
    return rec, repeat_note(conflicts, rec.metric_keys.values(), key)


def _damage_text(scan: Scan) -> str:
    return "; ".join(f"bytes {d.start}-{d.end} unreadable ({d.why})" for d in scan.damage)


def find_logs(path: str | os.PathLike[str]) -> list[Path]:
    """The ``run-*.wandb`` logs under ``path``: a wandb dir, an ``offline-run-*`` dir or a file."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise SourceError(f"W&B offline path {root} does not exist")
    found = sorted(root.glob("run-*.wandb"))
    for base in (root, root / "wandb"):
        found += sorted(base.glob("offline-run-*/run-*.wandb"))
    if not found:
        raise SourceError(
            f"no offline-run-*/run-*.wandb files in {root} or {root / 'wandb'}; point --path "
            "at the folder wandb wrote (WANDB_DIR, or its wandb/ subfolder)"
        )
    return found


def read_offline(
    path: str | os.PathLike[str],
    metric_map: MetricMap | None = None,
    *,
    step_key: str = AUTO,
) -> SourceResult:
    """Read every offline W&B run under ``path`` into RunRecords, sorted by run id.

    ``step_key``: the history key used as the step; ``"auto"`` follows
    :mod:`tracker_sched.sources.wandb_history` (the declared step metric, else
    ``train/global_step``/``trainer/global_step``, else ``_step``).

    A run whose file is damaged keeps its intact records and gets a ``repaired``
    issue; a file with no records, or that is no transaction log, is excluded.
    """
    record_class()  # fail early, with the extra to install, if wandb is missing
    metric_map = metric_map or MetricMap()
    runs: list[RunRecord] = []
    issues: list[RunIssue] = []
    for log in find_logs(path):
        raw, scan, excluded = _read_run(log)
        file_id = log.stem[4:] if log.stem.startswith("run-") else log.stem
        if raw is None:
            issues.append(RunIssue(run_id=file_id, action="excluded",
                                   reason=f"{log.name}: {excluded}"))
            continue
        if scan.damage:
            issues.append(RunIssue(run_id=raw.run_id, action="repaired",
                                   reason=f"{log.name}: {_damage_text(scan)}; kept the "
                                          f"{scan.records} intact records around the damage"))
        try:
            rec, repeats = _to_record(raw, metric_map, step_key)
        except _NoStep as exc:
            issues.append(RunIssue(run_id=raw.run_id, action="excluded",
                                   reason=f"{log.name}: {exc}"))
            continue
        except (ValidationError, ValueError, TypeError) as exc:
            msg = str(exc).replace("\n", " ")
            issues.append(RunIssue(run_id=raw.run_id, action="excluded",
                                   reason=f"{log.name}: does not match the run schema: {msg}"))
            continue
        runs.append(rec)
        if repeats:
            issues.append(RunIssue(run_id=rec.run_id, action="repaired",
                                   reason=f"{log.name}: {repeats}"))
    runs.sort(key=lambda r: r.run_id)
    return SourceResult(runs=runs, issues=issues)


class WandbOfflineSource:
    """``--source wandb-offline --path DIR``: runs logged by wandb in offline mode.

    ``path`` is a folder holding ``offline-run-*`` folders (or its ``wandb/``
    subfolder does), one ``offline-run-*`` folder, or one ``.wandb`` file.
    ``step_key`` names the history key used as the step (``"auto"`` by default:
    the run's ``define_metric`` step metric, else ``train/global_step`` or
    ``trainer/global_step``, else wandb's ``_step``). Rows without it are skipped.

    >>> source = WandbOfflineSource("wandb/")  # doctest: +SKIP
    >>> result = source.read()  # doctest: +SKIP
    >>> [r.run_id for r in result.runs], result.issues  # doctest: +SKIP
    """

    name = "wandb-offline"

    def __init__(
        self,
        path: str | os.PathLike[str],
        metric_map: MetricMap | None = None,
        step_key: str = AUTO,
    ) -> None:
        self.path = Path(path)
        self.metric_map = metric_map
        self.step_key = step_key

    def read(self) -> SourceResult:
        return read_offline(self.path, self.metric_map, step_key=self.step_key)
