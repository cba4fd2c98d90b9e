"""The ``mlflow deployments`` target ``tracker-sched``: recommendations from a registered bundle.

MLflow discovers it through the ``mlflow.deployments`` entry point::

    mlflow deployments create -t tracker-sched --name cnn -m models:/cnn-sched@champion
    mlflow deployments predict -t tracker-sched --name cnn --input-path window.json
    mlflow deployments list -t tracker-sched
    mlflow deployments delete -t tracker-sched --name cnn

A deployment is local: its name, model URI and a downloaded copy of the bundle
are recorded in ``$TRACKER_SCHED_HOME/deployments.json`` (default
``~/.tracker_sched``; that state is kept by
:mod:`~tracker_sched.integrations.mlflow.deployment_registry`); predictions run in the
calling process, no server needed. ``predict`` takes either a metrics window (the serving format of
:mod:`tracker_sched.advising.serving`: rows with ``step``, ``train_loss``,
``val_metric``, ``lr``, plus ``total_steps``) or a run (``{"run_id": ...,
"total_steps": ...}``: the run's metric histories are read from MLflow and,
with ``log_back``, the recommendation is written back to that run). It
returns the :class:`~tracker_sched.schema.Recommendation` as a dict, plus ``mode_reason`` (why
the bundle follows the planner named in ``mode``, as the served model's column says); with
``stop`` (a param
or column: the served model's stop request, ``{"incumbent": 0.91}``) it adds ``stop``, the
:class:`~tracker_sched.model.stop_odds.StopDecision` at the last step.

MLflow imports its plugins while importing itself, so this module imports
mlflow only inside functions; the client class, which must subclass MLflow's
``BaseDeploymentClient``, is built on first access (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from tracker_sched.errors import TrackerSchedError

# Re-exported: the target's constants and home() are read here by users and tests.
from .deployment_registry import ENV_HOME as ENV_HOME
from .deployment_registry import FLAVOR as FLAVOR
from .deployment_registry import REGISTRY_FILE as REGISTRY_FILE
from .deployment_registry import (
    TARGET,
    cache_bundle,
    check_flavor,
    check_name,
    error_class,
    fail,
    inside_home,
    read_registry,
    registry_entry,
    write_registry,
)
from .deployment_registry import home as home

_TRUE = ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------- predictions
def _records(inputs: Any) -> list[dict[str, Any]]:
    """A data frame, one dict, or a list of dicts -> rows."""
    if hasattr(inputs, "to_dict") and hasattr(inputs, "columns"):
        return [dict(r) for r in inputs.to_dict(orient="records")]
    if isinstance(inputs, Mapping):
        return [dict(inputs)]
    if (isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes)
            and all(isinstance(r, Mapping) for r in inputs)):
        return [dict(r) for r in inputs]
    fail("inputs must be a metrics window (rows with step, train_loss, val_metric, lr and "
         "total_steps) or {'run_id': ..., 'total_steps': ...}; got "
         f"{type(inputs).__name__}")


def _first(rows: Sequence[Mapping[str, Any]], key: str) -> Any:
    for row in rows:
        value = row.get(key)
        if value is None or value == "" or (isinstance(value, float) and value != value):
            continue
        return value
    return None


def _positive_int(value: Any, what: str, minimum: int = 1) -> int:
    kind = "a positive" if minimum > 0 else "a non-negative"
    try:
        f = float(value)
    except (TypeError, ValueError):
        fail(f"{what} must be {kind} integer, got {value!r}")
    if not f.is_integer() or f < minimum:
        fail(f"{what} must be {kind} integer, got {value!r}")
    return int(f)


def _run_observations(client: Any, run_id: str, bundle: Any) -> tuple[list[Any], dict[str, Any]]:
    """A run's logged histories as observations (roles by the bundle's keys, else defaults)."""
    from mlflow.exceptions import MlflowException

    from tracker_sched.advising.serving import Observation
    from tracker_sched.integrations.mlflow.callback import map_roles, role_keys
    from tracker_sched.schema import MetricMap
    from tracker_sched.sources.mlflow_source import clean_history, parse_param

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        fail(f"run {run_id!r} not found in {client.tracking_uri}: {exc.message}")
    keys = sorted(run.data.metrics)
    roles = map_roles(keys, role_keys(bundle), MetricMap())
    if "lr" not in roles and "train_loss" not in roles:
        fail(f"run {run_id} has no metric usable by the advisor; it logged: "
             f"{', '.join(keys) or 'nothing'}")
    rows: dict[int, dict[str, float]] = {}
    for role, key in roles.items():
        points = [(int(m.step), int(m.timestamp), float(m.value))
                  for m in client.get_metric_history(run_id, key)]
        steps, values, _ = clean_history(points)
        for s, v in zip(steps, values, strict=True):
            rows.setdefault(s, {})[role] = v
    params = {k: parse_param(v) for k, v in run.data.params.items()}
    return [Observation(step=s, **rows[s]) for s in sorted(rows)], params


def predict_recommendation(entry: Mapping[str, Any], inputs: Any,
                           params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The work of ``predict`` for one deployment record; see the module docstring."""
    from tracker_sched.advising.serving import answer, observations_from_records, parse_request
    from tracker_sched.bundle.folder import Bundle

    params = dict(params or {})
    rows = _records(inputs)
    if not rows:
        fail("inputs are empty: send the run's logged steps or {'run_id': ...}")
    bundle = Bundle.load(inside_home(entry["bundle_path"], str(entry.get("name"))))
    total = params.get("total_steps", _first(rows, "total_steps"))
    log_back = str(params.get("log_back", _first(rows, "log_back")) or "").lower() in _TRUE
    run_id = params.get("run_id", _first(rows, "run_id"))
    params.setdefault("stop", _first(rows, "stop"))
    try:
        if run_id is not None:
            return _predict_run(entry, bundle, str(run_id), total, log_back, params)
        if log_back:
            fail("log_back needs a run_id: with a metrics window there is no run to write to")
        if "observations" in rows[0]:
            request = parse_request({**rows[0], **({"total_steps": total} if total else {})})
        else:
            if total is None:
                fail("total_steps is missing: add it as a column (or params['total_steps'])")
            payload: dict[str, Any] = {
                "observations": observations_from_records(rows),
                "total_steps": _positive_int(total, "total_steps"),
            }
            if params.get("step") is not None:
                payload["step"] = _positive_int(params["step"], "step", minimum=0)
            request = parse_request(payload)
        rec = answer(bundle, request)
        return _with_stop(_as_dict(rec, bundle), bundle, request, params.get("stop"))
    except TrackerSchedError as exc:
        if isinstance(exc, error_class()):
            raise
        fail(str(exc))


