"""W&B history rows to metric series: which key is the step, and steps logged twice.

Shared by the offline and the API source. W&B's own ``_step`` counts
``wandb.log`` calls, which is the training step only when a script passes
``step=``. HF Trainer and Lightning log their optimizer step as a metric
(``train/global_step``, ``trainer/global_step``) and declare it with
``define_metric("*", step_metric=...)``; their ``_step`` counts log calls
(a training row and an eval row at the same optimizer step are two calls).
With ``step_key="auto"`` (the default) the step is, in order:

1. the step metric the run declared with ``define_metric`` (offline files
   keep the declaration);
2. ``train/global_step`` or ``trainer/global_step`` where most rows have it
   (the API does not return declarations);
3. ``_step``.

Rows without the chosen key cannot be placed and are skipped. Where a step
repeats, the last value logged wins; only repeats with a *different* value
count as a repair (HF logs ``train/epoch`` in its training and its eval row at
the same step, with the same value).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tracker_sched.numbers import to_float

AUTO = "auto"
#: Step metrics frameworks log (HF Trainer, Lightning), tried when none is declared.
KNOWN_STEP_KEYS: tuple[str, ...] = ("train/global_step", "trainer/global_step")

Row = Mapping[str, Any]
Metrics = dict[str, dict[int, float]]  # key -> step -> value


def number(value: Any) -> float | None:
    """A history value as float; None for text, bools, lists, media. NaN stays NaN
    (the API may send non-finite floats as their names)."""
    return to_float(value)


def whole_step(value: Any) -> int | None:
    n = number(value)
    if n is None or not math.isfinite(n) or n != int(n):
        return None
    return int(n)


def choose_step_key(rows: Sequence[Row], requested: str = AUTO,
                    declared: Sequence[str] = ()) -> str:
    """The history key used as the step: ``requested``, or the module's rule for ``"auto"``."""
    if requested != AUTO:
        return requested
    for key in declared:
        if any(key in row for row in rows):
            return key
    for key in KNOWN_STEP_KEYS:
        if 2 * sum(1 for row in rows if whole_step(row.get(key)) is not None) >= len(rows) > 0:
            return key
    return "_step"


def missing_step_key(rows: Sequence[Row], step_key: str) -> str | None:
    """Why no row can be placed on ``step_key`` (naming the keys seen), or None."""
    if not rows or any(whole_step(row.get(step_key)) is not None for row in rows):
        return None
    seen = sorted({k for row in rows for k in row})
    return (f"no history row has a whole-number step under {step_key!r} (keys logged: "
            f"{', '.join(seen)}); pass --step-key KEY")


def rows_to_metrics(rows: Iterable[Row], step_key: str) -> tuple[Metrics, dict[str, int]]:
    """Per-key ``{step: value}`` series, and per key how many repeated steps changed the value.

    Keys that start with ``_`` (``_step``, ``_runtime``, ``_timestamp``) are W&B's
    own; the step key is the axis, not a metric.
    """
    metrics: Metrics = {}
    conflicts: dict[str, int] = {}
    for row in rows:
        step = whole_step(row.get(step_key))
        if step is None:
            continue
        for key, value in row.items():
            if key == step_key or key.startswith("_"):
                continue
            v = number(value)
            if v is None:
                continue
            series = metrics.setdefault(key, {})
            old = series.get(step)
            if old is not None and not (old == v or (math.isnan(old) and math.isnan(v))):
                conflicts[key] = conflicts.get(key, 0) + 1
            series[step] = v
    return metrics, conflicts


def as_series(metrics: Metrics) -> dict[str, dict[str, list[Any]]]:
    """``{key: {"step": [...], "value": [...]}}`` sorted by step, as record_from_raw takes it."""
    return {k: {"step": sorted(s), "value": [s[i] for i in sorted(s)]}
            for k, s in sorted(metrics.items())}


def repeat_note(conflicts: Mapping[str, int], used: Iterable[str], step_key: str) -> str:
    """The repair note for repeats in the keys a record uses ("" when there are none)."""
    parts = [f"{k!r}: {conflicts[k]} point(s)" for k in sorted(set(used)) if conflicts.get(k)]
    if not parts:
        return ""
    return (f"a value logged again at an already-logged {step_key!r} with another value, the "
            "last value logged kept: " + "; ".join(parts))
