"""One training loop for every suite task, and the schedule families.

The step and logging conventions are those of ``tracker_sched.tasks.mnist1d``:
``lr_at(k)`` is the rate of the optimizer step taken when ``k`` steps are done;
a log point at ``step = s`` records ``lr_at(s - 1)``, the mean batch loss since
the previous log point and the validation metric. A non-finite batch loss ends
the run (state ``"crashed"``); its metric is then that of the model as it stands,
or the task's ``worst`` value where the metric itself is not finite.

Randomness: model init under ``torch.random.fork_rng``, batches from a
``torch.Generator`` seeded by the run's seed; no global state is touched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tracker_sched.schema import RunRecord, Series
from tracker_sched.tasks.mnist1d import SCHEDULE_FNS

LrFn = Callable[[int], float]
Observer = Callable[[int, float, float, float], None]
MetricFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]

WARMUP = 0.1  # share of the budget the warm-up families spend rising from peak/100
FLOOR = 1e-3  # decaying families end at peak * FLOOR
SCHEDULE_FREE = "schedulefree"  # a "family" that swaps the optimizer for its schedule-free twin


def _warm(k: int, total: int, peak: float) -> float | None:
    n = max(1, round(WARMUP * total))
    if k < n:
        return peak * (0.01 + 0.99 * (k + 1) / n)
    return None


def warmup_cosine(k: int, total: int, peak: float) -> float:
    """Linear warm-up over 10% of the budget, then cosine to peak * 1e-3."""
    w = _warm(k, total, peak)
    if w is not None:
        return w
    n = max(1, round(WARMUP * total))
    frac = (k - n) / max(1, total - n)
    return max(0.5 * peak * (1 + math.cos(math.pi * frac)), peak * FLOOR)


def warmup_linear(k: int, total: int, peak: float) -> float:
    """Linear warm-up over 10% of the budget, then linear decay to peak * 1e-3."""
    w = _warm(k, total, peak)
    if w is not None:
        return w
    n = max(1, round(WARMUP * total))
    frac = (k - n) / max(1, total - n)
    return max(peak * (1 - frac), peak * FLOOR)


def warmup_constant(k: int, total: int, peak: float) -> float:
    """Linear warm-up over 10% of the budget, then the peak."""
    w = _warm(k, total, peak)
    return peak if w is None else w


FAMILIES: dict[str, Callable[[int, int, float], float]] = {
    **SCHEDULE_FNS,
    "warmup-cosine": warmup_cosine,
    "warmup-linear": warmup_linear,
    "warmup-constant": warmup_constant,
}


def schedule(family: str, total: int, peak: float) -> LrFn:
    """The named family's ``lr_at(k)`` for a budget of ``total`` steps."""
    try:
        fn = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown schedule family {family!r}; expected one of "
                         f"{sorted(FAMILIES)}") from None
    return lambda k: float(fn(k, total, peak))


@dataclass(frozen=True)
class Data:
    """Fixed splits of one task: every run trains on the same data."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class Outcome:
    """One finished run: its record (as it would be logged) and final metrics."""

    record: RunRecord
    val: float
    test: float
    wall_s: float


@dataclass(frozen=True)
class LoopSpec:
    """What the loop needs to know about a task besides its data and model."""

    task: str
    steps: int
    batch_size: int
    log_every: int
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric_fn: MetricFn
    val_key: str
    worst: float  # metric value of a run that produced nothing usable (e.g. inf MSE)
    optimizer: Callable[[Any, float], torch.optim.Optimizer]
    # the schedule-free twin of ``optimizer``: ``(params, lr, warmup_steps) -> optimizer``
    sf_optimizer: Callable[[Any, float, int], torch.optim.Optimizer] | None = None
    sf_warmup: float = 0.05  # share of the budget of the schedule-free warm-up


def train(
    spec: LoopSpec,
    data: Data,
    build: Callable[[], nn.Module],
    *,
    family: str,
    peak: float,
    seed: int,
    lr_fn: LrFn | None = None,
    observer: Observer | None = None,
    run_id: str | None = None,
) -> Outcome:
    """Train one run; ``lr_fn`` (an advisor) overrides the family, which is then a label.

    ``family == SCHEDULE_FREE`` (and no ``lr_fn``) trains with the task's schedule-free
    optimizer at a constant ``peak`` (its recommended use: no schedule, a warm-up of its
    own), measuring every metric with its evaluation weights.
    """
    t0 = time.perf_counter()
    sf = family == SCHEDULE_FREE and lr_fn is None
    if sf and spec.sf_optimizer is None:
        raise ValueError(f"task {spec.task!r} has no schedule-free optimizer")
    lr_at = lr_fn or ((lambda k: float(peak)) if sf else schedule(family, spec.steps, peak))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build()
    net.train()
    opt: Any
    if sf:
        assert spec.sf_optimizer is not None
        opt = spec.sf_optimizer(net.parameters(), float(peak),
                                max(1, round(spec.sf_warmup * spec.steps)))
        opt.train()
    else:
        opt = spec.optimizer(net.parameters(), float(lr_at(0)))
    gen = torch.Generator().manual_seed(1_000_003 + seed)
    n = len(data.y_train)

    def metric(x: torch.Tensor, y: torch.Tensor) -> float:
        was = net.training
        net.eval()
        if sf:
            opt.eval()  # schedule-free: measure the averaged (evaluation) weights
        try:
            with torch.no_grad():
                v = float(spec.metric_fn(net, x, y))
        finally:
            net.train(was)
            if sf:
                opt.train()
        return v if math.isfinite(v) else spec.worst

    steps: list[int] = []
    losses: list[float] = []
    lrs: list[float] = []
    vals: list[float] = []

    def log_point(step: int, loss: float, lr: float) -> None:
        val = metric(data.x_val, data.y_val)
        steps.append(step)
        losses.append(loss)
        lrs.append(lr)
        vals.append(val)
        if observer is not None:
            observer(step, loss, val, lr)

    state = "finished"
    perm = torch.randperm(n, generator=gen)
    pos = 0
    pending: list[float] = []
    for k in range(spec.steps):
        if pos + spec.batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + spec.batch_size]
        pos += spec.batch_size
        lr = float(lr_at(k))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = spec.loss_fn(net(data.x_train[idx]), data.y_train[idx])
        value = float(loss.item())
        if not math.isfinite(value):
            log_point(k + 1, math.nan, lr)
            state = "crashed"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        pending.append(value)
        if (k + 1) % spec.log_every == 0 or k + 1 == spec.steps:
            log_point(k + 1, sum(pending) / len(pending), lr)
            pending = []
    test = metric(data.x_test, data.y_test)
    label = "advisor" if lr_fn is not None else family
    rid = run_id or f"{spec.task}-{label}-{peak:.3g}-s{seed}"
    config: dict[str, object] = {"task": spec.task, "schedule": label, "peak_lr": float(peak),
                                 "seed": int(seed), "total_steps": spec.steps,
                                 "batch_size": spec.batch_size}
    record = RunRecord(
        run_id=rid, source="files", sweep_id=spec.task, name=rid,
        config=config,  # type: ignore[arg-type]
        state=state, total_steps=spec.steps,
        train_loss=Series(step=list(steps), value=losses),
        lr=Series(step=list(steps), value=lrs),
        val_metric=Series(step=list(steps), value=vals),
        metric_keys={"train_loss": "train_loss", "lr": "lr", "val_metric": spec.val_key},
    )
    return Outcome(record=record, val=vals[-1] if vals else spec.worst, test=test,
                   wall_s=time.perf_counter() - t0)
