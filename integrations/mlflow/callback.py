"""The live MLflow callback: the advisor inside a run, its recommendations written back.

::

    import mlflow
    from tracker_sched.integrations.mlflow import MlflowAdvisorCallback

    with mlflow.start_run():
        with MlflowAdvisorCallback("mlflow:models:/cnn-sched@champion", total_steps=840,
                                   optimizer=opt) as cb:
            for step in range(840):
                loss = train_step()
                cb.log_metrics({"train_loss": loss, "val_acc": acc}, step)  # logs and advises

What goes back to the run (:mod:`tracker_sched.integrations.mlflow.writer`):
``tracker_sched.lr_recommended`` (the advisor's lr) and ``tracker_sched.lr_applied``
(the lr the run trained with at that step) at each step, ``tracker_sched.plan`` and
``tracker_sched.predicted_final`` at each new plan, the plan as
``tracker_sched/plan-step<N>.json`` (for programs) with ``plan-step<N>.md`` beside it (for a
person), and tags ``tracker_sched.bundle_version``,
``tracker_sched.status``, ``tracker_sched.reason``.

With the opt-in stop (``stop=StopRule(...)``): once the odds of beating the incumbent stay
low, :attr:`MlflowAdvisorCallback.should_stop` turns True (the loop checks it and ends)
and the run is tagged ``tracker_sched.stopped=true`` with the odds
(``tracker_sched.stop_p_beat``, ``.stop_step``, ``.stop_incumbent``, ``.stop_reason``).
Nothing logged is removed: the run simply ends early.

Training never waits on the tracker, and a tracker error is caught, logged once
and counted in ``tracker_errors``; the lr keeps coming from the advisor. mlflow
is imported only when used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tracker_sched.advising.following import AdvisorLike
from tracker_sched.bundle.folder import Bundle
from tracker_sched.errors import InputError
from tracker_sched.model.stop_odds import Incumbent, StopDecision, StopRule, StopWatch
from tracker_sched.schema import ROLES, MetricMap, Recommendation
from tracker_sched.util.redact import redact_text

from .writer import (
    LR_APPLIED,
    LR_METRIC_V0,
    LR_RECOMMENDED,
    PLAN_ARTIFACT,
    TAG_BUNDLE,
    TAG_BUNDLE_VERSION,
    TAG_MAX_CHARS,
    TAG_REASON,
    TAG_STATUS,
    MlflowWriter,
    log_recommendation,
    plan_json,
    recommendation_tags,
    require_mlflow,
)

if TYPE_CHECKING:
    from torch.optim import Optimizer

log = logging.getLogger(__name__)

LR_METRIC = LR_RECOMMENDED  # the name tests and callers used before the writer module
TAG_STOPPED = "tracker_sched.stopped"
TAG_MODE = "tracker_sched.mode"  # the planner mode the advisor follows (auto resolved)
TAG_MODE_REASON = "tracker_sched.mode_reason"

__all__ = [
    "LR_APPLIED",
    "LR_METRIC",
    "LR_METRIC_V0",
    "LR_RECOMMENDED",
    "PLAN_ARTIFACT",
    "TAG_BUNDLE",
    "TAG_BUNDLE_VERSION",
    "TAG_MAX_CHARS",
    "TAG_REASON",
    "TAG_STATUS",
    "TAG_STOPPED",
    "AdvisorLike",
    "MlflowAdvisorCallback",
    "log_recommendation",
    "map_roles",
    "plan_json",
    "recommendation_tags",
    "require_mlflow",
    "role_keys",
]


def role_keys(bundle: Bundle | None) -> dict[str, str]:
    """The metric keys the bundle's sweep used per role (the first choice when mapping)."""
    if bundle is None:
        return {}
    roles = bundle.manifest.metrics
    out = {"val_metric": roles.val_metric}
    if roles.train_loss:
        out["train_loss"] = roles.train_loss
    if roles.lr:
        out["lr"] = roles.lr
    return out


def map_roles(keys: list[str], preferred: Mapping[str, str],
              metric_map: MetricMap) -> dict[str, str]:
    """role -> key among ``keys``: the bundle's own key if logged, else the map's choice.

    Our own write-back keys (``tracker_sched.*``) never play a role.
    """
    keys = [k for k in keys if not k.startswith("tracker_sched.")]
    out: dict[str, str] = {}
    for role in ROLES:
        key = preferred.get(role)
        if key is None or key not in keys:
            key = metric_map.key_for(role, keys)
        if key is not None:
            out[role] = key
    return out


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def stop_tags(decision: StopDecision, step: int) -> dict[str, str]:
    """The tags that mark a run stopped by tracker-sched, with its odds."""
    return {TAG_STOPPED: "true", "tracker_sched.stop_step": str(step),
            "tracker_sched.stop_p_beat": _num(decision.p_beat),
            "tracker_sched.stop_incumbent": _num(decision.incumbent),
            "tracker_sched.stop_reason": redact_text(decision.reason)[:TAG_MAX_CHARS]}