def _predict_run(entry: Mapping[str, Any], bundle: Any, run_id: str, total: Any,
                 log_back: bool, params: Mapping[str, Any]) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from tracker_sched.advising.serving import RecommendRequest, answer
    from tracker_sched.budget import STEP_KEYS, stated_budget
    from tracker_sched.integrations.mlflow.callback import log_recommendation

    client = MlflowClient(tracking_uri=params.get("tracking_uri") or entry.get("tracking_uri"))
    observations, run_params = _run_observations(client, run_id, bundle)
    if total is None:
        found = stated_budget(run_params)
        total = found.steps if found is not None else None
    if total is None:
        fail(f"total_steps is missing: pass it, or log one of the params "
             f"{', '.join(STEP_KEYS)} on run {run_id}")
    if not observations:
        fail(f"run {run_id} has logged no steps yet")
    request = RecommendRequest(observations=observations,
                               total_steps=_positive_int(total, "total_steps"))
    rec = answer(bundle, request)
    if log_back:
        log_recommendation(client, run_id, rec, bundle_version=entry.get("bundle_version"))
    return _with_stop(_as_dict(rec, bundle), bundle, request, params.get("stop"))


def _as_dict(rec: Any, bundle: Any) -> dict[str, Any]:
    """The recommendation as a dict, with ``mode_reason``: why the bundle follows its mode."""
    from tracker_sched.planning.control import mode_reason

    return {**rec.model_dump(mode="json"), "mode_reason": mode_reason(bundle)}


def _with_stop(answer: dict[str, Any], bundle: Any, request: Any, ask: Any) -> dict[str, Any]:
    """Add the stop decision (key ``stop``, a StopDecision as a dict) when one was asked for:
    ``stop`` as a param or input column, the served model's StopRequest (JSON or a dict)."""
    if ask is None or ask == "":
        return answer
    import json

    from tracker_sched.stores.mlflow_pyfunc import stop_answer

    raw = ask if isinstance(ask, str) else json.dumps(ask)
    return {**answer, "stop": json.loads(stop_answer(bundle, request, raw))}


