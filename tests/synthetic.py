"""Synthetic sweeps with a known best schedule: analytic, noisy training dynamics.

Real sweeps cannot say which schedule *should* win; these can. The dynamics
are a "river valley" caricature of SGD, driven only by the learning-rate
schedule ``lr(tau)`` on ``tau = step / total_steps``:

- progress is the integral of the lr, ``S(tau) = int_0^tau lr / LR_REF``: the
  larger the lr, the faster the loss falls towards its floor;
- the current lr adds a noise floor, ``B * lr / LR_REF``: ending at a high lr
  costs loss, so annealing pays;
- above ``LR_CRIT`` training is unstable: the time spent above it, weighted
  by ``log10(lr / LR_CRIT)^2``, is ``I(tau)``, and it adds loss that does not
  go away.

::

    train_loss(tau) = L_MIN + A exp(-S(tau) / S0) + B lr(tau) / LR_REF + C I(tau)
    val_acc(tau)    = ACC_MAX exp(-K_ACC (train_loss(tau) - L_MIN))

``val_loss`` (a fixed generalisation gap over the train loss) can replace
``val_acc`` to test a minimised metric.

Every curve is a smooth function of the schedule, so any schedule, not only
the sweep's own, has a noise-free true outcome (:meth:`SyntheticTask.final`):
a planner's recommendation can be scored against the truth. Logged values get
seeded noise: multiplicative on the train loss, additive on the validation
metric, plus a per-seed offset (seeds differ the way real ones do).

With the default families and peaks, cosine at 1e-2 is the best
configuration by a clear margin; :func:`make_sweep` returns the ranking.

>>> sweep = make_sweep()
>>> sweep.best.family, sweep.best.peak_lr
('cosine', 0.01)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tracker_sched.schema import RunRecord, Series

Metric = Literal["val_acc", "val_loss"]
GAP_FACTOR, GAP = 1.05, 0.02
LrFn = Callable[[str, float, np.ndarray], np.ndarray]

FAMILIES: tuple[str, ...] = ("constant", "cosine", "step")
PEAKS: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def schedule(family: str, peak_lr: float, tau: np.ndarray, *, warmup: float = 0.05,
             floor: float = 0.1) -> np.ndarray:
    """The lr at progress ``tau (n,)`` of a named family, peaking at ``peak_lr``.

    ``constant``; ``cosine`` from the peak down to ``floor * peak``; ``step``
    (x0.1 at tau 1/3 and 2/3). Every family has a linear warm-up over the
    first ``warmup`` of the budget, from 10% of the peak.
    """
    tau = np.asarray(tau, dtype=np.float64)
    if family == "constant":
        lr = np.full_like(tau, peak_lr)
    elif family == "cosine":
        lr = peak_lr * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * tau)))
    elif family == "step":
        lr = peak_lr * np.where(tau < 1 / 3, 1.0, np.where(tau < 2 / 3, 0.1, 0.01))
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    ramp = np.clip(0.1 + 0.9 * tau / warmup, 0.0, 1.0) if warmup > 0 else 1.0
    return np.asarray(lr * ramp)


@dataclass(frozen=True)
class SyntheticTask:
    """The analytic dynamics. Constants are chosen so that the peak response is single-peaked
    and a middle peak of the default grid wins; change them to move the optimum."""

    l_min: float = 0.05
    a: float = 2.0
    s0: float = 2.0
    b: float = 0.025
    c: float = 3.0
    lr_ref: float = 1e-3
    lr_crit: float = 5e-3
    acc_max: float = 0.98
    k_acc: float = 0.25

    def curves(self, lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free ``(train_loss, val_acc)`` at every step of a per-step schedule ``lr (n,)``.

        The step ``i`` value follows the first ``i + 1`` lrs (trapezoid integrals on the
        progress scale, so the outcome does not depend on the number of steps).
        """
        lr = np.asarray(lr, dtype=np.float64)
        dt = 1.0 / max(lr.size - 1, 1)
        rate = lr / self.lr_ref
        progress = np.concatenate([[0.0], np.cumsum(0.5 * (rate[1:] + rate[:-1]) * dt)])
        over = np.maximum(0.0, np.log10(lr / self.lr_crit)) ** 2
        unstable = np.concatenate([[0.0], np.cumsum(0.5 * (over[1:] + over[:-1]) * dt)])
        loss = (self.l_min + self.a * np.exp(-progress / self.s0) + self.b * rate
                + self.c * unstable)
        acc = self.acc_max * np.exp(-self.k_acc * (loss - self.l_min))
        return loss, acc

    def val_loss(self, train_loss: np.ndarray) -> np.ndarray:
        """The validation loss that goes with a train loss: a fixed generalisation gap."""
        return np.asarray(GAP_FACTOR * train_loss + GAP)

    def final(self, lr: np.ndarray, metric: Metric = "val_acc") -> float:
        """The true final validation metric of a per-step schedule ``lr (n,)``."""
        loss, acc = self.curves(lr)
        return float(acc[-1] if metric == "val_acc" else self.val_loss(loss)[-1])


