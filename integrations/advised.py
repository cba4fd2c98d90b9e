"""An advised run: what every framework callback shares, whatever the framework.

The HF Trainer and Lightning callbacks differ in where the budget, the metrics
and the optimizer live; they do not differ in what advising a run means. That
part is here, once:

- the advisor, built from a bundle URI (or folder, or :class:`~tracker_sched.Bundle`,
  or a ready advisor such as :class:`~tracker_sched.RemoteAdvisor`) once the
  budget is known;
- which logged key plays which role (the bundle's own names first, then the
  usual names; a validation key only if its sense matches the bundle's);
- the lr recommended at each step, and whether the framework then applied it
  (``recommended_steps``, ``applied_steps``, ``mismatched_steps``);
- the plans made, the fallbacks, the last prediction: :meth:`AdvisedRun.summary`.

Nothing here raises into training. A bundle that cannot be loaded, an advisor
that fails, a value that is not a number: each is caught, logged once on the
``tracker_sched`` logger, kept in :attr:`AdvisedRun.error`, and the framework's
own lr stays in charge (:meth:`AdvisedRun.lr` returns the default it is given).
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracker_sched.advising.following import AdvisorLike
from tracker_sched.numbers import to_float
from tracker_sched.schema import ROLES, MetricMap, Recommendation, Role, infer_direction

if TYPE_CHECKING:
    from tracker_sched.bundle.folder import Bundle
    from tracker_sched.planning.generative import PlannerConfig

log = logging.getLogger("tracker_sched.integrations")

#: Relative difference under which an applied lr counts as the recommended one.
APPLIED_RTOL = 1e-6
_REMEMBERED_STEPS = 4096  # recommended lrs kept for the applied check (bounded)


def number(value: object) -> float | None:
    """A logged value as a float; None for what is not a plain number (bools, text, media).
    :func:`tracker_sched.numbers.to_float`, the one rule."""
    return to_float(value)


def same_lr(a: float, b: float) -> bool:
    """Whether two lrs are the same up to float noise (``APPLIED_RTOL``)."""
    return math.isclose(a, b, rel_tol=APPLIED_RTOL, abs_tol=0.0)


class AdvisedRun:
    """The advisor inside one training run, shared by the framework callbacks.

    Args:
        source: a bundle URI (``mlflow:models:/NAME@ALIAS``, ``wandb:E/P/NAME:ALIAS``,
            ``file:PATH``), a bundle folder, a :class:`~tracker_sched.Bundle`, or a
            ready advisor (anything with ``observe``, ``lr`` and ``plan``).
        metric_map: explicit keys where the run's names differ from the bundle's.
        planner: the planner's settings (a ``PlannerConfig``), passed to the advisor.
        replan_every: observations between replans, passed to the advisor.
        max_replans: plans a run makes at most (None: no limit), passed to the advisor.
        mode: ``"auto"`` (default: the bundle's decision), ``"generative"``, ``"control"``
            or ``"best"``, passed to the advisor.

    The bundle is loaded here; the advisor is built by :meth:`start`, once the
    framework knows the budget. Neither raises: a failure turns the run
    "off" (:attr:`active` False, :attr:`error` says why) and every lr query
    returns the framework's own.

    >>> # run = AdvisedRun("mlflow:models:/cnn-sched@champion")
    >>> # run.start(total_steps=840)
    >>> # run.observe(10, {"loss": 1.2, "learning_rate": 0.05})
    >>> # lr = run.lr(11, default=framework_lr)
    """

    def __init__(
        self,
        source: Bundle | AdvisorLike | str | os.PathLike[str],
        *,
        metric_map: MetricMap | None = None,
        planner: PlannerConfig | None = None,
        replan_every: int = 10,
        max_replans: int | None = 1,
        mode: str | None = None,
    ) -> None:
        self.error: str | None = None
        self.bundle: Bundle | None = None
        self.bundle_uri: str | None = None
        self.advisor: AdvisorLike | None = None
        self.total_steps: int | None = None
        self._options: dict[str, Any] = {"config": planner, "replan_every": replan_every,
                                         "max_replans": max_replans}
        if mode is not None:
            self._options["mode"] = mode
        self._explicit = metric_map or MetricMap()
        self._defaults = MetricMap()
        self._keys: dict[Role, str | None] = {role: None for role in ROLES}
        self._direction: str | None = None
        self._warned: set[str] = set()
        self._recommended: OrderedDict[int, float] = OrderedDict()
        self._last_plan: Recommendation | None = None
        self.recommended_steps = 0
        self.applied_steps = 0
        self.mismatched_steps = 0
        self.plans = 0  # distinct plans published (warm-up excluded)
        self.fallbacks = 0  # fallback recommendations seen (distinct)
        self._ready: AdvisorLike | None = None
        try:
            self._load(source)
        except Exception as exc:  # a run never dies because of us
            self.fail("bundle", f"bundle {source!s} unusable, callback off (the run keeps "
                                f"its own lr): {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ setting up
    def _load(self, source: Bundle | AdvisorLike | str | os.PathLike[str]) -> None:
        from tracker_sched.bundle.folder import Bundle

        if isinstance(source, str | os.PathLike):
            from tracker_sched.stores import load_bundle

            self.bundle_uri = str(source)
            source = load_bundle(Path(source) if isinstance(source, os.PathLike) else source)
        if isinstance(source, Bundle):
            self.bundle = source
        elif isinstance(source, AdvisorLike):
            self._ready = source
            self.bundle = getattr(source, "bundle", None)
        else:
            raise TypeError(f"expected a bundle, a bundle URI or an advisor, got "
                            f"{type(source).__name__}")
        if self.bundle is not None:
            m = self.bundle.manifest.metrics
            self._keys = {"train_loss": m.train_loss, "lr": m.lr, "val_metric": m.val_metric}
            self._direction = m.direction

    def start(self, total_steps: int) -> bool:
        """Build the advisor for a run of ``total_steps`` steps. Never raises.

        Returns whether the run is advised. A second call with the same budget
        keeps the advisor; a call with another budget starts a new one (a
        Trainer re-used for a second ``train()``).
        """
        if self.bundle is None and self._ready is None:
            return False  # the bundle did not load: already said why
        try:
            steps = int(total_steps)
            if steps <= 0:
                raise ValueError(f"the budget must be a positive number of steps, got "
                                 f"{total_steps!r}")
            if self.advisor is not None and steps == self.total_steps:
                return True
            if self._ready is not None:
                self.advisor = self._ready
            else:
                from tracker_sched.advising.advisor import Advisor

                assert self.bundle is not None
                self.advisor = Advisor(self.bundle, steps, **self._options)
            self.total_steps = steps
            self._recommended.clear()
            self._last_plan = None  # the warm-up plan is the first one take_new_plan returns
            return True
        except Exception as exc:
            self.advisor = None
            self.fail("start", f"no advisor for this run, it keeps its own lr: "
                               f"{type(exc).__name__}: {exc}")
            return False

    @property
    def active(self) -> bool:
        """Whether an advisor is running (False before :meth:`start` and after a failure)."""
        return self.advisor is not None

    @property
    def plan(self) -> Recommendation | None:
        """The advisor's current plan; None while the run is not advised."""
        if self.advisor is None:
            return None
        try:
            return self.advisor.plan
        except Exception as exc:
            self.fail("advisor", f"reading the plan failed: {type(exc).__name__}: {exc}")
            return None

    @property
    def model_version(self) -> str | None:
        """The bundle's version (its ``created_at``), as every recommendation carries it."""
        return self.bundle.manifest.created_at if self.bundle is not None else None

    # ------------------------------------------------------------------ metrics in
    def roles(self, metrics: Mapping[str, object]) -> dict[Role, float | None]:
        """Each role's value among ``metrics`` (None if absent or not a number)."""
        out: dict[Role, float | None] = {}
        for role in ROLES:
            key = self.key_for(role, metrics)
            out[role] = number(metrics[key]) if key is not None else None
        return out

    def key_for(self, role: Role, metrics: Mapping[str, object]) -> str | None:
        """The key of ``metrics`` that plays ``role``: explicit, the bundle's, the usual."""
        explicit: str | None = getattr(self._explicit, role)
        if explicit is not None:  # the user named it: no guessing, present or not
            return explicit if explicit in metrics else None
        names = [k for k in metrics if not str(k).startswith("tracker_sched")]
        if self._keys[role] in names:
            return self._keys[role]
        key = self._defaults.key_for(role, names)
        if role == "val_metric" and key is not None and (
            self._direction is None or infer_direction(key) != self._direction
        ):
            return None  # val/loss is never read as an accuracy
        return key

    def observe(self, step: int, metrics: Mapping[str, object] | None = None, *,
                train_loss: float | None = None, val_metric: float | None = None,
                lr: float | None = None) -> Recommendation | None:
        """Feed the advisor what the run logged at ``step``; the plan after it. Never raises.

        ``metrics`` are mapped to roles (:meth:`roles`); the keyword values
        override them. Nothing is fed when no role has a value.
        """
        if self.advisor is None:
            return None
        try:
            values = self.roles(metrics) if metrics is not None else dict.fromkeys(ROLES)
            for role, value in (("train_loss", train_loss), ("val_metric", val_metric),
                                ("lr", lr)):
                if value is not None:
                    values[role] = float(value)  # type: ignore[index]
            if all(v is None for v in values.values()):
                return self.advisor.plan
            return self.advisor.observe(int(step), train_loss=values["train_loss"],
                                        val_metric=values["val_metric"], lr=values["lr"])
        except Exception as exc:  # our advisor never raises; a foreign one or our glue might
            self.fail("advisor", f"observing step {step} failed, keeping the plan: "
                                 f"{type(exc).__name__}: {exc}")
            return None

    # ------------------------------------------------------------------ lr out
    def lr(self, step: int, default: float) -> float:
        """The lr to use at ``step``: the advisor's, else ``default``. Never raises.

        The recommendation is remembered for :meth:`applied`.
        """
        if self.advisor is None:
            return default
        try:
            out = float(self.advisor.lr(int(step)))
            if not (math.isfinite(out) and out > 0):
                raise ValueError(f"the advisor answered lr={out!r}")
        except Exception as exc:
            self.fail("lr", f"no lr from the advisor at step {step}, using the run's own: "
                            f"{type(exc).__name__}: {exc}")
            return default
        if int(step) not in self._recommended:
            self.recommended_steps += 1
        self._recommended[int(step)] = out
        self._recommended.move_to_end(int(step))
        while len(self._recommended) > _REMEMBERED_STEPS:
            self._recommended.popitem(last=False)
        return out

    def recommended(self, step: int) -> float | None:
        """The lr recommended for ``step`` (by :meth:`lr`), if it was asked for."""
        return self._recommended.get(int(step))

    def applied(self, step: int, lr: float) -> bool | None:
        """Record the lr the framework really used at ``step`` (read back from it).

        Returns whether it is the recommended one; None when nothing was
        recommended for that step. Counted in ``applied_steps`` / ``mismatched_steps``.
        """
        want = self._recommended.get(int(step))
        value = number(lr)
        if want is None or value is None:
            return None
        if same_lr(value, want):
            self.applied_steps += 1
            return True
        self.mismatched_steps += 1
        self.warn_once("mismatch", f"the lr applied at step {step} ({value:.6g}) is not the "
                                   f"recommended one ({want:.6g}): something else sets the lr")
        return False

    # ------------------------------------------------------------------ plans out
    def take_new_plan(self) -> Recommendation | None:
        """The current plan if it is new since the last call (for the writers), else None.

        A repeated fallback with the same schedule is not new.
        """
        rec = self.plan
        last = self._last_plan
        if rec is None or (last is not None and (rec.status, rec.reason, rec.schedule) == (
                last.status, last.reason, last.schedule)):
            return None
        self._last_plan = rec
        if rec.status == "planned":
            self.plans += 1
        elif rec.status == "fallback":
            self.fallbacks += 1
        return rec

    def summary(self) -> dict[str, object]:
        """What the advisor did in this run, for a run summary (flat, JSON values)."""
        rec = self.plan
        out: dict[str, object] = {
            "status": rec.status if rec is not None else "off",
            "plans": self.plans,
            "fallbacks": self.fallbacks,
            "recommended_steps": self.recommended_steps,
            "applied_steps": self.applied_steps,
            "mismatched_steps": self.mismatched_steps,
            "total_steps": self.total_steps,
            "model_version": self.model_version,
            "bundle": self.bundle_uri,
            "error": self.error,
        }
        if rec is not None:
            from tracker_sched.util.redact import redact_text

            out["reason"] = redact_text(rec.reason)
            out["plan_step"] = rec.step
            out["predicted_final"] = rec.predicted_final
        return {k: v for k, v in out.items() if v is not None}

    # ------------------------------------------------------------------ failures
    def fail(self, kind: str, reason: str) -> None:
        """Record a failure (the latest in :attr:`error`), logged once per kind. Never raises."""
        from tracker_sched.util.redact import redact_text

        reason = redact_text(reason) or reason
        self.error = reason
        self.warn_once(kind, reason)

    def warn_once(self, kind: str, message: str) -> None:
        """One warning per kind on the ``tracker_sched`` logger."""
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("tracker-sched: %s", message)
