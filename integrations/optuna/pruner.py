"""``TrackerSchedPruner``: an Optuna pruner driven by the bundle's forecast of the final metric.

::

    import optuna
    from tracker_sched.integrations.optuna import TrackerSchedPruner

    pruner = TrackerSchedPruner("bundle/", total_steps=840)
    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        for step in range(840):
            loss = train_step(lr)
            val = evaluate() if step % 20 == 0 else None
            pruner.report(trial, step, train_loss=loss, lr=lr, val=val)  # calls trial.report
            if val is not None and trial.should_prune():
                raise optuna.TrialPruned()
        return val
    study = optuna.create_study(direction="maximize", pruner=pruner)

The forecast needs the trial's train loss and lr as well as the validation metric that
``trial.report`` carries: :meth:`TrackerSchedPruner.report` records them (in this process:
the process that runs a trial is the one that asks ``should_prune``). A trial reported only
through ``trial.report`` is never pruned (the reason is logged once). The incumbent is the
best value of the study's completed trials (pruned ones never count), or ``target``.
Optuna is imported with this module: ``pip install optuna``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tracker_sched.advising.stopping import Stopper
from tracker_sched.bundle.folder import Bundle
from tracker_sched.errors import InputError, MissingDependencyError
from tracker_sched.model.stop_odds import StopDecision, StopRule
from tracker_sched.planning.history import LiveHistory

try:
    import optuna
    from optuna.pruners import BasePruner
    from optuna.study import StudyDirection
    from optuna.trial import FrozenTrial, TrialState
except ImportError as exc:  # pragma: no cover - exercised only without optuna
    raise MissingDependencyError("optuna", "optuna") from exc

log = logging.getLogger(__name__)

ATTR_DECISION = "tracker_sched.stop"  # user attr of a pruned trial: the decision as a dict


class TrackerSchedPruner(BasePruner):
    """Prune a trial once its odds of beating the best completed trial stay below a threshold.

    Args:
        bundle: a fitted bundle, its folder, or any bundle URI (``mlflow:models:/...``).
        total_steps: every trial's planned budget, in the steps given to ``report``.
        rule: threshold, grace period, patience (:class:`~tracker_sched.model.stop_odds.StopRule`).
        target: a fixed value to beat instead of the best completed trial's.
        n_startup_trials: completed trials needed before any pruning.

    Never raises into ``should_prune``: a failure is "do not prune", logged once.
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike[str],
        total_steps: int,
        *,
        rule: StopRule | None = None,
        target: float | None = None,
        n_startup_trials: int = 1,
    ) -> None:
        if not isinstance(bundle, Bundle):
            from tracker_sched.stores import load_bundle

            bundle = load_bundle(Path(bundle) if isinstance(bundle, os.PathLike) else bundle)
        self.bundle = bundle
        self.total_steps = total_steps
        self.rule = rule or StopRule()
        self.target = target
        self.n_startup_trials = max(0, n_startup_trials)
        self.direction = bundle.manifest.metrics.direction
        self._series: dict[int, dict[str, tuple[list[int], list[float]]]] = {}
        self._stoppers: dict[int, Stopper] = {}
        self._lock = threading.Lock()  # n_jobs > 1 runs trials on threads of one process
        self._warned: set[str] = set()
        self.decisions: dict[int, StopDecision] = {}  # the latest per trial number
        Stopper(bundle, total_steps, self.rule)  # a bad budget fails here, not in a trial

    # ------------------------------------------------------------------ the training side
    def report(self, trial: optuna.Trial, step: int, *, train_loss: float | None = None,
               lr: float | None = None, val: float | None = None) -> None:
        """Record the trial's metrics at ``step``; ``val`` also goes to ``trial.report``.

        Raises only what ``trial.report`` raises for ``val`` (e.g. a repeated step warns).
        """
        with self._lock:
            series = self._series.setdefault(trial.number, {
                "train_loss": ([], []), "lr": ([], []), "val_metric": ([], [])})
            for key, value in (("train_loss", train_loss), ("lr", lr), ("val_metric", val)):
                if value is None:
                    continue
                steps, values = series[key]
                if steps and step <= steps[-1]:
                    continue
                steps.append(int(step))
                values.append(float(value))
        if val is not None:
            trial.report(float(val), int(step))

    # ------------------------------------------------------------------ optuna's side
    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        try:
            decision = self._decide(study, trial)
        except Exception as exc:  # should_prune must never fail because of us
            self._warn(f"pruning decision failed, not pruning: {type(exc).__name__}: {exc}")
            return False
        with self._lock:
            self.decisions[trial.number] = decision
        if decision.stop:
            try:
                study._storage.set_trial_user_attr(  # the trial's own record says why
                    trial._trial_id, ATTR_DECISION, decision.model_dump(mode="json"))
            except Exception as exc:
                self._warn(f"could not record the decision on trial {trial.number}: {exc}")
        return decision.stop

    def incumbent(self, study: optuna.Study) -> float | None:
        """The value to beat: ``target``, else the best completed trial's (None: none yet)."""
        if self.target is not None:
            return self.target
        done = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and np.isfinite(t.value)]
        if len(done) < max(1, self.n_startup_trials):
            return None
        return max(done) if self.direction == "max" else min(done)

    def _decide(self, study: optuna.Study, trial: FrozenTrial) -> StopDecision:
        want = StudyDirection.MAXIMIZE if self.direction == "max" else StudyDirection.MINIMIZE
        if study.direction != want:
            raise InputError(f"the study {study.direction.name.lower()}s, the bundle's metric "
                             f"is to be {'maximised' if self.direction == 'max' else 'minimised'}")
        step = trial.last_step
        if step is None:
            return StopDecision(reason="nothing reported yet")
        with self._lock:
            series = self._series.get(trial.number)
            stopper = self._stoppers.setdefault(
                trial.number, Stopper(self.bundle, self.total_steps, self.rule))
            if series is None or not series["train_loss"][0]:
                self._warn("a trial reported no train loss or lr: report through "
                           "TrackerSchedPruner.report(trial, step, train_loss=, lr=, val=) to "
                           "let it be pruned")
                return StopDecision(reason="no train loss or lr recorded for this trial")
            history = LiveHistory(**{key: (np.asarray(s, dtype=np.int64),
                                           np.asarray(v, dtype=np.float64))
                                     for key, (s, v) in series.items()})
        return stopper.decide(history, int(step), self.incumbent(study))

    def _warn(self, reason: str) -> None:
        key = reason[:80]
        if key not in self._warned:
            self._warned.add(key)
            log.warning("tracker-sched: %s", reason)


def trial_history(pruner: TrackerSchedPruner, number: int) -> dict[str, Any]:
    """What the pruner recorded for trial ``number`` (steps and values per metric)."""
    with pruner._lock:
        series = pruner._series.get(number, {})
        return {key: {"step": list(s), "value": list(v)} for key, (s, v) in series.items()}


__all__ = ["ATTR_DECISION", "TrackerSchedPruner", "trial_history"]
