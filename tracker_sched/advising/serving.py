"""One request format for every way a recommendation is asked for.

The CLI's ``recommend``, the MLflow pyfunc model (``/invocations``), the
``mlflow deployments`` target and :class:`~tracker_sched.advising.remote.RemoteAdvisor`
all send the same thing: the run's observations so far (one row per logged
step, any of ``train_loss``, ``val_metric``, ``lr`` missing), the run's budget
``total_steps``, optionally the current ``step`` (default: the last logged)
and the schedule the run follows now. The answer is a
:class:`~tracker_sched.schema.Recommendation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tracker_sched.errors import InputError, invalid
from tracker_sched.limits import MAX_ROWS, MAX_SCHEDULE_POINTS, MAX_STEPS
from tracker_sched.planning.history import LiveHistory, spans_window
from tracker_sched.schema import ROLES, Recommendation, Schedule

if TYPE_CHECKING:  # torch: a thin client (RemoteAdvisor) uses this module without it
    from tracker_sched.bundle.folder import Bundle
    from tracker_sched.planning.base import Planner
    from tracker_sched.planning.generative import PlannerConfig

CHANNELS = ROLES  # an observation's metrics: the roles, in the one order of schema.ROLES


def whole_steps(value: Any, what: str, *, minimum: int = 0) -> int:
    """``value`` as a whole number of steps in ``[minimum, MAX_STEPS]``; else an InputError
    that names ``what``. ``840``, ``840.0`` and ``"8.4e2"`` are 840; ``2.5``, ``inf``, ``-5``,
    ``1e21`` and ``True`` are refused, never truncated or overflowed."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be a whole number of steps, got {value!r}")
    try:
        number = value if isinstance(value, int) else float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"{what} must be a whole number of steps, got {value!r}") from exc
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        raise InputError(f"{what} must be a whole number of steps, got {value!r}")
    if not minimum <= number <= MAX_STEPS:
        raise InputError(f"{what} must lie in [{minimum}, {MAX_STEPS:.0e}] steps, got {value!r}")
    return int(number)


class Observation(BaseModel):
    """What a run logged at one step; a missing value is None (or NaN in a data frame)."""

    model_config = ConfigDict(frozen=True)

    step: int = Field(ge=0, le=MAX_STEPS)
    train_loss: float | None = None
    val_metric: float | None = None
    lr: float | None = None


class RecommendRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    observations: list[Observation] = Field(max_length=MAX_ROWS)
    total_steps: int = Field(gt=0, le=MAX_STEPS)
    step: int | None = Field(default=None, ge=0, le=MAX_STEPS)
    current: Schedule | None = None

    @model_validator(mode="after")
    def _bounded(self) -> RecommendRequest:
        if self.current is not None and len(self.current.step) > MAX_SCHEDULE_POINTS:
            raise ValueError(f"current has {len(self.current.step)} points; at most "
                             f"{MAX_SCHEDULE_POINTS}")
        return self


def observations_from_records(records: Iterable[Mapping[str, Any]]) -> list[Observation]:
    """Rows (dicts, data-frame records) -> observations.

    NaN, +-inf (a diverged step) and "" count as missing values; the step must be a
    finite, non-negative integer (1.7 is refused, not truncated), else InputError
    naming the row. More than ``MAX_ROWS`` rows is an InputError before any is read.
    """
    if isinstance(records, Sequence) and len(records) > MAX_ROWS:
        raise InputError(f"{len(records)} rows in one request; at most {MAX_ROWS} (the planner "
                         "reads a window of the run: send its recent history)")
    out = []
    for n, row in enumerate(records, start=1):
        if n > MAX_ROWS:
            raise InputError(f"more than {MAX_ROWS} rows in one request")
        clean: dict[str, Any] = {}
        for key, value in row.items():
            if key not in ("step", *CHANNELS):
                continue
            if value is None or value == "":
                continue
            try:
                f = float(value)
            except (TypeError, ValueError, OverflowError) as exc:  # Overflow: a huge int
                raise InputError(f"observation {n}: {key}={value!r} is not a number") from exc
            if key == "step":
                if not (np.isfinite(f) and 0 <= f <= MAX_STEPS and f.is_integer()):
                    raise InputError(f"observation {n}: step={value!r} is not a "
                                     f"non-negative integer (at most {MAX_STEPS:.0e})")
                clean[key] = int(f)
            elif np.isfinite(f):
                clean[key] = f
        if "step" not in clean:
            raise InputError(f"observation {n} has no 'step'")
        try:
            out.append(Observation(**clean))
        except ValidationError as exc:
            raise InputError(f"observation {n}: {exc.errors()[0]['msg']}") from exc
    return out


def parse_request(payload: Mapping[str, Any]) -> RecommendRequest:
    """A JSON-like payload -> request, with one clear error line on bad input."""
    try:
        return RecommendRequest.model_validate(payload)
    except ValidationError as exc:
        raise invalid(exc, "bad recommendation request") from exc


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
    planner: Planner | None = None,
    config: PlannerConfig | None = None,
) -> Recommendation:
    """One stateless replan for a run's observations. Raises InputError on unusable input."""
    if not request.observations:
        raise InputError("no observations: send at least one logged step")
    if planner is None:
        from tracker_sched.planning.control import make_planner

        planner = make_planner(bundle, config=config)  # the bundle's kind picks the mode
    last = max(o.step for o in request.observations)
    step = request.step if request.step is not None else last
    return planner.plan(history_from_observations(request.observations), step=step,
                        total_steps=request.total_steps, current=request.current)


