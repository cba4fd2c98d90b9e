"""One request format for every way a recommendation is asked for.

The CLI's ``recommend``, the MLflow pyfunc model (``/invocations``), the
``mlflow deployments`` target and :class:`~tracker_sched.remote.RemoteAdvisor`
all send the same thing: the run's observations so far (one row per logged
step, any of ``train_loss``, ``val_metric``, ``lr`` missing), the run's budget
``total_steps``, optionally the current ``step`` (default: the last logged)
and the schedule the run follows now. The answer is a
:class:`~tracker_sched.schema.Recommendation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tracker_sched.bundle import Bundle
from tracker_sched.errors import InputError
from tracker_sched.planner import GenerativePlanner, LiveHistory, PlannerConfig
from tracker_sched.schema import Recommendation, Schedule

CHANNELS = ("train_loss", "val_metric", "lr")


class Observation(BaseModel):
    """What a run logged at one step; a missing value is None (or NaN in a data frame)."""

    model_config = ConfigDict(frozen=True)

    step: int = Field(ge=0)
    train_loss: float | None = None
    val_metric: float | None = None
    lr: float | None = None


class RecommendRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    observations: list[Observation]
    total_steps: int = Field(gt=0)
    step: int | None = None
    current: Schedule | None = None


def observations_from_records(records: Iterable[Mapping[str, Any]]) -> list[Observation]:
    """Rows (dicts, data-frame records) -> observations; NaN and "" count as missing."""
    out = []
    for n, row in enumerate(records, start=1):
        clean: dict[str, Any] = {}
        for key, value in row.items():
            if key not in ("step", *CHANNELS):
                continue
            if value is None or value == "":
                continue
            try:
                f = float(value)
            except (TypeError, ValueError) as exc:
                raise InputError(f"observation {n}: {key}={value!r} is not a number") from exc
            if np.isnan(f):
                continue
            clean[key] = int(f) if key == "step" else f
        if "step" not in clean:
            raise InputError(f"observation {n} has no 'step'")
        out.append(Observation(**clean))
    return out


def parse_request(payload: Mapping[str, Any]) -> RecommendRequest:
    """A JSON-like payload -> request, with one clear error line on bad input."""
    try:
        return RecommendRequest.model_validate(payload)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InputError(f"bad recommendation request: {errors}") from exc


def history_from_observations(observations: Sequence[Observation]) -> LiveHistory:
    """Per-channel (steps, values), sorted by step; a repeated step keeps its last value."""
    cols: dict[str, dict[int, float]] = {k: {} for k in CHANNELS}
    for o in observations:
        for key in CHANNELS:
            v = getattr(o, key)
            if v is not None:
                cols[key][o.step] = float(v)

    def arr(key: str) -> tuple[np.ndarray, np.ndarray]:
        items = sorted(cols[key].items())
        return (np.asarray([s for s, _ in items], dtype=np.int64),
                np.asarray([v for _, v in items], dtype=np.float64))

    return LiveHistory(train_loss=arr("train_loss"), lr=arr("lr"), val_metric=arr("val_metric"))


def recommend(
    bundle: Bundle,
    request: RecommendRequest,
    *,
    planner: GenerativePlanner | None = None,
    config: PlannerConfig | None = None,
) -> Recommendation:
    """One stateless replan for a run's observations. Raises InputError on unusable input."""
    if not request.observations:
        raise InputError("no observations: send at least one logged step")
    planner = planner or GenerativePlanner(bundle, config)
    last = max(o.step for o in request.observations)
    step = request.step if request.step is not None else last
    return planner.plan(history_from_observations(request.observations), step=step,
                        total_steps=request.total_steps, current=request.current)
