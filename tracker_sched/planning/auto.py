"""``--mode auto``: which planner a sweep's bundle trusts, from the sweep's own evidence.

The rule is a pure function of evidence that exists at fit time, computed from the
sweep's runs alone (never from new runs):

* forecast skill: how often the generative fit's out-of-fold forecasts beat the last
  value carried forward and the nearest sweep run (median-run RMSE and rank correlation
  of the final metric at the early report taus, 0.25 and 0.5: where a plan is made);
  and, when the fit report carries one, its ``forecast_trust`` verdict (a report that
  says its forecaster does not beat the baselines lowers the trust: no generative plan);
* the control checks: their flags (a flagged model is never trusted) and the
  out-of-fold counterfactual ranking (mean and worst Spearman over shared contexts);
* the confounding report (recorded; the rule family may require a learnable sweep).

The outcome is ``control``, ``generative`` or ``best`` (follow the sweep's best
configuration's schedule). "best" is the default answer: a planner is trusted only when
its evidence clears the rule's thresholds.

Where the thresholds come from: :data:`DEFAULT_RULE` is what
``python -m benchmarks.suite.auto_rule`` selects on every task of the benchmark suite
(``benchmarks/results/auto_rule.json``; the selection is leave-one-task-out validated
there, and the module docstring of ``benchmarks/suite/auto_rule.py`` describes the
candidate family). Never tune it on one task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tracker_sched.bundle.decision import DecidedMode

#: report taus whose forecast comparisons count: a plan is made early in a run
SKILL_TAUS = (0.25, 0.5)
_BASELINES = ("nearest", "last")


class AutoEvidence(BaseModel):
    """What the rule reads; every field from the sweep's own runs.

    Attributes:
        forecast_wins: comparisons the generative forecaster wins (see :data:`SKILL_TAUS`:
            median-run RMSE and rank correlation against each baseline); None without an
            out-of-fold report.
        forecast_comparisons: comparisons made.
        forecast_trust: the fit report's forecast verdict, when it has one (False: the
            forecaster does not beat the baselines on this sweep).
        control_fitted: whether a control model was fitted and checked.
        control_flags: its check flags (non-empty: the control planner refuses it).
        ranking_mean: its out-of-fold counterfactual ranking, mean Spearman.
        ranking_worst: the worst context's Spearman.
        learnable: the confounding report's verdict on the sweep's design.
    """

    model_config = ConfigDict(frozen=True)

    forecast_wins: int | None = None
    forecast_comparisons: int = 0
    forecast_trust: bool | None = None
    control_fitted: bool = False
    control_flags: list[str] = Field(default_factory=list)
    ranking_mean: float | None = None
    ranking_worst: float | None = None
    learnable: bool | None = None

    @property
    def forecast_skill(self) -> float | None:
        """Share of comparisons won (0..1); None without a report."""
        if self.forecast_wins is None or not self.forecast_comparisons:
            return None
        return self.forecast_wins / self.forecast_comparisons

    @classmethod
    def from_record(cls, ev: Mapping[str, Any]) -> AutoEvidence:
        """From the evidence dict the benchmark suite records per task
        (``benchmarks/suite/evidence.py``: ``forecast``, ``control``, ``confounding``)."""
        fc = ev.get("forecast") or {}
        wins = total = 0
        for tau in SKILL_TAUS:
            beats = ((fc.get("taus") or {}).get(f"{tau:g}") or {}).get("model_beats") or {}
            for v in beats.values():
                if v is not None:
                    total += 1
                    wins += bool(v)
        ctl = ev.get("control") or {}
        conf = ev.get("confounding") or {}
        return cls(
            forecast_wins=wins if total else None, forecast_comparisons=total,
            forecast_trust=trust_verdict(fc.get("forecast_trust")),
            control_fitted=bool(ctl), control_flags=list(ctl.get("flags") or []),
            ranking_mean=ctl.get("ranking_mean"), ranking_worst=ctl.get("ranking_worst"),
            learnable=conf.get("learnable"),
        )


def trust_verdict(value: Any) -> bool | None:
    """A forecast-trust verdict of any shape the fit report gives (a bool, a word, or a
    mapping with ``trusted``/``verdict``) as True (trusted), False (lowered) or None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        for key in ("trusted", "trust", "verdict", "level"):
            if key in value:
                return trust_verdict(value[key])
        return None
    level = getattr(value, "level", None)  # a ForecastTrust (tracker_sched.fit.trust)
    if level is not None:
        return trust_verdict(level)
    word = str(value).strip().lower()
    if word in ("trusted", "full", "high", "yes", "ok", "true", "beats"):
        return True
    if word in ("lowered", "low", "untrusted", "none", "no", "false", "distrust", "reduced"):
        return False
    return None


