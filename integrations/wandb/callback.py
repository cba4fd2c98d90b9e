"""The W&B sweep callback: the advisor inside the function a ``wandb agent`` runs.

W&B has no per-step sweep callback API, and a sweep run cannot change its
sweep-controlled config (``config.update`` is silently ignored), so the
callback is a small object the training script calls with what it logs. It
keeps its own buffer of those metrics (a live run cannot read its own history),
drives :class:`~tracker_sched.advising.advisor.Advisor`, sets the optimizer's lr, and
writes every recommendation back to the run as metrics under ``tracker_sched/``
at the script's own step, so no extra history rows appear.

wandb is imported lazily: importing this module needs neither wandb nor a run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracker_sched._optional import require
from tracker_sched.advising.advisor import Advisor
from tracker_sched.budget import STEP_KEYS, stated_budget
from tracker_sched.bundle.folder import Bundle
from tracker_sched.errors import InputError
from tracker_sched.model.stop_odds import Incumbent, StopRule, StopWatch
from tracker_sched.numbers import to_float
from tracker_sched.planning.generative import PlannerConfig
from tracker_sched.schema import ROLES, MetricMap, Recommendation, Role, infer_direction
from tracker_sched.util.redact import redact_text

if TYPE_CHECKING:
    from torch.optim import Optimizer

log = logging.getLogger("tracker_sched.integrations.wandb")

#: ``tracker_sched/status`` in the run's history: a number, so W&B can chart it.
STATUS_CODES: dict[str, int] = {"off": -1, "warmup": 0, "planned": 1, "fallback": 2}
PREFIX = "tracker_sched/"


def _wandb() -> Any:
    return require("wandb")


def _budget_from_config(config: Mapping[str, Any]) -> int | None:
    """The budget a live run's config states in steps (:func:`tracker_sched.budget.stated_budget`;
    an epoch count needs the logged epoch, which a run that just started has not)."""
    found = stated_budget(config)
    return found.steps if found is not None else None


def _number(value: object) -> float | None:
    """A logged value (a float, a 0-d tensor, a numpy scalar) as a finite-or-not float."""
    return to_float(value)


class SweepCallback:
    """Advise a W&B run (typically one a ``wandb agent`` launched) from a fitted bundle.

    Args:
        bundle: a :class:`~tracker_sched.bundle.folder.Bundle`, a bundle folder, or any
            bundle URI (``wandb:ENTITY/PROJECT/NAME:ALIAS``, ``mlflow:...``).
        total_steps: the run's budget in the steps you log at; default: the
            first of the run config's ``total_steps``, ``max_steps``,
            ``num_training_steps``. Neither given raises :class:`InputError`
            at once: a wrong budget would silently bend every plan.
        optimizer: if given, every param group's lr is set from each
            recommendation, keeping the groups' ratios to the first group.
        run: the W&B run; default ``wandb.run``.
        planner, replan_every, max_replans: passed to the advisor.
        stop: opt in to stop decisions with this rule (default None: never stops). Once the
            odds of beating ``incumbent`` stay low, :attr:`should_stop` turns True (the loop
            checks it and ends; wandb keeps every row logged), the run gets the tag
            ``tracker_sched.stopped`` and the summary ``tracker_sched/stopped`` with the odds;
            each decision's ``tracker_sched/p_beat`` is logged beside the lr.
        incumbent: the validation metric to beat (as logged), or a function returning it
            (e.g. the sweep's best finished run so far); None never stops.
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
        self._warned: set[str] = set()
        self.advisor: Advisor | None = None
        self._keys: dict[Role, str | None] = {role: None for role in ROLES}
        self._direction: str | None = None
        self._mm = MetricMap()
        self._explicit = metric_map or MetricMap()
        self._last_lr: float | None = None
        self._logged_plan: Recommendation | None = None
        self._base: list[float] = []  # the groups' initial lrs, read at the first update
        self.stop_watch = StopWatch(stop, incumbent) if stop is not None else None
        try:
            loaded = bundle if isinstance(bundle, Bundle) else _load(bundle)
            self.advisor = Advisor(loaded, self.total_steps, config=planner,
                                   replan_every=replan_every, max_replans=max_replans)
            m = loaded.manifest.metrics
            self._keys = {"train_loss": m.train_loss, "lr": m.lr, "val_metric": m.val_metric}
            self._direction = m.direction
        except Exception as exc:  # a live run never dies because of us
            self._fail("bundle", f"bundle {bundle!s} unusable, callback off: "
                                 f"{type(exc).__name__}: {exc}")
        self._set_summary({"status_name": "off" if self.advisor is None else "warmup",
                           "sweep_id": self.sweep_id, "total_steps": self.total_steps})

    # ------------------------------------------------------------------ public
    @property
    def recommendation(self) -> Recommendation | None:
        """The advisor's current plan; None while the callback is off."""
        return self.advisor.plan if self.advisor is not None else None

    def log(self, metrics: Mapping[str, object], step: int) -> float | None:
        """Record what the run logged at ``step``; return the lr for the steps that follow.

        ``metrics`` is what you pass to ``run.log`` (e.g. ``{"train/loss": ...,
        "val/acc": ..., "lr": ...}``); keys are matched to roles by the bundle's
        metric names, else by the usual names. Without an lr key, the
        optimizer's lr (or the last lr returned) is recorded as the lr used.
        The returned lr is the plan at ``step + 1``; it is also set on the
        optimizer and logged at ``step`` as ``tracker_sched/lr``. Returns None
        only when the callback is off. Never raises.
        """
        if self.advisor is None:
            self._log_row({f"{PREFIX}status": STATUS_CODES["off"]}, step)
            return None
        try:
            values = self.roles(metrics)
            if values["lr"] is None:
                values["lr"] = self._current_lr()
            rec = self.advisor.observe(step, train_loss=values["train_loss"],
                                       val_metric=values["val_metric"], lr=values["lr"])
            lr = self.advisor.lr(step + 1)
            self._apply(lr)
        except Exception as exc:  # the advisor does not raise; this guards our own glue
            self._fail("callback", f"callback error at step {step}: {type(exc).__name__}: {exc}")
            return self._last_lr
        row: dict[str, object] = {f"{PREFIX}lr": lr,
                                  f"{PREFIX}status": STATUS_CODES[rec.status]}
        if rec.predicted_final is not None:
            row[f"{PREFIX}predicted_final"] = rec.predicted_final
        if self.stop_watch is not None and values["val_metric"] is not None:
            row.update(self._check_stop(step))
        if self._is_new_plan(rec):
            self._logged_plan = rec
            try:
                row.update(self._plan_media(rec))
            except Exception as exc:
                self._fail("plan media", f"the plan table or chart failed at step {step}: "
                                         f"{type(exc).__name__}: {exc}")
            self._set_summary({"status_name": rec.status, "reason": redact_text(rec.reason),
                               "plan_step": rec.step, "model_version": rec.model_version})
        self._log_row(row, step)
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
        lr = self.advisor.lr(step)
        try:
            self._apply(lr)
        except Exception as exc:
            self._fail("callback", f"setting the optimizer's lr failed at step {step}: "
                                   f"{type(exc).__name__}: {exc}")
        return lr

    def roles(self, metrics: Mapping[str, object]) -> dict[Role, float | None]:
        """What the callback reads from ``metrics``: each role's value, None if absent."""
        out: dict[Role, float | None] = {}
        for role in ROLES:
            key = self._key_for(role, metrics)
            out[role] = _number(metrics[key]) if key is not None else None
        return out

    # ------------------------------------------------------------------ internals
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
            self._set_summary({"stopped": True, "stop_step": step, "stop_p_beat": decision.p_beat,
                               "stop_incumbent": decision.incumbent,
                               "stop_reason": redact_text(decision.reason)})
            try:
                self.run.tags = (*tuple(self.run.tags or ()), "tracker_sched.stopped")
            except Exception as exc:
                self._fail("tags", f"tagging the stopped run failed: {type(exc).__name__}: "
                                   f"{exc}")
        return row

    def _key_for(self, role: Role, metrics: Mapping[str, object]) -> str | None:
        explicit: str | None = getattr(self._explicit, role)
        if explicit is not None:  # the user named it: no guessing, present or not
            return explicit if explicit in metrics else None
        if self._keys[role] in metrics:
            return self._keys[role]
        key = self._mm.key_for(role, metrics.keys())
        if role == "val_metric" and key is not None and (
            self._direction is None or infer_direction(key) != self._direction
        ):
            return None
        return key

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

    def _plan_media(self, rec: Recommendation) -> dict[str, object]:
        """The plan as a table and a line plot: built per new plan, not per step."""
        wandb = _wandb()
        table = wandb.Table(columns=["step", "lr"],
                            data=[[int(s), float(v)] for s, v in
                                  zip(rec.schedule.step, rec.schedule.lr, strict=True)])
        title = f"tracker-sched plan ({rec.status}, step {rec.step})"
        return {f"{PREFIX}plan": table,
                f"{PREFIX}plan_chart": wandb.plot.line(table, "step", "lr", title=title)}

    def _log_row(self, row: dict[str, object], step: int) -> None:
        """Log at the script's own step, so the values join its row instead of adding one.

        wandb merges every ``log(..., step=N)`` with the same N into one row and
        drops a step lower than the run's current one; a script on wandb's own
        counter is behind that, so its values go to the open row instead.
        """
        try:
            current = getattr(self.run, "step", None)
            if isinstance(current, int) and step < current:
                self.run.log(row, commit=False)
            else:
                self.run.log(row, step=step)
        except Exception as exc:
            self._fail("log", f"logging to W&B failed at step {step}: {type(exc).__name__}: "
                              f"{exc}")

    def _set_summary(self, values: Mapping[str, object]) -> None:
        try:
            for key, value in values.items():
                if value is not None:
                    self.run.summary[PREFIX + key] = value
        except Exception as exc:
            self._fail("summary", f"writing the W&B summary failed: {type(exc).__name__}: {exc}")

    def _is_new_plan(self, rec: Recommendation) -> bool:
        old = self._logged_plan
        # Not the step: a repeated fallback carries a new step but nothing new to draw.
        return old is None or (rec.status, rec.reason, rec.schedule) != (
            old.status, old.reason, old.schedule)

    def _fail(self, kind: str, reason: str) -> None:
        """Log a failure once per kind and keep the latest in the summary; never raises."""
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("tracker-sched: %s", reason)
        self.error = reason
        try:
            self.run.summary[f"{PREFIX}error"] = reason
        except Exception:
            log.debug("could not record the error in the W&B summary", exc_info=True)


def _load(uri: str | Path) -> Bundle:
    from tracker_sched.stores import load_bundle

    return load_bundle(uri)
