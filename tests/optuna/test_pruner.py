"""The Optuna pruner with real Optuna: a study over synthetic configurations, pruned by the
bundle's forecast; pruned trials keep every value they reported."""

from __future__ import annotations

import logging

import optuna
import pytest

from tracker_sched.integrations.optuna import TrackerSchedPruner
from tracker_sched.integrations.optuna.pruner import ATTR_DECISION, trial_history
from tracker_sched.model.stop_odds import StopRule

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(sweep, pruner, configs):  # type: ignore[no-untyped-def]
    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("config", [c.name for c in configs])
        cfg = next(c for c in configs if c.name == name)
        run = sweep.run(cfg.family, cfg.peak_lr, seed=11)
        vals = dict(zip(run.val_metric.step, run.val_metric.value, strict=True))
        last = 0.0
        for step, loss, lr in zip(run.train_loss.step, run.train_loss.value, run.lr.value,
                                  strict=True):
            val = vals.get(step)
            pruner.report(trial, step, train_loss=loss, lr=lr, val=val)
            if val is not None:
                last = val
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return last

    return objective


def test_pruner_prunes_losers_and_keeps_the_best(stop_fit) -> None:
    fit, sweep = stop_fit
    best, worst = sweep.configs[0], sweep.configs[-6:]
    order = [best, *worst]  # the best finishes first: every later trial chases it
    pruner = TrackerSchedPruner(fit.bundle, sweep.total_steps,
                                rule=StopRule(threshold=0.05, patience=2))
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.GridSampler(
                                    {"config": [c.name for c in order]}))
    for c in order:
        study.enqueue_trial({"config": c.name})
    study.optimize(_objective(sweep, pruner, order), n_trials=len(order))

    trials = study.get_trials()
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    assert trials[0].params["config"] == best.name
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) >= 4, [(t.params, t.state) for t in trials]
    for t in pruned:
        decision = t.user_attrs[ATTR_DECISION]
        assert decision["stop"] and decision["p_beat"] < 0.05
        assert decision["incumbent"] == pytest.approx(trials[0].value)
        # Everything reported before the prune is kept, in the study and in the pruner.
        assert t.last_step is not None and t.last_step < sweep.total_steps
        recorded = trial_history(pruner, t.number)
        vals = recorded["val_metric"]
        assert dict(zip(vals["step"], vals["value"], strict=True)) == t.intermediate_values
    assert study.best_trial.number == 0


def test_pruner_never_raises_into_should_prune(stop_fit, caplog) -> None:
    fit, sweep = stop_fit
    pruner = TrackerSchedPruner(fit.bundle, sweep.total_steps)
    # A study in the wrong direction: a warning, never a prune, never an error.
    study = optuna.create_study(direction="minimize", pruner=pruner)
    study.enqueue_trial({"config": sweep.configs[-1].name})
    study.optimize(_objective(sweep, pruner, sweep.configs), n_trials=2)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert any("maximised" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.WARNING)

    # Trials reported through trial.report only: never pruned, and the log says how to fix it.
    caplog.clear()
    lone = TrackerSchedPruner(fit.bundle, sweep.total_steps, target=0.99)
    study = optuna.create_study(direction="maximize", pruner=lone)

    def only_val(trial: optuna.Trial) -> float:
        run = sweep.run(sweep.configs[-1].family, sweep.configs[-1].peak_lr, 0)
        for s, v in zip(run.val_metric.step, run.val_metric.value, strict=True):
            trial.report(v, s)
            assert not trial.should_prune()
        return v

    study.optimize(only_val, n_trials=1)
    assert "TrackerSchedPruner.report" in caplog.text