class AutoRule(BaseModel):
    """Thresholds of the auto rule; ``None`` switches a planner off.

    Attributes:
        control_min_ranking_mean: trust the control planner when its checks pass and its
            counterfactual ranking mean is at least this.
        control_min_ranking_worst: and its worst context at least this (None: any).
        generative_min_skill: trust the generative planner when its forecast skill (share
            of comparisons won) is at least this, and the report's verdict is not "lowered".
        require_learnable: trust the control planner only on a sweep the confounding
            report calls learnable.
        prefer: which planner wins when both clear their thresholds.
    """

    model_config = ConfigDict(frozen=True)

    control_min_ranking_mean: float | None = None
    control_min_ranking_worst: float | None = None
    generative_min_skill: float | None = None
    require_learnable: bool = False
    prefer: Literal["control", "generative"] = "control"

    def label(self) -> str:
        """The rule in a few words (reports, JSON keys)."""
        def n(x: float | None) -> str:
            return "off" if x is None else f"{x:g}"
        return (f"control ranking mean>={n(self.control_min_ranking_mean)} worst>="
                f"{n(self.control_min_ranking_worst)}"
                f"{' learnable' if self.require_learnable else ''}; generative skill>="
                f"{n(self.generative_min_skill)}; prefer {self.prefer}")


#: The shipped rule: what benchmarks/suite/auto_rule.py selects on all suite tasks
#: (benchmarks/results/auto_rule.json). On the tasks measured so far no planner's
#: evidence predicted a gain over the sweep's best that held across tasks, so the
#: selected rule trusts a planner only on strong evidence.
DEFAULT_RULE = AutoRule()


def control_gate(ev: AutoEvidence, rule: AutoRule) -> str | None:
    """Why the control planner is not trusted; None when it is."""
    t = rule.control_min_ranking_mean
    if t is None:
        return "the rule never picks the control planner"
    if not ev.control_fitted:
        return "no control model was fitted"
    if ev.control_flags:
        return "its checks flag it (" + "; ".join(ev.control_flags) + ")"
    if ev.ranking_mean is None:
        return "its counterfactual ranking could not be computed"
    if ev.ranking_mean < t:
        return f"its counterfactual ranking mean {ev.ranking_mean:.2f} is below {t:g}"
    w = rule.control_min_ranking_worst
    if w is not None and (ev.ranking_worst is None or ev.ranking_worst < w):
        return f"its worst counterfactual ranking {_num(ev.ranking_worst)} is below {w:g}"
    if rule.require_learnable and not ev.learnable:
        return "the sweep's design confounds the lr with the configuration"
    return None


def generative_gate(ev: AutoEvidence, rule: AutoRule) -> str | None:
    """Why the generative planner is not trusted; None when it is."""
    t = rule.generative_min_skill
    if t is None:
        return "the rule never picks the generative planner"
    if ev.forecast_trust is False:
        return "the fit report lowers its forecast trust (it does not beat the baselines)"
    skill = ev.forecast_skill
    if skill is None:
        return "no out-of-fold forecast report"
    if skill < t:
        return (f"its forecasts win {ev.forecast_wins}/{ev.forecast_comparisons} comparisons "
                f"with the baselines, below {t:.0%}")
    return None


def could_pick_control(ev: AutoEvidence, rule: AutoRule) -> bool:
    """Whether fitting a control model could change the decision (fit it only then)."""
    if rule.control_min_ranking_mean is None:
        return False
    if rule.require_learnable and ev.learnable is False:
        return False
    return not (rule.prefer == "generative" and generative_gate(ev, rule) is None)


def decide(ev: AutoEvidence, rule: AutoRule = DEFAULT_RULE) -> tuple[DecidedMode, str]:
    """The planner a sweep's bundle trusts, and why (one sentence with its numbers).

    Args:
        ev: the sweep's evidence.
        rule: the thresholds (default: the shipped :data:`DEFAULT_RULE`).

    Returns:
        ``(mode, reason)``, mode one of ``control``, ``generative``, ``best``.
    """
    why_c, why_g = control_gate(ev, rule), generative_gate(ev, rule)
    order = ("control", "generative") if rule.prefer == "control" else ("generative", "control")
    for mode in order:
        if mode == "control" and why_c is None:
            return "control", (f"control: checks pass and the counterfactual ranking "
                               f"(mean {_num(ev.ranking_mean)}, worst "
                               f"{_num(ev.ranking_worst)}) clears the rule")
        if mode == "generative" and why_g is None:
            return "generative", (f"generative: its forecasts win {ev.forecast_wins}/"
                                  f"{ev.forecast_comparisons} comparisons with the baselines")
    return "best", (f"best (the sweep's best configuration's schedule): control not trusted, "
                    f"{why_c}; generative not trusted, {why_g}")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


__all__ = [
    "DEFAULT_RULE",
    "SKILL_TAUS",
    "AutoEvidence",
    "AutoRule",
    "control_gate",
    "could_pick_control",
    "decide",
    "generative_gate",
    "trust_verdict",
]
