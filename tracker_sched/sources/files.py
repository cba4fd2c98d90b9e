"""The files source: a sweep as JSON Lines, one run per line.

The format (``tracker-sched`` sweep files, version 1) is documented in
``docs/sweep-format.md``. A line holds either a run whose series are already
mapped to roles (``train_loss``, ``lr``, ``val_metric``: each
``{"step": [...], "value": [...]}``), which is what :func:`write_sweep`
writes, or a run with raw tracker keys under ``"metrics"``, mapped through a
:class:`~tracker_sched.schema.MetricMap`. A first line ``{"tracker_sched_sweep": 1, ...}``
is an optional header. ``NaN`` and ``Infinity`` are allowed as numbers.

A path may be a ``.jsonl`` file or a folder of them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tracker_sched.budget import epoch_series, stated_budget
from tracker_sched.errors import SourceError
from tracker_sched.schema import ROLES, MetricMap, RunIssue, RunRecord, Series
from tracker_sched.sources.base import SourceResult

FORMAT_VERSION = 1
HEADER_KEY = "tracker_sched_sweep"


def record_from_raw(obj: dict[str, Any], metric_map: MetricMap) -> RunRecord:
    """Build a RunRecord from a run with raw tracker keys under ``metrics``.

    Where ``obj`` has no ``total_steps``, the budget the config states is found
    here (:func:`tracker_sched.budget.stated_budget`), while the logged
    ``epoch`` metric is still at hand for the steps per epoch.
    """
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError("'metrics' must map tracker keys to {step, value} series")
    for name in ("config", "metric_keys"):
        if name in obj and not isinstance(obj[name], dict):
            raise ValueError(f"'{name}' must be a JSON object, got {type(obj[name]).__name__}")
    lengths = {k: len(v.get("step", ())) if isinstance(v, dict) else 0
               for k, v in metrics.items()}
    keys = metric_map.resolve(metrics.keys(), lengths=lengths)
    fields: dict[str, Any] = {k: v for k, v in obj.items() if k != "metrics"}
    used: dict[str, str] = {}
    for role in ROLES:
        key = keys[role]
        if key is not None:
            fields[role] = Series.model_validate(metrics[key])
            used[role] = key
    fields["metric_keys"] = {**used, **fields.get("metric_keys", {})}
    fields.setdefault("config", {})
    if len(used) < len(ROLES):
        # Kept: validation excludes it with the keys it saw, so the report says why.
        fields["config"] = {**fields["config"], "_keys_seen": sorted(metrics)}
    if "total_steps" not in fields:
        epoch = epoch_series(metrics)
        last = max((max(s.step) for r in ROLES if (s := fields.get(r)) is not None and len(s)),
                   default=None)
        found = stated_budget(fields["config"], epoch[1] if epoch else None, last)
        if found is not None:
            fields["total_steps"], fields["budget_source"] = found.steps, found.source
            if epoch is not None and "per epoch" in found.source:
                fields["metric_keys"].setdefault("epoch", epoch[0])
    return RunRecord.model_validate(fields)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(path.glob("*.jsonl"))
        if not found:
            raise SourceError(f"no .jsonl sweep files in folder {path}")
        return found
    if path.is_file():
        return [path]
    raise SourceError(f"sweep path {path} does not exist")


def read_sweep(path: str | os.PathLike[str], metric_map: MetricMap | None = None) -> SourceResult:
    """Read a sweep file (JSON Lines, one run a line) or a folder of them.

    A bad line becomes an issue; the rest is kept. ``docs/sweep-format.md`` has the format.

    Args:
        path: a ``.jsonl`` file, or a folder whose ``*.jsonl`` files are read in name order.
        metric_map: which keys are the train loss, the lr and the validation metric
            (inferred from the runs by default).

    Returns:
        A ``SourceResult``: ``runs`` (one :class:`~tracker_sched.schema.RunRecord` each)
        and ``issues`` (the lines that were not read, with the reason).

    Raises:
        SourceError: the path does not exist or a file cannot be read.
    """
    metric_map = metric_map or MetricMap()
    runs: list[RunRecord] = []
    issues: list[RunIssue] = []
    for file in _files(Path(path)):
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"cannot read {file}: {exc}") from exc
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{file.name}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                issues.append(RunIssue(run_id=where, action="excluded",
                                       reason=f"not valid JSON ({exc.msg} at column {exc.colno})"))
                continue
            if not isinstance(obj, dict):
                issues.append(RunIssue(run_id=where, action="excluded",
                                       reason="a line must be a JSON object"))
                continue
            if HEADER_KEY in obj:
                version = obj[HEADER_KEY]
                if (not isinstance(version, int) or isinstance(version, bool)
                        or version > FORMAT_VERSION):
                    raise SourceError(
                        f"{file} is sweep format {version!r}; this tracker-sched reads up to "
                        f"{FORMAT_VERSION}: upgrade tracker-sched"
                    )
                continue
            rid = str(obj.get("run_id", where))
            try:
                rec = (record_from_raw(obj, metric_map) if "metrics" in obj
                       else RunRecord.model_validate(obj))
            except (ValidationError, ValueError, TypeError) as exc:
                msg = str(exc).replace("\n", " ")
                issues.append(RunIssue(run_id=rid, action="excluded",
                                       reason=f"{where}: does not match the run schema: {msg}"))
                continue
            runs.append(rec)
    return SourceResult(runs=runs, issues=issues)


def write_sweep(
    path: str | os.PathLike[str], runs: Iterable[RunRecord], *, meta: dict[str, Any] | None = None
) -> Path:
    """Write runs as a sweep file (header line, then one run per line), atomically."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sweep-", suffix=".jsonl", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({HEADER_KEY: FORMAT_VERSION, **(meta or {})}) + "\n")
            for run in runs:
                fh.write(run.model_dump_json() + "\n")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


class FilesSource:
    """``--source files --path SWEEP``: a JSON Lines sweep file or a folder of them."""

    name = "files"

    def __init__(self, path: str | os.PathLike[str], metric_map: MetricMap | None = None) -> None:
        self.path = Path(path)
        self.metric_map = metric_map

    def read(self) -> SourceResult:
        return read_sweep(self.path, self.metric_map)