# ---------------------------------------------------------------------------- MLflow's interface
def _build_client() -> type:
    from mlflow.deployments import BaseDeploymentClient, PredictionsResponse

    class TrackerSchedDeploymentClient(BaseDeploymentClient):
        """Deployments of tracker-sched bundles, recorded locally (see the module docstring).

        >>> # from mlflow.deployments import get_deploy_client
        >>> # client = get_deploy_client("tracker-sched")
        >>> # client.create_deployment("cnn", "models:/cnn-sched@champion")
        >>> # client.predict("cnn", {"run_id": run_id, "total_steps": 840},
        >>> #                params={"log_back": True})["lr_now"]
        """

        def create_deployment(self, name: str, model_uri: str, flavor: str | None = None,
                              config: Mapping[str, Any] | None = None,
                              endpoint: str | None = None) -> dict[str, Any]:
            check_flavor(flavor)
            check_name(name)
            if name in read_registry():
                fail(f"deployment {name!r} exists; use `mlflow deployments update` "
                     "or delete it first")
            record = cache_bundle(name, model_uri, (config or {}).get("tracking_uri"))
            registry = read_registry()
            registry[name] = record
            try:
                write_registry(registry)
            except BaseException:  # not recorded: do not leave its copy behind
                shutil.rmtree(record["bundle_path"], ignore_errors=True)
                raise
            return record

        def update_deployment(self, name: str, model_uri: str | None = None,
                              flavor: str | None = None,
                              config: Mapping[str, Any] | None = None,
                              endpoint: str | None = None) -> dict[str, Any]:
            check_flavor(flavor)
            old = registry_entry(name)
            tracking_uri = (config or {}).get("tracking_uri", old.get("tracking_uri"))
            record = cache_bundle(name, model_uri or old["model_uri"], tracking_uri)
            registry = read_registry()
            registry[name] = record
            write_registry(registry)
            return record

        def delete_deployment(self, name: str, config: Mapping[str, Any] | None = None,
                              endpoint: str | None = None) -> None:
            record = registry_entry(name)
            folder = inside_home(record["bundle_path"], name)  # before anything changes
            registry = read_registry()
            registry.pop(name, None)
            write_registry(registry)
            shutil.rmtree(folder, ignore_errors=True)

        def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
            return [dict(v) for _, v in sorted(read_registry().items())]

        def get_deployment(self, name: str, endpoint: str | None = None) -> dict[str, Any]:
            return dict(registry_entry(name))

        def predict(self, deployment_name: str | None = None, inputs: Any = None,
                    endpoint: str | None = None,
                    params: Mapping[str, Any] | None = None) -> Any:
            if not deployment_name:
                fail("name the deployment to predict with (--name)")
            rec = predict_recommendation(registry_entry(deployment_name), inputs, params)
            # A dict (the Recommendation) that MLflow's CLI can print with .to_json().
            return PredictionsResponse(rec)

    TrackerSchedDeploymentClient.__module__ = __name__
    return TrackerSchedDeploymentClient


def run_local(name: str, model_uri: str, flavor: str | None = None,
              config: Mapping[str, Any] | None = None) -> None:
    """Deployments of this target are local already: record (or refresh) the deployment."""
    check_flavor(flavor)
    check_name(name)
    registry = read_registry()
    registry[name] = cache_bundle(name, model_uri, (config or {}).get("tracking_uri"))
    write_registry(registry)


def target_help() -> str:
    return f"""\
tracker-sched: learning-rate recommendations from a registered tracker-sched bundle.

Deployments are local (no server): the model is downloaded once into
$TRACKER_SCHED_HOME/deployments/NAME (default ~/.tracker_sched) and recorded
in deployments.json; predict runs in the calling process.

  mlflow deployments create  -t {TARGET} --name NAME -m models:/MODEL@ALIAS
  mlflow deployments predict -t {TARGET} --name NAME --input-path INPUT.json
  mlflow deployments get|list|update|delete -t {TARGET} [--name NAME]

INPUT.json, one of:
  a metrics window, rows of the run's logged steps plus its budget:
    [{{"step": 0, "train_loss": 2.3, "lr": 0.001, "total_steps": 840}}, ...]
    (val_metric where logged; missing values may be null)
  a run to read from MLflow (MLFLOW_TRACKING_URI), optionally writing back:
    [{{"run_id": "RUN_ID", "total_steps": 840, "log_back": true}}]
    (total_steps defaults to the run's total_steps/max_steps param)

The answer is the Recommendation as JSON: status, reason, step, lr_now,
schedule (future steps and lrs), predicted_final, model_version. Add
"stop": {{"incumbent": 0.91}} to the first row (the value to beat; "rule" and
"below" as for the served model) to get "stop": the stop decision.
With log_back the run gets metric tracker_sched.lr_recommended (and a plan marker), artifact
tracker_sched/plan-step<N>.json (with its summary plan-step<N>.md) and tags
tracker_sched.status/reason.
"""


def __getattr__(name: str) -> Any:
    if name == "TrackerSchedDeploymentClient":
        cls = _build_client()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "TrackerSchedDeploymentClient"])
