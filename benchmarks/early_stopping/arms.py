"""The stopping rules, replayed on one ordering of a pruned sweep.

Trials run one after another in the given order (the sequential setting Optuna's pruners
and a single W&B agent share). Each arm returns the steps each run trained and which runs
finished; :func:`score` turns that into the compute fraction and the regret.

- ``none``: every run trains to the end.
- tracker-sched: the bundle's calibrated odds that the run's final beats the best finished
  run's (``StopRule``: threshold, patience, margin), the same ``p_beat`` and ``judge`` as the
  product; never before the context window is full, no incumbent until a run finishes.
- Optuna's ``MedianPruner``, ``SuccessiveHalvingPruner``, ``HyperbandPruner``: run by Optuna
  itself, each trial reporting the run's validation values at its logged steps.
- W&B Hyperband (``early_terminate: {type: hyperband, min_iter, eta}``), as the ``sweeps``
  package computes it: iterations count the logged values of the metric; bands at
  ``min_iter * eta**k``; at a band a run stops when its value there is worse than the value
  ranked ``int(n / eta)`` (best first) among the ``n`` runs that reached the band.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import optuna

from benchmarks.early_stopping.sweeps import Replay
from tracker_sched.model.stop_odds import StopRule, student_t_cdf

optuna.logging.set_verbosity(optuna.logging.ERROR)


@dataclass(frozen=True)
class Outcome:
    steps: np.ndarray  # (runs,) steps trained, in run index order
    finished: np.ndarray  # (runs,) bool


def score(rep: Replay, out: Outcome) -> tuple[float, float]:
    """(compute fraction, regret in points) of one replay: the steps trained over those of
    training every run to its end (the budget, or where it crashed)."""
    sign = 1.0 if rep.direction == "max" else -1.0
    best_all = float(np.max(sign * rep.final)) * sign
    found = rep.final[out.finished]
    best = float(np.max(sign * found)) * sign if found.size else math.nan
    regret = (sign * (best_all - best)) * rep.points(best_all) if found.size else math.inf
    # A run that crashed ended at its last report whatever the rule: no arm pays past it.
    ends = np.asarray([min(rep.total_steps, int(v[-1])) for v in rep.val_steps])
    return float(np.minimum(out.steps, ends).sum() / ends.sum()), max(0.0, regret)


def none_arm(rep: Replay, order: np.ndarray) -> Outcome:
    return Outcome(np.full(rep.runs, rep.total_steps), np.ones(rep.runs, dtype=bool))


@functools.lru_cache(maxsize=256)
def _z_below(threshold: float, df: int | None) -> float:
    """The standardised distance whose odds are ``threshold``: ``p < threshold`` exactly
    when ``z < _z_below(threshold, df)`` (the distribution function is increasing), so the
    replay compares numbers instead of evaluating the calibration's tail at every point."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < threshold:
            lo = mid
        else:
            hi = mid
    return lo


def tracker_sched_arm(rep: Replay, order: np.ndarray, rule: StopRule) -> Outcome:
    cal = rep.stopping
    assert cal is not None
    buckets = [cal.bucket(float(t)) for t in rep.tau]
    bias = np.asarray([b.bias for b in buckets])
    sigma = np.sqrt(np.asarray([b.floor for b in buckets]) ** 2
                    + (np.asarray([b.scale for b in buckets]) * rep.spread) ** 2)  # (runs, K)
    sign = 1.0 if rep.direction == "max" else -1.0
    steps = np.full(rep.runs, rep.total_steps)
    finished = np.zeros(rep.runs, dtype=bool)
    inc: float | None = None
    allowed = rep.decide_steps >= rule.grace * rep.total_steps
    for i in order:
        if inc is not None:
            bar = cal.to_transformed(rule.bar(inc, rep.direction))
            below = sign * (rep.mean[i] + bias - bar) / sigma[i] < _z_below(rule.threshold,
                                                                              cal.df)
            run = np.zeros(below.size, dtype=np.int64)  # consecutive decisions below
            count = 0
            for k, b in enumerate(below):
                count = count + 1 if b else 0
                run[k] = count
            stop = np.nonzero((run >= rule.patience) & allowed)[0]
            if stop.size:
                steps[i] = rep.decide_steps[stop[0]]
                continue
        finished[i] = True
        f = float(rep.final[i])
        inc = f if inc is None else (max(inc, f) if sign > 0 else min(inc, f))
    return Outcome(steps, finished)


def wandb_hyperband_arm(rep: Replay, order: np.ndarray, min_iter: int, eta: int) -> Outcome:
    sign = 1.0 if rep.direction == "max" else -1.0
    bands = []
    b = float(min_iter)
    while b < max(v.size for v in rep.val_values):
        bands.append(int(b))
        b *= eta
    seen: dict[int, list[float]] = {band: [] for band in bands}  # values at each band
    steps = np.full(rep.runs, rep.total_steps)
    finished = np.zeros(rep.runs, dtype=bool)
    for i in order:
        losses = -sign * rep.val_values[i]  # smaller is better, as W&B compares
        stopped = False
        for band in bands:
            if band >= losses.size:
                break
            seen[band].append(float(losses[band]))
            ranked = sorted(seen[band])
            threshold = ranked[int(len(ranked) / eta)]
            if losses[band] > threshold:
                steps[i] = int(rep.val_steps[i][band])
                stopped = True
                break
        finished[i] = not stopped
    return Outcome(steps, finished)


def optuna_arm(rep: Replay, order: np.ndarray,
               make: Callable[[], optuna.pruners.BasePruner]) -> Outcome:
    direction: Literal["maximize", "minimize"] = (
        "maximize" if rep.direction == "max" else "minimize")
    study = optuna.create_study(direction=direction, pruner=make(),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    steps = np.full(rep.runs, rep.total_steps)
    finished = np.zeros(rep.runs, dtype=bool)
    for i in order:
        trial = study.ask()
        pruned = False
        for s, v in zip(rep.val_steps[i], rep.val_values[i], strict=True):
            trial.report(float(v), int(s))
            if trial.should_prune():
                steps[i] = int(s)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned = True
                break
        if not pruned:
            study.tell(trial, float(rep.final[i]))
            finished[i] = True
    return Outcome(steps, finished)


def optuna_pruners(total_steps: int) -> dict[str, Callable[[], Any]]:
    """Optuna's pruners: their defaults, and one more patient setting each."""
    p = optuna.pruners
    return {
        "optuna-median": lambda: p.MedianPruner(),
        "optuna-median-warmup": lambda: p.MedianPruner(n_startup_trials=5,
                                                       n_warmup_steps=total_steps // 4),
        "optuna-sha": lambda: p.SuccessiveHalvingPruner(),
        "optuna-sha-patient": lambda: p.SuccessiveHalvingPruner(
            min_resource=total_steps // 8, reduction_factor=2),
        "optuna-hyperband": lambda: p.HyperbandPruner(min_resource=1, max_resource=total_steps),
        "optuna-hyperband-patient": lambda: p.HyperbandPruner(
            min_resource=total_steps // 8, max_resource=total_steps, reduction_factor=2),
    }


__all__ = ["Outcome", "none_arm", "optuna_arm", "optuna_pruners", "score",
           "tracker_sched_arm", "wandb_hyperband_arm"]
