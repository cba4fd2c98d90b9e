"""``TrackerSchedScheduler``: a Ray Tune trial scheduler that stops trials unlikely to win,
and :func:`with_advisor`, the advisor inside a trainable.

::

    from ray import tune
    from tracker_sched.integrations.ray import TrackerSchedScheduler, with_advisor

    def train(config, advisor):                  # advisor: a tracker_sched Advisor
        for step in range(1, 841):
            loss = train_step(lr=advisor.lr(step))
            metrics = {"step": step, "train_loss": loss, "lr": advisor.lr(step)}
            if step % 20 == 0:
                metrics["val_acc"] = evaluate()
            advisor.observe(step, train_loss=loss, lr=metrics["lr"],
                            val_metric=metrics.get("val_acc"))
            tune.report(metrics)

    scheduler = TrackerSchedScheduler(bundle, total_steps=840, metric="val_acc", mode="max")
    tuner = tune.Tuner(with_advisor(train, bundle, total_steps=840),
                       tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=16),
                       param_space={...})
    tuner.fit()                                  # ray.init(address="ray://head:10001") first

The scheduler lives in the driver (Tune's controller); the bundle travels to the trainables
through Ray's object store (:func:`with_advisor`), so workers on other machines need no
shared folder. The incumbent is the best final ``metric`` of trials that reached
``total_steps``; trials the scheduler stopped never count. Ray is imported with this module:
``pip install "ray[tune]"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from tracker_sched.advising.stopping import Stopper
from tracker_sched.bundle.folder import Bundle
from tracker_sched.errors import InputError, MissingDependencyError
from tracker_sched.model.stop_odds import StopDecision, StopRule
from tracker_sched.planning.history import LiveHistory

try:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
except ImportError as exc:  # pragma: no cover - exercised only without ray
    raise MissingDependencyError("ray[tune]", "ray") from exc

log = logging.getLogger(__name__)

SERIES = ("train_loss", "lr", "val_metric")


class TrackerSchedScheduler(FIFOScheduler):
    """Run trials first in, first out; stop one once its odds of beating the incumbent stay low.

    Args:
        bundle: a fitted bundle with a stop calibration.
        total_steps: every trial's planned budget, in units of ``time_attr``.
        metric: the reported validation metric (the bundle's ``val_metric`` role).
        mode: ``"max"`` or ``"min"``; must match the bundle's direction.
        rule: threshold, grace period, patience.
        time_attr: the reported step (default Tune's ``training_iteration``).
        loss_attr, lr_attr: the reported train loss and lr (the forecast needs both).
        target: a fixed value to beat instead of the best finished trial's.

    A failure inside a decision is "continue", logged once: Tune never sees an error of ours.
    """

    def __init__(
        self,
        bundle: Bundle,
        total_steps: int,
        *,
        metric: str,
        mode: str,
        rule: StopRule | None = None,
        time_attr: str = "training_iteration",
        loss_attr: str = "train_loss",
        lr_attr: str = "lr",
        target: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if mode not in ("max", "min"):
            raise InputError(f"mode must be 'max' or 'min', got {mode!r}")
        if mode != bundle.manifest.metrics.direction:
            raise InputError(f"mode {mode!r} does not match the bundle's metric direction "
                             f"{bundle.manifest.metrics.direction!r}")
        self.bundle = bundle
        self.total_steps = int(total_steps)
        self._metric = metric  # Tune's own attribute (TrialScheduler.metric)
        self.metric_key = metric
        self.mode = mode
        self.rule = rule or StopRule()
        self.time_attr, self.loss_attr, self.lr_attr = time_attr, loss_attr, lr_attr
        self.target = target
        Stopper(bundle, self.total_steps, self.rule)  # a bad budget fails here, not in Tune
        self._series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
        self._stoppers: dict[str, Stopper] = {}
        self.finals: dict[str, float] = {}  # trial id -> final metric, trials that finished
        self.stopped: dict[str, StopDecision] = {}  # trial id -> the decision that stopped it
        self._warned: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # Our metric and mode are fixed by the bundle; Tune's own must agree or be unset.
        return (metric in (None, self.metric_key)) and (mode in (None, self.mode))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        try:
            decision = self._decide(str(trial.trial_id), result)
        except Exception as exc:  # Tune must never see an error of ours
            self._warn(f"stop decision failed, continuing: {type(exc).__name__}: {exc}")
            return str(TrialScheduler.CONTINUE)
        if decision is not None and decision.stop:
            self.stopped[str(trial.trial_id)] = decision
            return str(TrialScheduler.STOP)
        return str(TrialScheduler.CONTINUE)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        trial_id = str(trial.trial_id)
        try:
            step, value = result.get(self.time_attr), result.get(self.metric_key)
            if (trial_id not in self.stopped and step is not None and value is not None
                    and float(step) >= self.total_steps and math.isfinite(float(value))):
                self.finals[trial_id] = float(value)
        except Exception as exc:
            self._warn(f"could not read trial {trial_id}'s final result: {exc}")
        self._stoppers.pop(trial_id, None)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        # A failed trial is retried from the start (or given up): its history starts again,
        # and a decision about its earlier attempt no longer describes it.
        trial_id = str(trial.trial_id)
        self._series.pop(trial_id, None)
        self._stoppers.pop(trial_id, None)
        self.stopped.pop(trial_id, None)

    def incumbent(self) -> float | None:
        """The value to beat: ``target``, else the best final of the trials that finished."""
        if self.target is not None:
            return self.target
        if not self.finals:
            return None
        values = self.finals.values()
        return max(values) if self.mode == "max" else min(values)

    def debug_string(self) -> str:
        return (f"tracker-sched: {len(self.stopped)} trials stopped, {len(self.finals)} "
                f"finished, incumbent {self.incumbent()}")

    def _decide(self, trial_id: str, result: dict[str, Any]) -> StopDecision | None:
        step = result.get(self.time_attr)
        if step is None:
            self._warn(f"results carry no {self.time_attr!r}: set time_attr to the step key")
            return None
        step = int(step)
        series = self._series.setdefault(trial_id, {k: ([], []) for k in SERIES})
        if series["train_loss"][0] and step < series["train_loss"][0][-1]:
            series = self._series[trial_id] = {k: ([], []) for k in SERIES}  # restarted
            self._stoppers.pop(trial_id, None)
        for key, attr in (("train_loss", self.loss_attr), ("lr", self.lr_attr),
                          ("val_metric", self.metric_key)):
            value = result.get(attr)
            steps, values = series[key]
            if value is None or (steps and step <= steps[-1]):
                continue
            steps.append(step)
            values.append(float(value))
        if result.get(self.metric_key) is None:
            return None  # decide when the validation metric moves
        stopper = self._stoppers.setdefault(trial_id, Stopper(self.bundle, self.total_steps,
                                                              self.rule))
        history = LiveHistory(**{key: (np.asarray(s, dtype=np.int64),
                                       np.asarray(v, dtype=np.float64))
                                 for key, (s, v) in series.items()})
        return stopper.decide(history, step, self.incumbent())

    def _warn(self, reason: str) -> None:
        key = reason[:80]
        if key not in self._warned:
            self._warned.add(key)
            log.warning("tracker-sched: %s", reason)


def with_advisor(
    trainable: Callable[[dict[str, Any], Any], Any],
    bundle: Bundle,
    total_steps: int,
    **advisor_options: Any,
) -> Any:
    """A Tune function trainable ``trainable(config, advisor)`` given a fresh
    :class:`~tracker_sched.advisor.Advisor` per trial. The bundle goes through Ray's object
    store once (``tune.with_parameters``): no shared folder is needed on other nodes.

    Args:
        trainable: the training function; it sets its lr from ``advisor.lr(step)``.
        bundle: the fitted bundle.
        total_steps: every trial's budget (in the steps the trainable observes).
        advisor_options: passed to the Advisor (``replan_every``, ``max_replans``...).
    """

    def run(config: dict[str, Any], tracker_sched_bundle: Bundle | None = None) -> Any:
        from tracker_sched.advisor import Advisor

        assert tracker_sched_bundle is not None
        return trainable(config, Advisor(tracker_sched_bundle, total_steps, **advisor_options))

    run.__name__ = getattr(trainable, "__name__", "trainable")
    return tune.with_parameters(run, tracker_sched_bundle=bundle)


__all__ = ["TrackerSchedScheduler", "with_advisor"]
