"""The MLflow pyfunc model: a bundle that answers recommendations (``mlflow models serve``).

Only MLflow users import this module, so it imports mlflow at its top level.

Input: a data frame, one row per logged step, columns ``step`` (required) and
any of ``train_loss``, ``val_metric``, ``lr`` (missing cells: NaN or absent).
Params: ``total_steps`` (required), ``step`` (the current step; -1, the
default, means the last row's), ``current`` (the schedule the run follows now,
as JSON ``{"step": [...], "lr": [...]}``; "" for none).
Output: a one-row data frame, the columns of
:func:`tracker_sched.advising.serving.recommendation_to_row` (``schedule`` a JSON string)
and ``ready_step``, the first step at which the run's window is ready (the
step from which a client should ask for a plan rather than the warm-up), and
``mode_reason``, why the bundle follows the planner its answers name in ``mode``
(an auto bundle's fit-time decision, in one sentence; older servers answer without it).
Param ``stop`` (JSON :class:`~tracker_sched.model.stop_odds.StopRequest`: the incumbent, the rule,
the client's count below the threshold) asks for a stop decision beside the lr: column
``stop``, a :class:`~tracker_sched.model.stop_odds.StopDecision` as JSON ("" when not asked).
Until the run covers the bundle's context window the answer is the warm-up
plan (``status="warmup"``), so a remote client needs no copy of the bundle.
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from tracker_sched.errors import InputError
from tracker_sched.limits import MAX_CURRENT_CHARS, MAX_ROWS

BUNDLE_ARTIFACT = "bundle"
SCORING_SERVER_ENV = "__pyfunc_model_path__"  # set by `mlflow models serve` for its server


def model_signature() -> ModelSignature:
    """The explicit signature: MLflow silently drops any input column it does not declare."""
    inputs = Schema([
        ColSpec("long", "step"),
        ColSpec("double", "train_loss", required=False),
        ColSpec("double", "val_metric", required=False),
        ColSpec("double", "lr", required=False),
    ])
    outputs = Schema([
        ColSpec("string", "status"), ColSpec("string", "reason"), ColSpec("long", "step"),
        ColSpec("double", "lr_now"), ColSpec("string", "schedule"),
        ColSpec("double", "predicted_final", required=False),
        ColSpec("double", "predicted_spread", required=False),
        ColSpec("long", "samples_accepted"), ColSpec("long", "samples_drawn"),
        ColSpec("string", "model_version", required=False),
        ColSpec("string", "mode", required=False),
        ColSpec("long", "ready_step"),
        ColSpec("string", "stop", required=False),
        ColSpec("string", "mode_reason", required=False),
    ])
    params = ParamSchema([
        ParamSpec("total_steps", "long", None),
        ParamSpec("step", "long", -1),
        ParamSpec("current", "string", ""),
        ParamSpec("stop", "string", ""),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example() -> tuple[pd.DataFrame, dict[str, Any]]:
    """A request as MLflow stores it with the model (``serving_input_example.json``)."""
    rows = pd.DataFrame({"step": [0, 50, 100], "train_loss": [2.3, 1.1, 0.8],
                         "val_metric": [float("nan"), float("nan"), 0.71],
                         "lr": [0.01, 0.05, 0.1]})
    return rows, {"total_steps": 1000, "step": -1, "current": ""}


class TrackerSchedModel(PythonModel):
    """Loads the bundle artifact once; each ``predict`` is one stateless answer.

    The planner is the one the bundle trusts (auto): an auto bundle's fit-time decision,
    else its kind (a control-mode bundle plans in control mode).
    """

    def load_context(self, context: Any) -> None:
        import torch

        from tracker_sched.bundle.folder import Bundle
        from tracker_sched.planning.control import make_planner, mode_reason

        # MLflow's scoring server (the only process that sets this variable) answers
        # requests on a pool of threads, each plan a few milliseconds of small tensor ops:
        # torch's intra-op threads on top of that only contend. On 2 busy cores, 64
        # concurrent runs waited 1.5 s (p50) with torch's default threads
        # (benchmarks/load_served.py). Elsewhere (a notebook loading the model) the
        # process's threads are not ours to change.
        if os.environ.get(SCORING_SERVER_ENV):
            torch.set_num_threads(1)

        self.bundle = Bundle.load(context.artifacts[BUNDLE_ARTIFACT])
        self.planner = make_planner(self.bundle)  # auto: the bundle's decision, else its kind
        self.mode_reason = mode_reason(self.bundle)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from tracker_sched.advising.serving import (
            answer,
            first_logged,
            observations_from_records,
            parse_request,
            ready_step,
            recommendation_to_row,
            whole_steps,
        )

        # Sizes first, before any row is converted (MLflow has parsed the body already: the
        # limits bound the work done on it, see docs/reliability.md).
        frame = pd.DataFrame(model_input)
        if len(frame) > MAX_ROWS:
            raise InputError(f"{len(frame)} rows in one request; at most {MAX_ROWS} (send the "
                             "run's recent history)")
        params = params or {}
        if params.get("total_steps") is None:
            raise InputError("the param total_steps (the run's planned budget) is required")
        total = whole_steps(params["total_steps"], "the param total_steps", minimum=1)
        step = params.get("step")
        minus_one = (isinstance(step, numbers.Real) and not isinstance(step, bool)
                     and float(step) == -1.0)
        # -1 (the default) means the last row's step; anything else must be a step.
        step = None if step is None or minus_one else whole_steps(step, "the param step")
        current = params.get("current") or ""
        if len(current) > MAX_CURRENT_CHARS:
            raise InputError(f"the param current is {len(current)} characters; at most "
                             f"{MAX_CURRENT_CHARS}")
        try:
            schedule = json.loads(current) if current else None
        except json.JSONDecodeError as exc:
            raise InputError(f"the param current is not JSON ({exc}); send "
                             '{"step": [...], "lr": [...]} or ""') from exc
        request = parse_request({
            "observations": observations_from_records(frame.to_dict(orient="records")),
            "total_steps": total, "step": step, "current": schedule,
        })
        rec = answer(self.bundle, request, planner=self.planner)
        row = recommendation_to_row(rec)
        row["ready_step"] = ready_step(self.bundle, request.total_steps,
                                       first_logged(request.observations) or 0)
        row["stop"] = stop_answer(self.bundle, request, params.get("stop") or "")
        row["mode_reason"] = self.mode_reason
        return pd.DataFrame([row])


def stop_answer(bundle: Any, request: Any, raw: str) -> str:
    """The ``stop`` column (also the ``stop`` key of the ``mlflow deployments`` target's
    answer): the :class:`~tracker_sched.model.stop_odds.StopDecision` as JSON at the request's
    step, "" when not asked.

    Args:
        bundle: the served bundle.
        request: the parsed :class:`~tracker_sched.advising.serving.RecommendRequest`.
        raw: the ``stop`` param, a :class:`~tracker_sched.model.stop_odds.StopRequest` as
            JSON, or "".

    Returns:
        The decision as JSON, or "".

    Raises:
        InputError: the ask is too long or no stop request.
    """
    if not raw:
        return ""
    from pydantic import ValidationError

    from tracker_sched.advising.stopping import decide_once
    from tracker_sched.model.stop_odds import StopRequest
    from tracker_sched.serving import history_from_observations

    if len(raw) > MAX_CURRENT_CHARS:
        raise InputError(f"the param stop is {len(raw)} characters; at most {MAX_CURRENT_CHARS}")
    try:
        ask = StopRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise InputError(f"the param stop is not a stop request: {exc.errors()[0]['msg']}; "
                         'send {"incumbent": 0.91, "rule": {"threshold": 0.01}} or ""') from exc
    last = max((o.step for o in request.observations), default=0)
    step = request.step if request.step is not None else last
    return decide_once(bundle, history_from_observations(request.observations), step,
                       request.total_steps, ask).model_dump_json()
