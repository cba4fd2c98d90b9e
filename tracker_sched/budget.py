"""A run's budget: how many steps it was planned to train. The one definition in the package.

Progress is ``tau = step / budget``, so a budget in the wrong unit (epochs
against a step axis that counts optimizer steps, or the reverse) puts every
point of a run in the wrong place. Trackers do not store a budget; frameworks
put it in their config under their own names. The rules, in order (the first
that gives a positive whole number wins; ``docs/sweep-format.md`` has the table):

1. **An explicit choice:** ``--total-steps N`` (:attr:`BudgetSpec.steps`), or
   ``--total-steps-key KEY`` (:attr:`BudgetSpec.key`): the config value of KEY,
   taken in the units of the step axis, with no conversion.
2. **A budget the run states:** the sweep file's ``total_steps`` field, else its
   config:

   * step counts: ``total_steps``, ``max_steps`` (HF Trainer, Lightning; ``-1``
     or ``0`` means "not set"), ``num_training_steps``;
   * epoch counts times the steps per epoch read from the logged ``epoch``
     metric (``epoch``, ``train/epoch``): ``num_train_epochs`` (HF Trainer,
     whose ``max_steps=-1`` means "use this"), ``max_epochs`` (Lightning),
     ``epochs`` (Keras);
   * the epoch count itself where the step axis counts epochs (its last step is
     the epoch count or one less: Keras logs one point per epoch, with the epoch
     as its step).

   Step counts come first because they need no conversion.
3. **The last logged step of a finished run.** A run that is not finished has
   no known budget: it takes the budget most finished runs of the sweep have
   (else its own last step, and then it counts as partial evidence).

Sources call :func:`stated_budget` (rule 2) while they still have every logged
metric, so the ``epoch`` series can be used; validation calls :func:`resolve`
(rules 1 and 3) and :func:`unit_mismatch`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tracker_sched.identity import flatten
from tracker_sched.numbers import to_float

#: Config keys that state the budget in optimizer steps, first match wins.
STEP_KEYS: tuple[str, ...] = ("total_steps", "max_steps", "num_training_steps")
#: Config keys that state the budget in epochs, first match wins.
EPOCH_KEYS: tuple[str, ...] = ("num_train_epochs", "max_epochs", "epochs")
#: Metric keys under which frameworks log the (fractional or whole) epoch.
EPOCH_METRICS: tuple[str, ...] = ("epoch", "train/epoch", "trainer/epoch")

#: A step axis that reaches past the budget by more than this factor counts another unit.
OVERRUN_FACTOR = 1.5

LAST_STEP = "the last logged step of a finished run"


class BudgetSpec(BaseModel):
    """An explicit budget for every run: a number, or the config key that holds it.

    >>> BudgetSpec(key="max_steps").key
    'max_steps'
    """

    model_config = ConfigDict(frozen=True)

    steps: int | None = Field(default=None, gt=0, description="--total-steps: every run's budget")
    key: str | None = Field(default=None, min_length=1,
                            description="--total-steps-key: the config key holding the budget")

    @model_validator(mode="after")
    def _one(self) -> BudgetSpec:
        if self.steps is not None and self.key is not None:
            raise ValueError("give --total-steps or --total-steps-key, not both")
        return self


@dataclass(frozen=True)
class Budget:
    """A run's budget in steps and where it came from (said in reports)."""

    steps: int
    source: str
    from_last_step: bool = False  # rule 3: a finished run's own end, not a stated plan


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    """Nested keys as dotted names, without the trackers' own (``_wandb`` holds a copy of
    the run's summary, which is no config)."""
    return {k: v for k, v in flatten(config).items() if not k.startswith("_")}


