"""Suggested runs as files: a W&B sweep config, MLflow params, a planned-runs file (and
reading one back); :func:`suggest_for_sweep`, the library behind ``tracker-sched
suggest-runs``. The suggestions themselves are :mod:`tracker_sched.design.suggest`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from tracker_sched.data.validation import validate_sweep
from tracker_sched.design.confounding import (
    ConfoundingReport,
    confounding,
)
from tracker_sched.errors import InputError
from tracker_sched.schema import Direction, MetricMap, RunRecord

if TYPE_CHECKING:  # the summary imports the grid, which imports torch
    pass

from tracker_sched.design.suggest import (
    MLFLOW_SCHEDULE_PARAM,
    SCHEDULE_PARAM,
    SuggestedRun,
    suggest_runs,
    sweep_summary,
)

PLANNED_KEY = "tracker_sched_planned_runs"
PLANNED_VERSION = 1


def _yaml_safe_json(obj: Any, indent: str = "") -> str:
    """JSON that PyYAML reads back identically (``wandb sweep FILE`` parses it as YAML).

    PyYAML (YAML 1.1) reads ``1e-05`` as a string; a mantissa with a dot
    (``1.0e-05``) is a float in both languages.
    """
    inner = indent + "  "
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {_yaml_safe_json(v, inner)}" for k, v in
                 obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list):
        if not obj:
            return "[]"
        return "[\n" + ",\n".join(inner + _yaml_safe_json(v, inner) for v in obj) + "\n" \
            + indent + "]"
    if isinstance(obj, float) and not isinstance(obj, bool):
        if not math.isfinite(obj):
            raise InputError(f"cannot write the non-finite number {obj} in a sweep config")
        text = repr(obj)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp}"
        return text
    return json.dumps(obj)


def _common_config(suggestions: Sequence[SuggestedRun]) -> dict[str, JsonValue]:
    first = suggestions[0].config
    return {k: v for k, v in first.items() if all(
        k in s.config and s.config[k] == v for s in suggestions)}


def wandb_sweep_config(
    suggestions: Sequence[SuggestedRun],
    *,
    metric: str,
    goal: Literal["maximize", "minimize"],
    name: str = "tracker-sched suggested runs",
    program: str | None = None,
) -> dict[str, Any]:
    """A W&B sweep config: a ``grid`` over one ``tracker_sched_schedule`` parameter.

    Each value is a JSON string: the knots plus ``config``, the keys in which
    this run's base configuration differs from the keys all suggestions share
    (those are plain ``value`` parameters). In the training script:
    ``KnotSchedule.from_param(wandb.config.tracker_sched_schedule)``.
    """
    if not suggestions:
        raise InputError("no suggestions to write")
    common = _common_config(suggestions)
    values = []
    for s in suggestions:
        extra = {k: v for k, v in s.config.items() if k not in common}
        values.append(json.dumps({"name": s.name, "tau": s.schedule.tau, "lr": s.schedule.lr,
                                  "config": extra}, separators=(",", ":")))
    params: dict[str, Any] = {k: {"value": v} for k, v in common.items()}
    params[SCHEDULE_PARAM] = {"values": values}
    cfg: dict[str, Any] = {"name": name, "method": "grid",
                           "metric": {"name": metric, "goal": goal}, "parameters": params}
    if program:
        cfg["program"] = program
    return cfg


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def mlflow_params(suggestions: Sequence[SuggestedRun]) -> list[dict[str, Any]]:
    """One flat params dict per run, for ``mlflow.log_params``.

    The base configuration is flattened (nested keys joined with dots), the
    schedule is the JSON string ``tracker_sched.schedule``, and
    ``tracker_sched.kind`` / ``tracker_sched.base_run`` say where it came from.
    """
    out = []
    for s in suggestions:
        p = _flat(dict(s.config))
        p.update({MLFLOW_SCHEDULE_PARAM: s.schedule.to_param(), "tracker_sched.kind": s.kind,
                  "tracker_sched.base_run": s.base_run_id, "tracker_sched.name": s.name})
        out.append(p)
    return out


def format_suggestions(
    suggestions: Sequence[SuggestedRun],
    fmt: Literal["wandb", "mlflow", "files"],
    *,
    metric: str = "val_metric",
    goal: Literal["maximize", "minimize"] = "maximize",
    program: str | None = None,
    report: ConfoundingReport | None = None,
) -> str:
    """The suggestions as the text of a file in format ``fmt`` (see docs/suggest-runs.md)."""
    if fmt == "wandb":
        cfg = wandb_sweep_config(suggestions, metric=metric, goal=goal, program=program)
        return _yaml_safe_json(cfg) + "\n"
    if fmt == "mlflow":
        return "".join(json.dumps(p) + "\n" for p in mlflow_params(suggestions))
    if fmt == "files":
        header: dict[str, Any] = {PLANNED_KEY: PLANNED_VERSION}
        if report is not None:
            header["confounding"] = report.summary()
        lines = [json.dumps(header)] + [s.model_dump_json() for s in suggestions]
        return "\n".join(lines) + "\n"
    raise InputError(f"unknown format {fmt!r}; choose wandb, mlflow or files")


class SuggestionSet(BaseModel):
    """What ``tracker-sched suggest-runs`` prints and writes."""

    model_config = ConfigDict(frozen=True)

    report: ConfoundingReport
    suggestions: list[SuggestedRun]
    text: str = Field(description="the suggestions in the requested file format")


def suggest_for_sweep(
    runs: Sequence[RunRecord],
    *,
    n: int = 12,
    seed: int = 0,
    fmt: Literal["wandb", "mlflow", "files"] = "wandb",
    metric_map: MetricMap | None = None,
    direction: Direction | None = None,
    program: str | None = None,
) -> SuggestionSet:
    """Diagnose a sweep and write its suggested runs: the library behind the CLI command."""
    clean = validate_sweep(list(runs))
    report = confounding(clean)
    summary = sweep_summary(clean, metric_map=metric_map, direction=direction)
    suggestions = suggest_runs(clean, n=n, seed=seed, summary=summary)
    mm = metric_map or MetricMap()
    keys = {r.record.metric_keys.get("val_metric") for r in clean.runs} - {None}
    metric = str(next(iter(keys))) if len(keys) == 1 else (mm.val_metric or "val_metric")
    goal: Literal["maximize", "minimize"] = (
        "maximize" if (direction or mm.direction_for(metric)) == "max" else "minimize")
    text = format_suggestions(suggestions, fmt, metric=metric, goal=goal, program=program,
                              report=report)
    return SuggestionSet(report=report, suggestions=suggestions, text=text)


def read_planned_runs(path: str | os.PathLike[str]) -> list[SuggestedRun]:
    """Read a planned-runs file written with ``--format files``."""
    try:
        lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read planned runs {path}: {exc}") from exc
    out: list[SuggestedRun] = []
    for n, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
            if n == 1 and isinstance(obj, dict) and PLANNED_KEY in obj:
                if int(obj[PLANNED_KEY]) > PLANNED_VERSION:
                    raise InputError(f"{path} is planned-runs format {obj[PLANNED_KEY]}; this "
                                     f"tracker-sched reads up to {PLANNED_VERSION}: upgrade it")
                continue
            out.append(SuggestedRun.model_validate(obj))
        except (json.JSONDecodeError, ValidationError, ValueError, TypeError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{path}:{n}: not a planned run ({exc})") from exc
    return out
