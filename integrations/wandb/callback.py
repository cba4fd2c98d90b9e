"""The W&B sweep callback: the advisor inside the function a ``wandb agent`` runs.

W&B has no per-step sweep callback API, and a sweep run cannot change its
sweep-controlled config (``config.update`` is silently ignored), so the
callback is a small object the training script calls with what it logs. It
keeps its own buffer of those metrics (a live run cannot read its own history),
drives :class:`~tracker_sched.advisor.Advisor`, sets the optimizer's lr, and
writes every recommendation back to the run as metrics under ``tracker_sched/``
at the script's own step, so no extra history rows appear.

wandb is imported lazily: importing this module needs neither wandb nor a run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracker_sched.budget import STEP_KEYS, stated_budget
from tracker_sched.bundle.folder import Bundle
from tracker_sched.errors import InputError
from tracker_sched.model.stop_odds import Incumbent, StopRule, StopWatch
from tracker_sched.planning.generative import PlannerConfig
from tracker_sched.schema import MetricMap, Recommendation, Role
from tracker_sched.util.redact import redact_text

from ..advised import AdvisedRun
from ..advised import number as _number
from .writer import (
    LR_APPLIED,
    LR_RECOMMENDED,
    PREDICTED_FINAL,
    PREFIX,
    STATUS,
    STATUS_CODES,
    WandbWriter,
    require_wandb,
)

if TYPE_CHECKING:
    from torch.optim import Optimizer

log = logging.getLogger("tracker_sched.integrations.wandb")

__all__ = ["PREFIX", "STATUS_CODES", "SweepCallback", "_number"]


def _wandb() -> Any:
    return require_wandb()


def _budget_from_config(config: Mapping[str, Any]) -> int | None:
    """The budget a live run's config states in steps (:func:`tracker_sched.budget.stated_budget`;
    an epoch count needs the logged epoch, which a run that just started has not)."""
    found = stated_budget(config)
    return found.steps if found is not None else None


class SweepCallback:
    """Advise a W&B run (typically one a ``wandb agent`` launched) from a fitted bundle.

    Args:
        bundle: a :class:`~tracker_sched.bundle.Bundle`, a bundle folder, or any
            bundle URI (``wandb:ENTITY/PROJECT/NAME:ALIAS``, ``mlflow:...``).
        total_steps: the run's budget in the steps you log at; default: the
            first of the run config's ``total_steps``, ``max_steps``,
            ``num_training_steps``. Neither given raises :class:`InputError`
            at once: a wrong budget would silently bend every plan.
        optimizer: if given, every param group's lr is set from each
            recommendation, keeping the groups' ratios to the first group.
        stop: opt in to stop decisions with this rule (default None: never stops). Once the
            odds of beating ``incumbent`` stay low, :attr:`should_stop` turns True (the loop
            checks it and ends; wandb keeps every row logged), the run gets the tag
            ``tracker_sched.stopped`` and the summary ``tracker_sched/stopped`` with the odds;
            each decision's ``tracker_sched/p_beat`` is logged beside the lr.
        incumbent: the validation metric to beat (as logged), or a function returning it
            (e.g. the sweep's best finished run so far); None never stops.
        mode: ``"auto"`` (default: the bundle's decision), ``"generative"``, ``"control"``
            or ``"best"`` (docs/planner-modes.md).
        run: the W&B run; default ``wandb.run``.
        planner: the planner's settings (a ``PlannerConfig``), passed to the advisor.
        replan_every: observations between replans, passed to the advisor.
        max_replans: plans a run makes at most (None: no limit), passed to the advisor.
        metric_map: this run's key names where they differ from the bundle's
            (explicit keys only). By default a role is read from the bundle's
            key, else from the usual names (``train/loss``, ``loss``, ``lr``,
            ``train/learning_rate``, ``val/acc``...); a validation key is taken
            only if its direction (``acc`` max, ``loss`` min) matches the
            bundle's, so ``val/loss`` is never read as an accuracy.

    A bundle that cannot be loaded does not stop the run: the callback turns
    itself off (logged once, ``tracker_sched/error`` in the run summary,
    ``tracker_sched/status`` -1), leaves the optimizer alone and returns None
    from :meth:`log`, so the run trains on the lr the sweep gave it.

    Examples:
        >>> # def train():                       # the function `wandb agent` runs
        >>> #     run = wandb.init()
        >>> #     opt = torch.optim.SGD(model.parameters(), lr=run.config["peak_lr"])
        >>> #     cb = SweepCallback("wandb:team/proj/cnn-bundle:champion", optimizer=opt)
        >>> #     for step in range(run.config["total_steps"]):
        >>> #         loss = train_step(opt)
        >>> #         metrics = {"train/loss": loss, "lr": opt.param_groups[0]["lr"]}
        >>> #         run.log(metrics, step=step)
        >>> #         cb.log(metrics, step)      # sets opt's lr for the next step
    """

    def __init__(
        self,
        bundle: str | Path | Bundle,
        *,
        total_steps: int | None = None,
        optimizer: Optimizer | None = None,
        run: object | None = None,
        planner: PlannerConfig | None = None,
        replan_every: int = 10,
        max_replans: int | None = 1,
        metric_map: MetricMap | None = None,
        stop: StopRule | None = None,
        incumbent: Incumbent = None,
        mode: str | None = None,
    ) -> None:
        active: Any = run if run is not None else _wandb().run
        if active is None:
            raise InputError("SweepCallback needs a W&B run: call wandb.init() first, or pass run=")
        self.run: Any = active
        self.sweep_id: str | None = getattr(self.run, "sweep_id", None) or None
        config = self.run.config
        self.config: dict[str, Any] = dict(config.as_dict() if hasattr(config, "as_dict")
                                           else config)
        self.config.pop("_wandb", None)
        budget = total_steps if total_steps is not None else _budget_from_config(self.config)
        if budget is None:
            raise InputError(
                "SweepCallback needs the run's budget: pass total_steps=N or put one of "
                f"{', '.join(STEP_KEYS)} in the run config (config keys seen: "
                f"{', '.join(sorted(self.config)) or 'none'})"
            )
        if budget <= 0:
            raise InputError(f"total_steps must be positive, got {budget}")
        self.total_steps = int(budget)
        self.optimizer = optimizer
        self.error: str | None = None
        self.writer = WandbWriter(self.run, on_error=self._fail)
        self._last_lr: float | None = None
        self._base: list[float] = []  # the groups' initial lrs, read at the first update
        self.advised = AdvisedRun(bundle, metric_map=metric_map, planner=planner,
                                  replan_every=replan_every, max_replans=max_replans, mode=mode)
        self.advised.start(self.total_steps)
        self._sync_error()
        self.stop_watch = StopWatch(stop, incumbent) if stop is not None else None
        self.writer.define_metrics()
        self.writer.summary({"status_name": "off" if self.advisor is None else "warmup",
                             "sweep_id": self.sweep_id, "total_steps": self.total_steps})

    # ------------------------------------------------------------------ public
    @property
    def advisor(self) -> Any:
        """The :class:`~tracker_sched.Advisor`; None while the callback is off."""
        return self.advised.advisor

    @property
    def recommendation(self) -> Recommendation | None:
        """The advisor's current plan; None while the callback is off."""
        return self.advised.plan

    def log(self, metrics: Mapping[str, object], step: int) -> float | None:
        """Record what the run logged at ``step``; return the lr for the steps that follow.

        ``metrics`` is what you pass to ``run.log`` (e.g. ``{"train/loss": ...,
        "val/acc": ..., "lr": ...}``); keys are matched to roles by the bundle's
        metric names, else by the usual names. Without an lr key, the
        optimizer's lr (or the last lr returned) is recorded as the lr used, and
        logged at ``step`` as ``tracker_sched/lr_applied`` beside
        ``tracker_sched/lr_recommended`` (what was recommended for ``step``). The
        returned lr is the plan at ``step + 1``; it is also set on the optimizer.
        Returns None only when the callback is off. Never raises.
        """
        if self.advisor is None:
            self.writer.row({STATUS: STATUS_CODES["off"]}, step)
            return None
        try:
            values = self.roles(metrics)
            if values["lr"] is None:
                values["lr"] = self._current_lr()
            row: dict[str, object] = {}
            wanted = self.advised.recommended(step)
            if wanted is not None:
                row[LR_RECOMMENDED] = wanted
            if values["lr"] is not None:
                row[LR_APPLIED] = values["lr"]
                self.advised.applied(step, values["lr"])
            self.advised.observe(step, train_loss=values["train_loss"],
                                 val_metric=values["val_metric"], lr=values["lr"])
            fallback = self._last_lr if self._last_lr is not None else values["lr"]
            lr = self.advised.lr(step + 1, default=fallback or 0.0)
            self._apply(lr)
        except Exception as exc:  # the advisor does not raise; this guards our own glue
            self._fail("callback", f"callback error at step {step}: {type(exc).__name__}: {exc}")
            return self._last_lr
        self._sync_error()
        if self.stop_watch is not None and values["val_metric"] is not None:
            row.update(self._check_stop(step))
        rec = self.advised.plan
        if rec is not None:
            row[STATUS] = STATUS_CODES[rec.status]
            if rec.predicted_final is not None:
                row[PREDICTED_FINAL] = rec.predicted_final
            new = self.advised.take_new_plan()
            if new is not None:
                row.update(self.writer.plan_row(rec))
                self.writer.summary({"status_name": rec.status,
                                     "reason": redact_text(rec.reason),
                                     "plan_step": rec.step, "model_version": rec.model_version,
                                     "mode": rec.mode or "",
                                     **self._counts()})
        self.writer.row(row, step)
        return lr

    @property
    def should_stop(self) -> bool:
        """True once the opt-in stop decided the run should end (the loop checks it)."""
        return self.stop_watch is not None and self.stop_watch.should_stop

    def lr(self, step: int) -> float | None:
        """The planned lr at ``step``, set on the optimizer; for steps between :meth:`log` calls.

        Nothing is observed or logged. Returns None only when the callback is off.
        """
        if self.advisor is None:
            return None
        lr = self.advised.lr(step, default=self._last_lr or 0.0)
        try:
            self._apply(lr)
        except Exception as exc:
            self._fail("callback", f"setting the optimizer's lr failed at step {step}: "
                                   f"{type(exc).__name__}: {exc}")
        return lr

    def finish(self) -> None:
        """Write what the advisor did to the run summary (plans, fallbacks, steps applied,
        the last prediction). Call it before ``run.finish()``; never raises."""
        self.writer.summary(self._counts())

    def roles(self, metrics: Mapping[str, object]) -> dict[Role, float | None]:
        """What the callback reads from ``metrics``: each role's value, None if absent."""
        return self.advised.roles(metrics)

    def _check_stop(self, step: int) -> dict[str, object]:
        """Ask for a stop decision; mark the run when it says stop. Its p_beat, for the row."""
        watch = self.stop_watch
        assert watch is not None
        decision = watch.check(self.advisor, step)
        latest = watch.decision
        row: dict[str, object] = {}
        if latest is not None and latest.p_beat is not None:
            row[f"{PREFIX}p_beat"] = latest.p_beat
        if decision is not None:
            self.writer.summary({"stopped": True, "stop_step": step, "stop_p_beat": decision.p_beat,
                               "stop_incumbent": decision.incumbent,
                               "stop_reason": redact_text(decision.reason)})
            try:
                self.run.tags = (*tuple(self.run.tags or ()), "tracker_sched.stopped")
            except Exception as exc:
                self._fail("tags", f"tagging the stopped run failed: {type(exc).__name__}: "
                                   f"{exc}")
        return row

    # ------------------------------------------------------------------ internals
    def _counts(self) -> dict[str, object]:
        done = self.advised.summary()
        keep = ("plans", "fallbacks", "recommended_steps", "applied_steps", "mismatched_steps",
                "predicted_final")
        return {k: done[k] for k in keep if k in done}

    def _current_lr(self) -> float | None:
        if self.optimizer is not None:
            return float(self.optimizer.param_groups[0]["lr"])
        return self._last_lr

    def _apply(self, lr: float) -> None:
        self._last_lr = lr
        if self.optimizer is None:
            return
        if len(self._base) != len(self.optimizer.param_groups):
            self._base = [float(g["lr"]) for g in self.optimizer.param_groups]
        base0 = self._base[0] or 1.0
        for group, base in zip(self.optimizer.param_groups, self._base, strict=False):
            group["lr"] = lr * (base / base0)

    def _sync_error(self) -> None:
        """A failure the shared core recorded (and logged once) goes to the run summary."""
        if self.advised.error is not None and self.advised.error != self.error:
            self.error = self.advised.error
            self._summary_error(self.error)

    def _fail(self, kind: str, reason: str) -> None:
        """Log a failure once per kind and keep the latest in the summary; never raises."""
        self.advised.warn_once(kind, reason)
        self.error = reason
        self._summary_error(reason)

    def _summary_error(self, reason: str) -> None:
        try:
            self.run.summary[f"{PREFIX}error"] = reason
        except Exception:
            log.debug("could not record the error in the W&B summary", exc_info=True)