def config_value(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, else the one nested or dotted key ending in ``.key`` or ``/key``
    (``trainer.max_epochs`` in a Lightning CLI config); None when absent or ambiguous."""
    if key in config:
        return config[key]
    flat = _flat(config)
    if key in flat:
        return flat[key]
    matches = [v for k, v in flat.items() if k.endswith(("." + key, "/" + key))]
    return matches[0] if len({repr(v) for v in matches}) == 1 else None


def _number(value: Any) -> float | None:
    """A config value as a finite number (MLflow params arrive as text)."""
    return to_float(value, text=True, finite=True)


def positive_steps(value: Any) -> int | None:
    """A whole positive number of steps, or None (``-1``, ``0``, text, fractions)."""
    number = _number(value)
    if number is None or number <= 0 or not number.is_integer():
        return None
    return int(number)


def steps_per_epoch(steps: Sequence[int], epochs: Sequence[float]) -> float | None:
    """Optimizer steps per epoch from logged ``(step, epoch)`` pairs; None if they cannot say.

    Two ways to log an epoch. As progress (HF Trainer: ``epoch = step /
    steps_per_epoch``, a new value at every logged step): the latest pair gives it.
    As an index (Lightning: the same whole number at every step of an epoch): the
    first step logged in epoch ``k`` bounds it from above (``step / k``), the last
    step logged before epoch ``k`` from below; the tightest upper bound is taken
    (it is exact once a logged step falls on an epoch's first batch).
    """
    pairs = [(int(s), float(e)) for s, e in zip(steps, epochs, strict=False)
             if math.isfinite(float(e)) and float(e) >= 0]
    if not pairs:
        return None
    steps_at: dict[float, set[int]] = {}
    for s, e in pairs:
        steps_at.setdefault(e, set()).add(s)
    is_index = all(e.is_integer() for e in steps_at) and any(len(v) > 1 for v in steps_at.values())
    if not is_index:
        s, e = max(pairs, key=lambda p: (p[1], p[0]))
        return s / e if e > 0 and s > 0 else None
    upper = [min(steps_at[k]) / k for k in steps_at if k >= 1]
    lower = [max(s for s, e in pairs if e < k) / k for k in steps_at
             if k >= 1 and any(e < k for _, e in pairs)]
    if not upper:
        return None
    hi, lo = min(upper), max(lower, default=0.0)
    estimate = hi if hi > lo else (hi + lo) / 2
    return estimate if estimate > 0 else None


def stated_budget(
    config: Mapping[str, Any],
    epoch: tuple[Sequence[int], Sequence[float]] | None = None,
    last_step: int | None = None,
) -> Budget | None:
    """Rule 2: the budget a run's config states, converted to steps; None if it states none.

    ``epoch`` is the logged epoch metric as ``(steps, values)`` (for the steps per
    epoch); ``last_step`` the run's last logged step (to recognise a step axis
    that counts epochs).
    """
    for key in STEP_KEYS:
        steps = positive_steps(config_value(config, key))
        if steps is not None:
            return Budget(steps, f"config {key}={steps}")
    per_epoch = steps_per_epoch(*epoch) if epoch is not None else None
    for key in EPOCH_KEYS:
        epochs = _number(config_value(config, key))
        if epochs is None or epochs <= 0:
            continue
        if per_epoch is not None:
            steps = round(epochs * per_epoch)
            if steps > 0:
                return Budget(steps, f"config {key}={epochs:g} x {per_epoch:.4g} steps per "
                                     "epoch (from the logged epoch)")
        elif last_step is not None and epochs.is_integer() and epochs - 1 <= last_step <= epochs:
            return Budget(int(epochs), f"config {key}={int(epochs)} (the step axis counts epochs)")
    return None


def resolve(
    spec: BudgetSpec,
    config: Mapping[str, Any],
    stated: int | None,
    stated_source: str | None,
    last_step: int,
    finished: bool,
    sweep_budget: int | None,
) -> Budget | str:
    """Rules 1 to 3 for one run: its :class:`Budget`, or why it has none (a reason string).

    ``stated`` is the run's own ``total_steps`` (rule 2, found by its source; where it
    is None the config is read here, without a logged epoch); ``sweep_budget`` the
    budget most finished runs of the sweep have.
    """
    if spec.steps is not None:
        return Budget(spec.steps, f"--total-steps {spec.steps}")
    if spec.key is not None:
        value = config_value(config, spec.key)
        steps = positive_steps(value)
        if steps is None:
            what = "absent" if value is None else f"{value!r}, not a positive whole number"
            return (f"--total-steps-key {spec.key}: the run's config value is {what} (config "
                    f"keys: {', '.join(sorted(_flat(config))) or 'none'})")
        return Budget(steps, f"--total-steps-key {spec.key}={steps}")
    if stated is not None:
        return Budget(stated, stated_source or "total_steps")
    # A record built without a source; a source that found no budget applies says why
    # in ``stated_source`` (MLflow steps made from timestamps count no config unit).
    found = stated_budget(config, None, last_step) if stated_source is None else None
    if found is not None:
        return found
    if finished:
        return Budget(last_step, LAST_STEP, from_last_step=True)
    if sweep_budget is not None:
        return Budget(sweep_budget, "the budget of the sweep's finished runs (this run states "
                                    "none and is not finished)")
    return Budget(last_step, "its own last step (it states no budget and the sweep has no "
                             "finished run to take one from)", from_last_step=True)


def unit_mismatch(budget: Budget, config: Mapping[str, Any], last_step: int,
                  interval: float = 1.0) -> str | None:
    """Why a run's step axis and its budget count different units, or None.

    Two signs: the steps run far past the budget (an epoch count against a step
    axis), or the steps look like epochs (one per logged point, ending at the epoch
    count the config states) while the budget is far larger (a step count against an
    axis of epochs). ``interval``: the run's logging interval, in steps.
    """
    if budget.from_last_step:
        return None
    fix = ("pass --total-steps N or --total-steps-key KEY with a budget in the units of the "
           "step axis")
    if last_step > OVERRUN_FACTOR * budget.steps:
        return (f"the step axis reaches {last_step} but the budget is {budget.steps} "
                f"({budget.source}): they count different units (steps and epochs?); {fix}")
    for key in EPOCH_KEYS:
        epochs = positive_steps(config_value(config, key))
        if (epochs is not None and interval <= 1 and epochs - 1 <= last_step <= epochs
                and epochs < budget.steps / 2):
            return (f"the step axis counts epochs (last step {last_step}, config {key}={epochs}) "
                    f"while the budget {budget.steps} ({budget.source}) counts optimizer steps: "
                    f"pass --total-steps-key {key}, or log the optimizer step as the step")
    return None


def sweep_budget(budgets: Sequence[int]) -> int | None:
    """The most common of the finished runs' budgets (the largest among ties); None if none."""
    if not budgets:
        return None
    counts: dict[int, int] = {}
    for b in budgets:
        counts[b] = counts.get(b, 0) + 1
    return max(counts, key=lambda b: (counts[b], b))


def epoch_series(metrics: Mapping[str, Any]) -> tuple[str, tuple[list[int], list[float]]] | None:
    """The logged epoch metric among raw ``{key: {"step": [...], "value": [...]}}`` series."""
    for key in EPOCH_METRICS:
        series = metrics.get(key)
        if isinstance(series, Mapping) and series.get("step"):
            return key, (list(series["step"]), [float(v) for v in series["value"]])
    return None
