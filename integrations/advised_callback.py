"""What the framework callbacks share beyond
:class:`~tracker_sched.integrations.advised.AdvisedRun`: their options, the advisor they
expose, and the write-back to the trackers.

The HF Trainer and Lightning callbacks find the budget, the metrics, the optimizer and
the trackers' runs in different places; once they have them, writing the recommended and
applied lrs, publishing a new plan and summing up at the end are the same. A callback
subclasses :class:`AdvisedCallback` beside its framework's callback class, appends its
writers to :attr:`~AdvisedCallback.mlflow` / :attr:`~AdvisedCallback.wandb`, and calls
:meth:`~AdvisedCallback._write`, :meth:`~AdvisedCallback._publish` and
:meth:`~AdvisedCallback._finish`. Importing this module imports no framework and no tracker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tracker_sched.advising.following import AdvisorLike
from tracker_sched.schema import MetricMap

from .advised import AdvisedRun
from .mlflow import writer as mlflow_names
from .wandb import writer as wandb_names


class AdvisedCallback:
    """The options and the write-back of a framework callback.

    Args:
        bundle: a bundle URI (``mlflow:models:/NAME@ALIAS``, ``wandb:E/P/NAME:ALIAS``,
            ``file:PATH``), a folder, a :class:`~tracker_sched.Bundle`, or a ready
            advisor (e.g. :class:`~tracker_sched.RemoteAdvisor`).
        metric_map: explicit keys where the run's names do not fit the bundle's.
        planner: the planner's settings (a ``PlannerConfig``), passed to the advisor.
        replan_every: observations between replans, passed to the advisor.
        max_replans: plans a run makes at most (None: no limit), passed to the advisor.
        mode: ``"auto"`` (default: the bundle's decision), ``"generative"``, ``"control"``
            or ``"best"`` (docs/planner-modes.md).
        write_back: write recommendations to the run's trackers.
        flush_timeout_s: how long the end of training waits for MLflow writes.

    Attributes:
        advised: the shared :class:`~tracker_sched.integrations.advised.AdvisedRun`
            (its ``summary()`` says what the advisor did).
    """

    def __init__(
        self,
        bundle: Any,
        *,
        metric_map: MetricMap | None = None,
        planner: Any = None,
        replan_every: int = 10,
        max_replans: int | None = 1,
        mode: str | None = None,
        write_back: bool = True,
        flush_timeout_s: float = 10.0,
    ) -> None:
        super().__init__()  # the framework's callback class, next in the MRO
        self.advised = AdvisedRun(bundle, metric_map=metric_map, planner=planner,
                                  replan_every=replan_every, max_replans=max_replans, mode=mode)
        self.write_back = write_back
        self.flush_timeout_s = flush_timeout_s
        self.mlflow: list[mlflow_names.MlflowWriter] = []
        self.wandb: list[wandb_names.WandbWriter] = []
        self._init_state()

    def _init_state(self) -> None:
        """The framework side's own state, set up once at construction."""

    @property
    def advisor(self) -> AdvisorLike | None:
        """The advisor (None before training starts or when off)."""
        return self.advised.advisor

    def _begin(self, event: str, owner: str, budget: Callable[[], int],
               take_over: Callable[[], object], open_writers: Callable[[], object]) -> bool:
        """Start advising: learn the budget (the advisor is built), take over the lr, open
        the writers (with ``write_back``; ``open_writers`` knows whether this process writes).
        Never raises: a failure leaves ``owner``'s own lr in charge. True when the run is
        advised."""
        try:
            if not self.advised.start(budget()):
                return False
            take_over()
            if self.write_back:
                open_writers()
        except Exception as exc:
            self.advised.fail(event, f"the callback could not start, the {owner} keeps its "
                                     f"own lr: {type(exc).__name__}: {exc}")
            return False
        return True

    def _write(self, step: int, lrs: Mapping[str, float]) -> None:
        """The recommended and applied lr at ``step`` (keys ``recommended``, ``applied``), and
        to W&B the plan's status and prediction."""
        rec = self.advised.plan
        if lrs:
            names = {"recommended": mlflow_names.LR_RECOMMENDED,
                     "applied": mlflow_names.LR_APPLIED}
            for mlflow_writer in self.mlflow:
                mlflow_writer.metrics({names[k]: v for k, v in lrs.items()}, step)
        if not lrs and rec is None:
            return
        names = {"recommended": wandb_names.LR_RECOMMENDED, "applied": wandb_names.LR_APPLIED}
        row: dict[str, object] = {names[k]: v for k, v in lrs.items()}
        if rec is not None:
            row[wandb_names.STATUS] = wandb_names.STATUS_CODES[rec.status]
            if rec.predicted_final is not None:
                row[wandb_names.PREDICTED_FINAL] = rec.predicted_final
        for wandb_writer in self.wandb:
            wandb_writer.row(dict(row), step)

    def _publish(self, step: int) -> None:
        """A plan not published yet goes to every writer."""
        rec = self.advised.take_new_plan()
        if rec is None:
            return
        for mlflow_writer in self.mlflow:
            mlflow_writer.publish(rec)
        for wandb_writer in self.wandb:
            row = wandb_writer.plan_row(rec)
            row[wandb_names.STATUS] = wandb_names.STATUS_CODES[rec.status]
            wandb_writer.row(row, step)
            wandb_writer.summary({"status_name": rec.status, "plan_step": rec.step,
                                  "reason": self.advised.summary().get("reason"),
                                  "model_version": rec.model_version})

    def _finish(self) -> None:
        """What the advisor did, to every writer; the MLflow writers flushed."""
        summary = self.advised.summary()
        for wandb_writer in self.wandb:
            wandb_writer.summary(summary)
        for mlflow_writer in self.mlflow:
            mlflow_writer.summary(summary)
            mlflow_writer.close(self.flush_timeout_s)


__all__ = ["AdvisedCallback"]
