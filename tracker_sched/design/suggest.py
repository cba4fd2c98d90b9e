"""Sweep design: how confounded a sweep is, and which runs to add to make it learnable.

In a sweep of parametric schedules the log lr at each progress point tau is
fixed by the configuration (family and peak), so a model with the lr as a
control input cannot separate the effect of the lr from the effect of the
configuration and of tau: the second pre-study in ``shared/notes/method.md``
saw a control model learn the immediate gain of a low lr without its long-run
cost, and a planner exploit it (-6.9 points). Runs with randomised schedules
broke the tie. :func:`~tracker_sched.design.confounding.confounding` measures the
tie; :func:`suggest_runs` proposes the runs that break it;
``docs/suggest-runs.md`` documents both, the thresholds and the output formats.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from tracker_sched.data.validation import ValidatedSweep, validate_sweep
from tracker_sched.design.confounding import (
    ConfoundingReport,
    clean_runs,
    confounding,
)
from tracker_sched.errors import InputError
from tracker_sched.identity import config_id
from tracker_sched.schema import Direction, MetricMap, RunRecord

if TYPE_CHECKING:  # summary imports the bundle, which imports torch
    from tracker_sched.bundle.folder import SweepSummary

Kind = Literal["perturbed", "non_monotone", "hold_low"]
KINDS: tuple[Kind, ...] = ("perturbed", "non_monotone", "hold_low")
PLANNED_KEY = "tracker_sched_planned_runs"
PLANNED_VERSION = 1
SCHEDULE_PARAM = "tracker_sched_schedule"  # W&B sweep parameter (a JSON string)
MLFLOW_SCHEDULE_PARAM = "tracker_sched.schedule"




# --------------------------------------------------------------------------- suggestions


class KnotSchedule(BaseModel):
    """An lr schedule as knots, log-linear between them: what a training script follows.

    >>> s = KnotSchedule(tau=[0.0, 1.0], lr=[1e-2, 1e-4])
    >>> round(s.lr_at(50, 100), 6)
    0.001
    """

    model_config = ConfigDict(frozen=True)

    tau: list[float] = Field(min_length=2)
    lr: list[float] = Field(min_length=2)

    @model_validator(mode="after")
    def _check(self) -> KnotSchedule:
        if len(self.tau) != len(self.lr):
            raise ValueError(f"tau and lr need the same length, got {len(self.tau)} and "
                             f"{len(self.lr)}")
        if self.tau[0] != 0.0 or self.tau[-1] != 1.0 or any(
            b <= a for a, b in zip(self.tau, self.tau[1:], strict=False)
        ):
            raise ValueError("knot taus must increase strictly from 0.0 to 1.0")
        if not all(math.isfinite(x) and x > 0 for x in self.lr):
            raise ValueError("every knot lr must be positive and finite")
        return self

    def lr_at(self, step: int, total_steps: int) -> float:
        """The lr at ``step`` of a ``total_steps`` budget (tau clipped to [0, 1])."""
        if total_steps <= 0:
            raise InputError(f"total_steps must be > 0, got {total_steps}")
        tau = min(max(step / total_steps, 0.0), 1.0)
        return float(10.0 ** np.interp(tau, self.tau, np.log10(self.lr)))

    def to_param(self) -> str:
        """Compact JSON, as stored in a W&B sweep value or an MLflow param."""
        return json.dumps({"tau": self.tau, "lr": self.lr}, separators=(",", ":"))

    @classmethod
    def from_param(cls, value: str | dict[str, Any]) -> KnotSchedule:
        """Parse what :meth:`to_param` wrote (a training script's entry point)."""
        try:
            obj = json.loads(value) if isinstance(value, str) else value
            return cls.model_validate({"tau": obj["tau"], "lr": obj["lr"]})
        except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
            raise InputError(f"not a tracker-sched schedule: {exc}") from exc


class SuggestedRun(BaseModel):
    """A run to add to the sweep: a base configuration and a schedule to follow."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Kind
    base_run_id: str = Field(description="the sweep run whose schedule this perturbs")
    config: dict[str, JsonValue]
    total_steps: int = Field(gt=0)
    band_dex: float = Field(description="max |log10 lr - base log10 lr| at the knots")
    schedule: KnotSchedule

    def lr_at(self, step: int, total_steps: int | None = None) -> float:
        """The lr at ``step`` (budget: this run's ``total_steps`` unless given)."""
        return self.schedule.lr_at(step, total_steps or self.total_steps)


@dataclass(frozen=True)
class _Base:
    run_id: str
    config: dict[str, Any]
    total_steps: int
    log_lr: list[float]  # on an even tau grid, edges filled


def _bases(summary: SweepSummary, k: int) -> list[_Base]:
    """Up to ``k`` best runs of distinct configurations (seeds aside), best first."""
    out: list[_Base] = []
    seen: set[str] = set()
    for tr in summary.top_runs:
        key = tr.config_id or config_id(tr.config)
        if key in seen or len(out) >= k:
            continue
        seen.add(key)
        x = np.array([np.nan if v is None else v for v in tr.log_lr], dtype=np.float64)
        ok = np.isfinite(x)
        if not ok.any():
            continue
        g = np.linspace(0.0, 1.0, x.size)
        out.append(_Base(run_id=tr.run_id, config=tr.config, total_steps=tr.total_steps,
                         log_lr=np.interp(g, g[ok], x[ok]).tolist()))
    if not out:
        raise InputError("the sweep summary names no run with an lr curve to perturb")
    return out


def _offset_knots(kind: Kind, rng: np.random.Generator, band: float, peak_tau: float
                  ) -> tuple[list[float], list[float]]:
    """A smooth random offset (in decades) as a few knots; 0 at tau = 0 (same start)."""
    if kind == "hold_low":
        a = min(max(peak_tau, 0.1), 0.3)
        b = a + float(rng.uniform(0.2, 0.3))
        depth = -band * float(rng.uniform(0.7, 1.0))
        back = band * float(rng.uniform(-0.3, 1.0))
        return ([0.0, a, a + 0.05, b, min(b + 0.1, 0.95), 1.0],
                [0.0, 0.0, depth, depth, back, band * float(rng.uniform(-1.0, 1.0))])
    k = int(rng.integers(3, 6))
    # one knot in each of k equal slots of [0.1, 0.95], jittered: random but never bunched
    width = 0.85 / k
    taus = 0.1 + width * (np.arange(k) + rng.uniform(0.2, 0.8, size=k))
    if kind == "perturbed":
        vals = rng.uniform(-band, band, size=k)
    else:  # alternate sign so that the lr falls and rises again
        sign = 1.0 if rng.random() < 0.5 else -1.0
        vals = np.array([sign * (-1.0) ** i for i in range(k)]) * rng.uniform(0.5, 1.0, k) * band
    end = float(rng.uniform(-band, band))
    return [0.0, *taus.tolist(), 1.0], [0.0, *vals.tolist(), end]


def _make_schedule(base: _Base, kind: Kind, rng: np.random.Generator, band: float,
                   log_lr_cap: float, knots: int) -> KnotSchedule:
    g = np.linspace(0.0, 1.0, len(base.log_lr))
    b = np.asarray(base.log_lr)
    peak_tau = float(g[int(np.argmax(b))])
    ot, ov = _offset_knots(kind, rng, band, peak_tau)
    tau = np.unique(np.round(np.concatenate([np.linspace(0.0, 1.0, knots), ot]), 6))
    log_lr = np.interp(tau, g, b) + np.interp(tau, ot, ov)
    log_lr = np.minimum(log_lr, max(log_lr_cap, float(b.max())))
    return KnotSchedule(tau=tau.tolist(), lr=(10.0 ** log_lr).tolist())


def sweep_summary(
    runs: Sequence[RunRecord] | ValidatedSweep,
    *,
    metric_map: MetricMap | None = None,
    direction: Direction | None = None,
    grid_points: int = 101,
) -> SweepSummary:
    """The sweep's best configurations and schedules, as a fitted bundle would store them."""
    from tracker_sched.data.grid import choose_transforms, to_grid
    from tracker_sched.data.summary import summarise

    clean = clean_runs(runs)
    mm = metric_map or MetricMap()
    if direction is None:
        keys = {r.record.metric_keys.get("val_metric") for r in clean} - {None}
        key = next(iter(keys)) if len(keys) == 1 else (mm.val_metric or "val_metric")
        direction = mm.direction_for(str(key))
    grid = to_grid(clean, grid_points, choose_transforms(clean, direction))
    return summarise(clean, grid, direction)


def suggest_runs(
    runs: Sequence[RunRecord] | ValidatedSweep,
    *,
    n: int = 12,
    seed: int = 0,
    families: Sequence[Kind] = KINDS,
    band_dex: float = 0.5,
    bases: int = 3,
    knots: int = 11,
    summary: SweepSummary | None = None,
    metric_map: MetricMap | None = None,
    direction: Direction | None = None,
) -> list[SuggestedRun]:
    """Runs to add to a sweep so that the lr's effect can be learned from it.

    Each suggestion takes one of the ``bases`` best configurations (seeds aside;
    the best first, then round robin) and perturbs that run's log10-lr curve by
    a smooth random offset of at most ``band_dex`` decades, cycling through
    ``families``: ``perturbed`` (a few random knots), ``non_monotone`` (offsets of
    alternating sign: the lr falls and rises again), ``hold_low`` (the base's
    warm-up, then a low lr held early, then back). The schedule's knots are
    ``knots`` even taus plus the offset's own; the lr never exceeds the largest
    lr the sweep ran (or the base's peak). Same ``seed``, same suggestions.
    ``summary`` (a bundle's :class:`SweepSummary`) saves recomputing the best runs.
    """
    if n <= 0:
        raise InputError(f"n must be a positive number of runs, got {n}")
    if not families:
        raise InputError(f"families must name at least one of {', '.join(KINDS)}")
    unknown = sorted(set(families) - set(KINDS))
    if unknown:
        raise InputError(f"unknown families {unknown}; choose from {', '.join(KINDS)}")
    if not 0 < band_dex <= 2:
        raise InputError(f"band_dex must be in (0, 2] decades, got {band_dex}")
    if bases < 1 or knots < 2:
        raise InputError(f"bases must be >= 1 and knots >= 2, got {bases} and {knots}")
    if summary is None:
        summary = sweep_summary(runs, metric_map=metric_map, direction=direction)
    chosen = _bases(summary, bases)
    rng = np.random.default_rng(seed)
    cap = math.log10(summary.lr_max)
    out: list[SuggestedRun] = []
    for i in range(n):
        base = chosen[0] if i % 2 == 0 or len(chosen) == 1 else chosen[1 + (i // 2) % (
            len(chosen) - 1)]
        kind = families[i % len(families)]
        out.append(SuggestedRun(
            name=f"tracker-sched-suggest-s{seed}-{i:03d}-{kind}",
            kind=kind, base_run_id=base.run_id, config=base.config,
            total_steps=base.total_steps, band_dex=band_dex,
            schedule=_make_schedule(base, kind, rng, band_dex, cap, knots),
        ))
    return out


# --------------------------------------------------------------------------- formats


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
