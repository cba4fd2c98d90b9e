"""Write-back to one W&B run, shared by the sweep callback and the framework callbacks.

What a run gets (the slash makes one ``tracker_sched`` panel section):

=================================  ======================================================
``tracker_sched/lr_recommended``   history: the lr the advisor recommended for the step
``tracker_sched/lr_applied``       history: the lr the optimizer used at the step (read
                                   back from the framework or the script)
``tracker_sched/status``           history: 0 warm-up, 1 planned, 2 fallback, -1 off
``tracker_sched/predicted_final``  history: the plan's predicted final metric, once planned
``tracker_sched/plan``             history, at each new plan: the schedule as a table
                                   (``tracker_sched/plan_chart``: a line plot of it)
``tracker_sched/<what>``           summary: what the advisor did (``plans``,
                                   ``fallbacks``, ``applied_steps``, ``predicted_final``,
                                   ``status_name``, ``reason``, ``error``...)
=================================  ======================================================

The charted metrics are declared with ``define_metric`` (on the framework's step
axis when it has one), so the two lrs chart as a pair; their last values are in the
run summary. Runs written
before 0.2 carry ``tracker_sched/lr`` (:data:`LR_V0`), the recommended lr of the next
step. Nothing here raises: a refused write is reported to ``on_error`` and training
goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from tracker_sched._optional import require
from tracker_sched.schema import Recommendation

log = logging.getLogger("tracker_sched.integrations.wandb")

PREFIX = "tracker_sched/"
LR_RECOMMENDED = f"{PREFIX}lr_recommended"
LR_APPLIED = f"{PREFIX}lr_applied"
LR_V0 = f"{PREFIX}lr"  # before 0.2: the recommended lr of the step after the row's
STATUS = f"{PREFIX}status"
PREDICTED_FINAL = f"{PREFIX}predicted_final"
#: ``tracker_sched/status`` in the run's history: a number, so W&B can chart it.
STATUS_CODES: dict[str, int] = {"off": -1, "warmup": 0, "planned": 1, "fallback": 2}
CHARTED = (LR_RECOMMENDED, LR_APPLIED, STATUS, PREDICTED_FINAL)


def require_wandb() -> Any:
    """``import wandb``, or :class:`MissingDependencyError` naming the extra."""
    return require("wandb")


def plan_media(rec: Recommendation) -> dict[str, object]:
    """The plan as a ``wandb.Table`` and a line plot of it: built per new plan, not per step."""
    wandb = require_wandb()
    table = wandb.Table(columns=["step", "lr"],
                        data=[[int(s), float(v)] for s, v in
                              zip(rec.schedule.step, rec.schedule.lr, strict=True)])
    title = f"tracker-sched plan ({rec.status}, step {rec.step})"
    return {f"{PREFIX}plan": table,
            f"{PREFIX}plan_chart": wandb.plot.line(table, "step", "lr", title=title)}


class WandbWriter:
    """Writes an advised run's values to one W&B run.

    Args:
        run: the W&B run (``wandb.run``, ``WandbLogger.experiment``).
        step_key: the framework's own step column (``train/global_step`` for the HF
            Trainer, ``trainer/global_step`` for Lightning): rows carry it and the
            charts use it as x axis. None: rows go to wandb's step ``step`` itself
            (a plain loop that logs with ``step=``).
        on_error: called with ``(kind, message)`` when W&B refuses a write; default:
            logged once per kind.
    """

    def __init__(self, run: Any, *, step_key: str | None = None,
                 on_error: Callable[[str, str], None] | None = None) -> None:
        self.run = run
        self.step_key = step_key
        self.errors = 0
        self._warned: set[str] = set()
        self._on_error = on_error or self._warn_once
        self._defined = False

    def define_metrics(self) -> None:
        """Declare the charted metrics once (on the framework's step axis, if any)."""
        if self._defined:
            return
        self._defined = True
        try:  # the step column itself is the framework's to declare, not ours
            for name in CHARTED:
                self.run.define_metric(name, step_metric=self.step_key)
        except Exception as exc:
            self._error("define", f"declaring the tracker_sched metrics failed: "
                                  f"{type(exc).__name__}: {exc}")

    def row(self, values: Mapping[str, object], step: int) -> None:
        """Log ``values`` at the framework's ``step``. Never raises.

        With a ``step_key`` the row carries it (a row of its own). Without one the
        values join the script's row ``step``: wandb merges every ``log(..., step=N)``
        with one N and drops a step lower than its current one, so a script on
        wandb's own counter, which is ahead, gets them in its open row instead.
        """
        if not values:
            return
        try:
            if self.step_key is not None:
                self.run.log({**values, self.step_key: int(step)})
                return
            current = getattr(self.run, "step", None)
            if isinstance(current, int) and step < current:
                self.run.log(dict(values), commit=False)
            else:
                self.run.log(dict(values), step=int(step))
        except Exception as exc:
            self._error("log", f"logging to W&B failed at step {step}: {type(exc).__name__}: "
                               f"{exc}")

    def summary(self, values: Mapping[str, object]) -> None:
        """Set ``tracker_sched/<key>`` in the run summary (None values skipped). Never raises."""
        try:
            for key, value in values.items():
                if value is not None:
                    self.run.summary[PREFIX + key] = value
        except Exception as exc:
            self._error("summary", f"writing the W&B summary failed: {type(exc).__name__}: "
                                   f"{exc}")

    def plan_row(self, rec: Recommendation) -> dict[str, object]:
        """The values a new plan adds to its row: the table and chart (empty on failure)."""
        try:
            return plan_media(rec)
        except Exception as exc:
            self._error("plan media", f"the plan table or chart failed at step {rec.step}: "
                                      f"{type(exc).__name__}: {exc}")
            return {}

    def _error(self, kind: str, message: str) -> None:
        self.errors += 1
        try:
            self._on_error(kind, message)
        except Exception:
            log.debug("on_error failed", exc_info=True)

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("tracker-sched: %s", message)