# ---------------------------------------------------------------------- answers over the wire
def window_ready(bundle: Bundle, step: int, total_steps: int, first_step: int = 0) -> bool:
    """The one warm-up rule (Advisor, RemoteAdvisor's server, the deployments target,
    ``recommend``): a run plans only once what it has logged, from ``first_step`` (its first
    observation) to ``step``, spans the bundle's context window. Before that it follows the
    warm-up plan. A single row, or a run joined late, is not a window."""
    m = bundle.manifest
    return spans_window(m.grid_points, m.window, step, total_steps, first_step)


def ready_step(bundle: Bundle, total_steps: int, first_step: int = 0) -> int:
    """The first step at which :func:`window_ready` holds: a remote client replans from there."""
    g, w = bundle.manifest.grid_points, bundle.manifest.window
    step = first_step + max(0, int(np.ceil((w - 1) * total_steps / (g - 1))) - 1)
    while step < total_steps and not window_ready(bundle, step, total_steps, first_step):
        step += 1  # float slack
    return step


def first_logged(observations: Sequence[Observation]) -> int | None:
    """The first step that logged a value (a row with only a step logged nothing)."""
    steps = [o.step for o in observations
             if any(getattr(o, key) is not None for key in CHANNELS)]
    return min(steps) if steps else None


def warmup_plan(bundle: Bundle, total_steps: int, step: int = 0,
                mode: str | None = None) -> Recommendation:
    """The sweep's best run's schedule stretched to ``total_steps``; ``lr_now`` at ``step``.

    An auto bundle's best schedule as logged (``manifest.planner.best_schedule``) when it
    has one, else the warm-up plan on the bundle's grid. ``mode``: the mode the caller
    follows, named on the recommendation."""
    m = bundle.manifest
    best = m.planner.best_schedule if m.planner is not None else None
    tau, lr = (best.tau, best.lr) if best is not None else (m.sweep.warmup_tau,
                                                            m.sweep.warmup_lr)
    if best is not None:
        keep = np.r_[np.diff(np.rint(np.asarray(tau) * total_steps)) != 0, True]
        tau, lr = list(np.asarray(tau)[keep]), list(np.asarray(lr)[keep])
    steps = [round(t * total_steps) for t in tau]
    lr_now = float(10 ** np.interp(step / total_steps, tau, np.log10(lr)))
    return Recommendation(
        status="warmup", reason="following the sweep's best run until a full window exists",
        step=int(step), lr_now=lr_now, schedule=Schedule(step=steps, lr=[float(v) for v in lr]),
        model_version=m.created_at, mode=mode,  # type: ignore[arg-type]
    )


def answer(
    bundle: Bundle,
    request: RecommendRequest,
    *,
    planner: Planner | None = None,
) -> Recommendation:
    """What a server answers: the warm-up plan until the window is ready, then :func:`recommend`.

    A remote client thus gets its warm-up plan from the server too, with no
    copy of the bundle. Raises InputError on unusable input.
    """
    last = max((o.step for o in request.observations), default=0)
    step = request.step if request.step is not None else last
    if not 0 <= step <= request.total_steps:
        raise InputError(f"step {step} is outside the budget [0, {request.total_steps}]")
    first = first_logged(request.observations)
    if first is None or not window_ready(bundle, step, request.total_steps, first):
        if planner is not None:
            mode = getattr(planner, "MODE", None)
        else:  # the mode recommend() would plan with: the one the bundle trusts
            from tracker_sched.planning.control import mode_for

            mode = mode_for(bundle)
        return warmup_plan(bundle, request.total_steps, step, mode)
    return recommend(bundle, request, planner=planner)


# A recommendation as one flat row: the shape that survives a data frame and
# ``/invocations`` (``{"predictions": [row]}``) unchanged. The schedule travels
# as one JSON string column, since nested lists in a pandas cell do not
# round-trip through every MLflow output path.
ROW_FIELDS = ("status", "reason", "step", "lr_now", "schedule", "predicted_final",
              "predicted_spread", "samples_accepted", "samples_drawn", "model_version", "mode")


def recommendation_to_row(rec: Recommendation) -> dict[str, Any]:
    """A recommendation as a flat row; ``schedule`` is JSON ``{"step": [...], "lr": [...]}``."""
    row = rec.model_dump()
    row["schedule"] = rec.schedule.model_dump_json()
    return {k: row[k] for k in ROW_FIELDS}


def recommendation_from_row(row: Mapping[str, Any]) -> Recommendation:
    """The inverse of :func:`recommendation_to_row`; NaN in optional fields reads as None."""
    clean: dict[str, Any] = {}
    for key in ROW_FIELDS:
        value = row.get(key)
        if isinstance(value, float) and np.isnan(value):
            value = None
        if value is not None:
            clean[key] = value
    schedule = clean.get("schedule")
    if isinstance(schedule, str):
        clean["schedule"] = Schedule.model_validate_json(schedule)
    try:
        return Recommendation.model_validate(clean)
    except ValidationError as exc:
        raise InputError(f"not a recommendation row: {exc.errors()[0]['msg']} "
                         f"(fields: {sorted(row)})") from exc
