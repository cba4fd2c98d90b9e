"""Stop decisions from calibrated odds: the data and the rule, torch-free.

A live run's stop signal is ``p_beat``: the probability that its final validation metric
beats the incumbent (the best finished run so far, or a target the caller gives). The
ensemble forecasts the final metric (a mean and a spread across members); the spread alone
is not a probability, so the fit calibrates it on out-of-fold forecasts
(:mod:`tracker_sched.fit.stop_calibration`) into a :class:`StopCalibration`, stored in the
bundle. Per progress bucket it holds a bias (added to the forecast mean) and a predictive
standard deviation ``sqrt(floor**2 + (scale * spread)**2)``. All of it is in the metric's
transformed units (log10 for a positive minimised metric, as the model sees it): the
transform is monotone, so "beats" is the same question there.

:func:`judge` turns the odds into a :class:`StopDecision` under a :class:`StopRule`:
never before the context window is full, never inside the grace period, and only after
``patience`` consecutive decisions below the threshold (a run is judged many times: one
noisy low forecast must not end it).

This module imports neither torch nor a tracker, so a thin client (``RemoteAdvisor``) and
the serving layer can read and send decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator


def normal_cdf(x: float) -> float:
    """The standard normal distribution function."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def student_t_cdf(x: float, df: int | None) -> float:
    """Student's t distribution function for a whole number of degrees of freedom (the
    closed forms of Abramowitz & Stegun 26.7.3-4); ``df=None`` is the normal."""
    if df is None:
        return normal_cdf(x)
    theta = math.atan(abs(x) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:
        term = total = math.cos(theta) if df > 1 else 0.0
        for k in range(1, (df - 3) // 2 + 1):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        a = 2.0 / math.pi * (theta + s * total)
    else:
        term = total = 1.0
        for k in range(1, (df - 2) // 2 + 1):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    return 0.5 + 0.5 * a if x >= 0 else 0.5 - 0.5 * a


def student_t_logpdf(z: float, df: int | None) -> float:
    """Log density of the standard t (``df=None``: the normal) at ``z``."""
    if df is None:
        return -0.5 * (z * z + math.log(2 * math.pi))
    return (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
            - (df + 1) / 2 * math.log1p(z * z / df))


class StopBucket(BaseModel):
    """The calibration of forecasts made at progress ``tau`` (the bucket's centre).

    ``bias``, ``floor`` in the metric's transformed units; ``scale`` multiplies the
    ensemble's spread; ``runs``: the out-of-fold forecasts it was fitted on.
    """

    model_config = ConfigDict(frozen=True)

    tau: float = Field(ge=0, le=1)
    bias: float = Field(allow_inf_nan=False)
    floor: float = Field(gt=0, allow_inf_nan=False)
    scale: float = Field(ge=0, allow_inf_nan=False)
    runs: int = Field(ge=0)


class ReliabilityRow(BaseModel):
    """One bin of the reliability table: forecasts that said ``p`` in ``[lo, hi)``, their
    mean prediction, and how often the event (run beats the other's final) happened."""

    model_config = ConfigDict(frozen=True)

    lo: float
    hi: float
    predicted: float
    observed: float
    pairs: int


class StopCalibration(BaseModel):
    """How the fit turns the ensemble's forecast of the final metric into odds.

    ``scheme``: ``cross-fit`` (each run forecast by the member that never trained on it;
    the live ensemble mean is a little better than that, so the odds are on the cautious
    side) or ``holdout`` (held-out runs, the whole ensemble). ``reliability``: predicted
    probability against observed frequency on those forecasts, over pairs of runs (is run
    *i*'s final better than run *j*'s actual final?); the calibration was fitted on the
    same runs, so it is in-sample for its three numbers per bucket.
    """

    model_config = ConfigDict(frozen=True)

    version: int = 1
    scheme: Literal["cross-fit", "holdout"]
    direction: Literal["max", "min"]
    transform: Literal["identity", "log10"]
    buckets: list[StopBucket] = Field(min_length=1)
    reliability: list[ReliabilityRow] = Field(default_factory=list)
    runs: int = Field(ge=0, description="runs with a final metric the calibration used")
    log_loss: float | None = Field(default=None, description="mean log loss of the "
                                   "reliability pairs (lower is better; 0.693 is a coin)")
    df: int | None = Field(default=None, ge=1, le=1000, description="degrees of freedom of "
                           "the Student-t the odds use (heavy tails: a forecast far off for "
                           "some runs); None: the normal (bundles before this field)")

    @model_validator(mode="after")
    def _sorted(self) -> StopCalibration:
        taus = [b.tau for b in self.buckets]
        if taus != sorted(taus):
            raise ValueError("calibration buckets must be sorted by tau")
        return self

    def bucket(self, tau: float) -> StopBucket:
        """The bucket whose centre is nearest ``tau``."""
        return min(self.buckets, key=lambda b: abs(b.tau - tau))

    def to_transformed(self, value: float) -> float:
        """A metric value as logged -> the units of the forecasts; ValueError if it has none."""
        if not math.isfinite(value):
            raise ValueError(f"the incumbent {value!r} is not a finite number")
        if self.transform == "log10":
            if value <= 0:
                raise ValueError(f"the incumbent {value!r} must be positive (the metric is "
                                 "modelled on a log scale)")
            return math.log10(value)
        return value

    def from_transformed(self, value: float) -> float:
        """The inverse of :meth:`to_transformed`: a forecast in the metric's logged units."""
        return 10.0**value if self.transform == "log10" else value

    def p_beat(self, tau: float, mean: float, spread: float, incumbent: float) -> float:
        """The probability that the final metric beats ``incumbent`` (transformed units).

        ``mean``, ``spread``: the ensemble's forecast of the final metric at progress ``tau``.
        """
        b = self.bucket(tau)
        sigma = math.sqrt(b.floor**2 + (b.scale * max(spread, 0.0)) ** 2)
        sign = 1.0 if self.direction == "max" else -1.0
        return student_t_cdf(sign * (mean + b.bias - incumbent) / sigma, self.df)


# The defaults, the one place they are defined: the setting the early-stopping benchmark
# chose on its design block (`python -m benchmarks.early_stopping`, "chosen" in
# benchmarks/results/early_stopping.json; docs/early-stopping.md): the cheapest that kept the
# best run within 0.1 point in at least 95% of orderings on every design task (8 tasks: 3
# synthetic, the MNIST-1D CNN fixture and 4 of the multi-task suite's). 0.01 (the previous
# default, chosen on the first 4 tasks) kept the suite's Friedman sweep's best run in 23% of
# orderings; 0.05 with patience 2 (the one before) failed on 3 tasks.
DEFAULT_THRESHOLD = 0.002
DEFAULT_PATIENCE = 1


class StopRule(BaseModel):
    """When odds become a stop. The defaults are the benchmark's choice (see
    ``DEFAULT_THRESHOLD``); every stop (the advisor, the served model, the Optuna pruner,
    the Ray Tune scheduler, the callbacks) uses this rule unless given another.

    Args:
        threshold: stop once ``p_beat`` stays below it (``patience`` decisions in a row).
        grace: no stop before this fraction of the budget (on top of the window rule).
        patience: consecutive decisions below the threshold needed to stop.
        margin: a run that ends within ``margin`` of the incumbent (metric units, as
            logged) counts as beating it: stop only runs unlikely to come that close.
    """

    model_config = ConfigDict(frozen=True)

    threshold: float = Field(default=DEFAULT_THRESHOLD, gt=0, lt=1)
    grace: float = Field(default=0.0, ge=0, lt=1)
    patience: int = Field(default=DEFAULT_PATIENCE, ge=1)
    margin: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    def bar(self, incumbent: float, direction: Literal["max", "min"]) -> float:
        """The value a run must beat: the incumbent, loosened by ``margin``."""
        return incumbent - self.margin if direction == "max" else incumbent + self.margin


class StopRequest(BaseModel):
    """What a client sends to a served model to get a stop decision beside the lr (the
    ``stop`` param, as JSON). A server is stateless: ``below`` carries the client's count of
    consecutive decisions below the threshold."""

    model_config = ConfigDict(frozen=True)

    incumbent: float | None = Field(default=None, allow_inf_nan=False)
    rule: StopRule = Field(default_factory=StopRule)
    below: int = Field(default=0, ge=0, le=1_000_000)


class StopDecision(BaseModel):
    """The answer to "should this run stop now?". ``p_beat`` is None when no odds could be
    computed (no incumbent yet, window not full, no calibration): such a decision never
    stops. ``below``: consecutive decisions below the threshold, this one included."""

    model_config = ConfigDict(frozen=True)

    stop: bool = False
    p_beat: float | None = None
    incumbent: float | None = None
    predicted_final: float | None = None
    predicted_spread: float | None = None
    tau: float | None = None
    below: int = 0
    reason: str = ""


def judge(
    rule: StopRule,
    *,
    p_beat: float,
    tau: float,
    window_full: bool,
    below_before: int = 0,
    incumbent: float | None = None,
    predicted_final: float | None = None,
    predicted_spread: float | None = None,
) -> StopDecision:
    """Apply ``rule`` to one set of odds.

    Args:
        rule: threshold, grace period and patience.
        p_beat: the probability that the run beats the incumbent.
        tau: the run's progress now (step / total_steps).
        window_full: whether the run has logged a full context window (no stop before).
        below_before: consecutive decisions below the threshold before this one.
        incumbent, predicted_final, predicted_spread: carried into the decision (as logged).

    Returns:
        The decision; ``stop`` only when every condition of the rule holds.
    """
    below = below_before + 1 if p_beat < rule.threshold else 0
    common = StopDecision(p_beat=p_beat, incumbent=incumbent, predicted_final=predicted_final,
                          predicted_spread=predicted_spread, tau=tau, below=below)
    if not window_full:
        return common.model_copy(update={"reason": "the context window is not full yet"})
    if tau < rule.grace:
        return common.model_copy(
            update={"reason": f"in the grace period (tau {tau:.2f} < {rule.grace:g})"})
    if below < rule.patience:
        state = "below" if below else "at or above"
        return common.model_copy(update={
            "reason": f"p_beat {p_beat:.3f} {state} the threshold {rule.threshold:g} "
                      f"({below} of {rule.patience} in a row)"})
    return common.model_copy(update={
        "stop": True, "reason": f"p_beat {p_beat:.3f} below {rule.threshold:g} for {below} "
        "decisions in a row: this run is unlikely to beat the incumbent"})


Incumbent: TypeAlias = "float | Callable[[], float | None] | None"


class StopWatch:
    """The opt-in stop of a callback: asks its advisor for a decision when the run logs a
    validation metric, and latches the first stop. Never raises.

    Args:
        rule: threshold, grace period, patience.
        incumbent: the value to beat (as logged), or a function returning it (e.g. the best
            finished run of the sweep so far, read when asked), or None (never stops).
    """

    def __init__(self, rule: StopRule | None = None, incumbent: Incumbent = None) -> None:
        self.rule = rule or StopRule()
        self.incumbent = incumbent
        self.decision: StopDecision | None = None  # the latest
        self.should_stop = False
        self.stopped_at: int | None = None
        self.error: str | None = None

    def check(self, advisor: Any, step: int) -> StopDecision | None:
        """Ask ``advisor.stop_decision``; returns the decision the first time it says stop,
        else None (also on any failure, kept in :attr:`error`)."""
        if self.should_stop:
            return None
        try:
            target = self.incumbent() if callable(self.incumbent) else self.incumbent
            decision = advisor.stop_decision(target, rule=self.rule)
        except Exception as exc:  # a training loop never dies because of us
            self.error = f"stop decision failed: {type(exc).__name__}: {exc}"
            return None
        if not isinstance(decision, StopDecision):
            return None
        self.decision = decision
        if decision.stop:
            self.should_stop, self.stopped_at = True, int(step)
            return decision
        return None


__all__ = [
    "DEFAULT_PATIENCE",
    "DEFAULT_THRESHOLD",
    "ReliabilityRow",
    "StopBucket",
    "StopCalibration",
    "StopDecision",
    "StopRequest",
    "StopRule",
    "StopWatch",
    "judge",
    "normal_cdf",
    "student_t_cdf",
    "student_t_logpdf",
]