class MlflowAdvisorCallback:
    """Advise a live MLflow run and write each recommendation back to it.

    Args:
        source: a bundle (a :class:`~tracker_sched.bundle.Bundle`, a folder, or
            any bundle URI such as ``mlflow:models:/NAME@ALIAS``) or a ready
            advisor (anything with ``observe``/``lr``/``plan``, e.g. a remote one).
        total_steps: the run's planned budget (needed with a bundle).
        run_id: the run to write to; default the active run (``mlflow.start_run``).
        tracking_uri: default MLflow's own resolution (the active run's store).
        optimizer: when given, every param group's lr is set after each step,
            keeping the groups' ratios to the first group.
        metric_map: how the script's metric names map to roles, when the
            bundle's own names and the defaults do not fit.
        queue_size: plan and tag writes waiting for the tracker at most; more are dropped.
        flush_timeout_s: how long ``close()`` waits for the tracker.
        fallback_dir: where plans that could not be written to the tracker are
            saved instead (``plan-step<N>.json`` and ``.md``), so that a tracker outage
            loses nothing.
        stop: opt in to stop decisions with this rule (default None: never stops).
        incumbent: the validation metric to beat (as logged), or a function returning it
            (e.g. the best finished run of the sweep so far); None never stops.
        advisor_options: passed to :class:`~tracker_sched.advisor.Advisor`
            (``replan_every``, ``max_replans``, ``config``) when built from a bundle.
    """

    def __init__(
        self,
        source: Bundle | AdvisorLike | str | os.PathLike[str],
        total_steps: int | None = None,
        *,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        optimizer: Optimizer | None = None,
        metric_map: MetricMap | None = None,
        queue_size: int = 64,
        flush_timeout_s: float = 10.0,
        fallback_dir: str | os.PathLike[str] | None = None,
        stop: StopRule | None = None,
        incumbent: Incumbent = None,
        **advisor_options: Any,
    ) -> None:
        from tracker_sched.advising.advisor import Advisor
        from tracker_sched.integrations.mlflow import context

        bundle_uri: str | None = None
        if isinstance(source, str | os.PathLike):
            from tracker_sched.stores import load_bundle

            bundle_uri = str(source)
            source = load_bundle(Path(source) if isinstance(source, os.PathLike) else source)
        if isinstance(source, Bundle):
            if total_steps is None:
                raise InputError("total_steps is required with a bundle: the run's planned "
                                 "number of steps, as for a cosine schedule")
            self.advisor: AdvisorLike = Advisor(source, total_steps, **advisor_options)
        elif isinstance(source, AdvisorLike):
            self.advisor = source
        else:
            raise InputError(f"expected a bundle, a bundle URI or an advisor, got "
                             f"{type(source).__name__}")
        self.bundle: Bundle | None = getattr(self.advisor, "bundle", None)
        self.bundle_version = self.bundle.manifest.created_at if self.bundle else None

        mlflow = require_mlflow()
        from mlflow.tracking import MlflowClient

        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise InputError("no active MLflow run: call mlflow.start_run() first "
                                 "or pass run_id=")
            run_id = str(active.info.run_id)
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.writer = MlflowWriter(self.client, run_id, queue_size=queue_size,
                                   flush_timeout_s=flush_timeout_s, fallback_dir=fallback_dir)
        self.optimizer = optimizer
        self._ratios = self._group_ratios(optimizer)
        self._preferred = role_keys(self.bundle)
        self._metric_map = metric_map or MetricMap()
        self._roles_for: dict[frozenset[str], dict[str, str]] = {}
        self.last_lr: float | None = None
        self.stop_watch = StopWatch(stop, incumbent) if stop is not None else None

        # Which planner advises the run and why, once (auto: the bundle's fit-time decision).
        mode = getattr(self.advisor, "mode", None) or self.advisor.plan.mode
        why = getattr(self.advisor, "mode_reason", None)
        self.writer.bundle_tags(bundle_uri, self.bundle_version, extra={
            TAG_MODE: str(mode or ""),
            TAG_MODE_REASON: redact_text(str(why or ""))[:TAG_MAX_CHARS]})
        self.writer.publish(self.advisor.plan)
        context.register_callback(self, self.bundle_version)

    # ------------------------------------------------------------------ counters
    @property
    def tracker_errors(self) -> int:
        """Writes that MLflow refused or failed (each logged once per kind)."""
        return self.writer.tracker_errors

    @property
    def dropped(self) -> int:
        """Plan and tag writes dropped because the tracker was behind."""
        return self.writer.dropped

    @property
    def last_error(self) -> str | None:
        """The latest tracker error, if any."""
        return self.writer.last_error

    @property
    def flush_timeout_s(self) -> float:
        return self.writer.flush_timeout_s

    @property
    def fallback_dir(self) -> Path | None:
        return self.writer.fallback_dir

    # ------------------------------------------------------------------ the training side
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> float:
        """Log the script's metrics to the run (asynchronously) and advise on them.

        Names are mapped to roles by the bundle's own metric keys, else the
        defaults (``train_loss``/``loss``, ``val_acc``/``eval_loss``...,
        ``lr``/``learning_rate``). Returns the lr to use from now on. Never raises:
        a value that is not a number is skipped with a warning.
        """
        values: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                values[str(key)] = float(value)
            except (TypeError, ValueError):  # skipped, not raised: training goes on
                self.writer.warn_once(f"metric {key}", f"metric {key!r}={value!r} is not a "
                                                       "number; not logged")
        if values:
            self.writer.metrics(values, step)
        roles = self._roles(values)
        return self.on_step(step, **{role: values[key] for role, key in roles.items()})

    def on_step(self, step: int, *, train_loss: float | None = None,
                val_metric: float | None = None, lr: float | None = None) -> float:
        """Feed the advisor what the script logged itself; returns (and applies) the lr.

        ``lr`` defaults to the optimizer's current lr; it is logged as
        ``tracker_sched.lr_applied`` (the lr the run trained with at ``step``), the
        advisor's answer as ``tracker_sched.lr_recommended``. Never raises.
        """
        if lr is None and self.optimizer is not None:
            lr = float(self.optimizer.param_groups[0]["lr"])
        try:
            rec = self.advisor.observe(step, train_loss=train_loss, val_metric=val_metric, lr=lr)
            new_lr = float(self.advisor.lr(step))
        except Exception as exc:  # an advisor of ours never raises; a foreign one might
            self.writer.warn_once("advisor", f"advisor failed, keeping the lr: {exc}")
            return self.last_lr if self.last_lr is not None else (lr or 0.0)
        self.last_lr = new_lr
        self._apply(new_lr)
        values = {LR_RECOMMENDED: new_lr}
        if lr is not None:
            values[LR_APPLIED] = float(lr)
        self.writer.metrics(values, step)
        self.writer.publish(rec)
        if self.stop_watch is not None and val_metric is not None:
            decision = self.stop_watch.check(self.advisor, step)
            if decision is not None:
                self.writer.set_tags(stop_tags(decision, step))
        return new_lr

    @property
    def plan(self) -> Recommendation:
        return self.advisor.plan

    @property
    def should_stop(self) -> bool:
        """True once the opt-in stop decided the run should end (the loop checks it)."""
        return self.stop_watch is not None and self.stop_watch.should_stop

    # ------------------------------------------------------------------ closing
    def close(self, timeout_s: float | None = None) -> bool:
        """Flush plan/tag writes and asynchronous metrics, waiting at most ``timeout_s``.

        Returns True when everything reached the tracker (or failed and was
        counted) in time. Never raises.
        """
        from tracker_sched.integrations.mlflow import context

        context.unregister_callback(self)
        return self.writer.close(timeout_s)

    def __enter__(self) -> MlflowAdvisorCallback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _group_ratios(optimizer: Optimizer | None) -> list[float]:
        if optimizer is None:
            return []
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        base = lrs[0] or 1.0
        return [lr / base for lr in lrs]

    def _apply(self, lr: float) -> None:
        if self.optimizer is None:
            return
        for group, ratio in zip(self.optimizer.param_groups, self._ratios, strict=False):
            group["lr"] = lr * ratio

    def _roles(self, values: Mapping[str, float]) -> dict[str, str]:
        names = frozenset(values)
        roles = self._roles_for.get(names)
        if roles is None:
            roles = map_roles(sorted(names), self._preferred, self._metric_map)
            self._roles_for[names] = roles
        return roles