@dataclass(frozen=True)
class Config:
    family: str
    peak_lr: float
    final_val: float  # noise-free validation metric at the end of the budget

    @property
    def name(self) -> str:
        return f"{self.family}-{self.peak_lr:.0e}"


@dataclass(frozen=True)
class SyntheticSweep:
    """Runs as :class:`RunRecord` plus the truth: every configuration's noise-free final metric.

    ``configs`` is ranked best first in the metric's direction (``val_acc`` is
    maximised, ``val_loss`` minimised).
    """

    runs: list[RunRecord]
    configs: list[Config]
    task: SyntheticTask
    total_steps: int
    metric: Metric
    lr_fn: LrFn = field(repr=False)

    @property
    def best(self) -> Config:
        return self.configs[0]

    @property
    def margin(self) -> float:
        """How much better the best configuration's true final metric is than the runner-up's."""
        return abs(self.configs[0].final_val - self.configs[1].final_val)

    def lr(self, family: str, peak_lr: float, steps: np.ndarray) -> np.ndarray:
        """A configuration's lr at ``steps`` of this sweep's budget."""
        return self.lr_fn(family, peak_lr, np.asarray(steps) / self.total_steps)

    def run(self, family: str, peak_lr: float, seed: int) -> RunRecord:
        """One more run of the same task (e.g. a live run), not part of :attr:`runs`."""
        return simulate(self.task, family, peak_lr, seed, total_steps=self.total_steps,
                        metric=self.metric, lr_fn=self.lr_fn)

    def switched_final(
        self, family: str, peak_lr: float, now: int, steps: Sequence[int], lrs: Sequence[float]
    ) -> float:
        """The true final metric of a run that follows a configuration up to step ``now`` and
        then the schedule ``(steps, lrs)`` (log-linear in between, as the advisor applies it)."""
        all_steps = np.arange(self.total_steps + 1)
        lr = self.lr(family, peak_lr, all_steps)
        planned = 10 ** np.interp(all_steps, np.asarray(steps), np.log10(np.asarray(lrs)))
        return self.task.final(np.where(all_steps <= now, lr, planned), self.metric)

    def distance_dex(
        self, family: str, peak_lr: float, steps: Sequence[int], lrs: Sequence[float]
    ) -> float:
        """Mean |log10 lr difference| between a schedule and a configuration's, at ``steps``."""
        ref = self.lr(family, peak_lr, np.asarray(steps))
        return float(np.mean(np.abs(np.log10(np.asarray(lrs)) - np.log10(ref))))

    def nearest(self, steps: Sequence[int], lrs: Sequence[float]) -> Config:
        """The configuration whose schedule is closest to ``(steps, lrs)`` in mean decades."""
        return min(self.configs, key=lambda c: self.distance_dex(c.family, c.peak_lr, steps, lrs))


def simulate(
    task: SyntheticTask,
    family: str,
    peak_lr: float,
    seed: int,
    *,
    total_steps: int = 400,
    log_every: int = 4,
    val_every: int = 8,
    loss_noise: float = 0.03,
    val_noise: float = 0.003,
    seed_offset: float = 0.002,
    metric: Metric = "val_acc",
    lr_fn: LrFn = schedule,
) -> RunRecord:
    """One run: train loss and lr every ``log_every`` steps, validation every ``val_every``.

    Noise is seeded by ``(family, peak, seed)``, so a run is reproducible and
    runs differ; each seed also draws a constant offset of the validation metric
    (relative for ``val_loss``), as real seeds end at different levels.
    """
    steps = np.arange(total_steps + 1)
    lr = lr_fn(family, peak_lr, steps / total_steps)
    loss, acc = task.curves(lr)
    # Built-in families keep their index (the planner tests' numbers rest on it); any other
    # family name gets its own stream, so custom families do not share their noise.
    fam = FAMILIES.index(family) if family in FAMILIES else len(FAMILIES) + zlib.crc32(
        family.encode())
    key = [seed, fam, round(float(np.log10(peak_lr)) * 1000) + 10_000]
    rng = np.random.default_rng(key)
    t = np.arange(log_every, total_steps + 1, log_every)
    v = np.arange(val_every, total_steps + 1, val_every)
    noisy_loss = loss[t] * np.exp(loss_noise * rng.standard_normal(t.size))
    offset = seed_offset * rng.standard_normal()
    if metric == "val_acc":
        val = acc[v] + offset + val_noise * rng.standard_normal(v.size)
    else:
        val = task.val_loss(loss[v]) * np.exp(offset + val_noise * rng.standard_normal(v.size))
    run_id = f"syn-{family}-{peak_lr:.0e}-s{seed}"
    return RunRecord(
        run_id=run_id, name=run_id, sweep_id="synthetic",
        config={"family": family, "peak_lr": peak_lr, "seed": seed},
        total_steps=total_steps,
        train_loss=Series(step=t.tolist(), value=noisy_loss.tolist()),
        lr=Series(step=t.tolist(), value=lr[t].tolist()),
        val_metric=Series(step=v.tolist(), value=val.tolist()),
        metric_keys={"train_loss": "train_loss", "lr": "lr", "val_metric": metric},
    )


def make_sweep(
    families: Sequence[str] = FAMILIES,
    peaks: Sequence[float] = PEAKS,
    seeds: Sequence[int] = (0, 1),
    *,
    task: SyntheticTask | None = None,
    total_steps: int = 400,
    metric: Metric = "val_acc",
    lr_fn: LrFn = schedule,
) -> SyntheticSweep:
    """Every family x peak x seed, and the configurations ranked by their true final metric.

    ``lr_fn(family, peak_lr, tau)`` defines the families (default :func:`schedule`);
    ``metric`` is the validation metric the runs log, ``val_acc`` (max) or
    ``val_loss`` (min).
    """
    task = task or SyntheticTask()
    tau = np.arange(total_steps + 1) / total_steps
    sign = -1.0 if metric == "val_acc" else 1.0
    configs = sorted(
        (Config(f, p, task.final(lr_fn(f, p, tau), metric)) for f in families for p in peaks),
        key=lambda c: sign * c.final_val,
    )
    runs = [simulate(task, f, p, s, total_steps=total_steps, metric=metric, lr_fn=lr_fn)
            for f in families for p in peaks for s in seeds]
    return SyntheticSweep(runs=runs, configs=configs, task=task, total_steps=total_steps,
                          metric=metric, lr_fn=lr_fn)


__all__ = ["FAMILIES", "PEAKS", "Config", "Metric", "SyntheticSweep", "SyntheticTask",
           "make_sweep", "schedule", "simulate"]
