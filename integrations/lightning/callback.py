"""The advisor inside a Lightning ``Trainer``: a ``lightning.Callback`` that takes a bundle URI.

::

    import lightning as L
    from lightning.pytorch.loggers import MLFlowLogger
    from tracker_sched.integrations.lightning import AdvisorCallback

    trainer = L.Trainer(max_epochs=10, logger=MLFlowLogger(experiment_name="cnn"),
                        callbacks=[AdvisorCallback("mlflow:models:/cnn-sched@champion")])
    trainer.fit(module, train_loader, val_loader)

How it fits Lightning's hooks:

- **Budget**: ``trainer.estimated_stepping_batches`` at ``on_train_start`` (optimizer
  steps, from ``max_steps`` or ``max_epochs`` and the loader's length).
- **lr out**: at ``on_train_batch_start`` every param group of every optimizer gets
  the advisor's lr for the step about to run (keeping the groups' ratios); a
  scheduler the module configured may change the lr in between, and is overruled
  at the next batch. List this callback before ``LearningRateMonitor`` so that the
  monitor logs the lr it set.
- **Read back**: at ``on_before_optimizer_step`` the lr the optimizer is about to
  apply is read and checked against the recommendation
  (``applied_steps`` / ``mismatched_steps``).
- **Metrics in**: what the module logs (``trainer.callback_metrics``): the train
  loss after each batch, the validation metric after each validation run.
- **Write-back**: through the attached loggers: ``MLFlowLogger`` (its client and
  run) and ``WandbLogger`` (its run, on ``trainer/global_step``), at the loggers'
  cadence (``log_every_n_steps``). ``MLFlowLogger`` sets MLflow's process-wide
  tracking URI when it first starts its run; where this callback is what starts
  it, the caller's URI is put back.

Step convention: step N is the optimizer step that ``trainer.global_step == N``
is about to run (Lightning logs that batch's metrics at step N).

Training never dies because of us: a bundle that cannot load, an advisor or
tracker failure is logged once and the module's own lr stays in charge.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl

from tracker_sched.advising.following import AdvisorLike
from tracker_sched.schema import MetricMap

from ..advised import AdvisedRun
from ..mlflow import writer as mlflow_names
from ..wandb import writer as wandb_names

log = logging.getLogger("tracker_sched.integrations.lightning")

STEP_KEY = "trainer/global_step"  # the step column WandbLogger writes


class AdvisorCallback(pl.Callback):
    """Advise a Lightning run from a fitted bundle.

    Args:
        bundle: a bundle URI (``mlflow:models:/NAME@ALIAS``, ``wandb:E/P/NAME:ALIAS``,
            ``file:PATH``), a folder, a :class:`~tracker_sched.Bundle`, or a ready
            advisor (e.g. :class:`~tracker_sched.RemoteAdvisor`).
        metric_map: explicit keys where the module's names do not fit the bundle's
            (by default ``train_loss``/``loss`` and ``val_acc``/``val_loss``...,
            whichever has the bundle's sense, are found).
        planner: the planner's settings (a ``PlannerConfig``), passed to the advisor.
        replan_every: observations between replans, passed to the advisor.
        max_replans: plans a run makes at most (None: no limit), passed to the advisor.
        mode: ``"auto"`` (default: the bundle's decision), ``"generative"``, ``"control"``
            or ``"best"`` (docs/planner-modes.md).
        write_back: write recommendations through the attached loggers.
        flush_timeout_s: how long the end of training waits for MLflow writes.

    Attributes:
        advised: the shared :class:`~tracker_sched.integrations.advised.AdvisedRun`
            (its ``summary()`` says what the advisor did).

    >>> # trainer = L.Trainer(..., callbacks=[AdvisorCallback("file:bundle/")])
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
        super().__init__()
        self.advised = AdvisedRun(bundle, metric_map=metric_map, planner=planner,
                                  replan_every=replan_every, max_replans=max_replans, mode=mode)
        self.write_back = write_back
        self.flush_timeout_s = flush_timeout_s
        self.mlflow: list[mlflow_names.MlflowWriter] = []
        self.wandb: list[wandb_names.WandbWriter] = []
        self._ratios: list[list[float]] = []
        self._step = 0
        self._pending: dict[str, float] = {}  # lr values of the current step, written at cadence

    @property
    def advisor(self) -> AdvisorLike | None:
        """The advisor (None before training starts or when off)."""
        return self.advised.advisor

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Learn the budget, read the groups' lr ratios, open the loggers' writers."""
        try:
            budget = trainer.estimated_stepping_batches
            if not math.isfinite(budget):
                raise ValueError("the Trainer has no finite budget (set max_steps or max_epochs)")
            if not self.advised.start(int(budget)):
                return
            self._ratios = []
            for opt in trainer.optimizers:
                lrs = [float(g["lr"]) for g in opt.param_groups]
                self._ratios.append([lr / (lrs[0] or 1.0) for lr in lrs])
            if self.write_back and trainer.is_global_zero:
                self._open_writers(trainer)
        except Exception as exc:
            self.advised.fail("train start", f"the callback could not start, the module keeps "
                                             f"its own lr: {type(exc).__name__}: {exc}")
            return
        self._publish(int(trainer.global_step))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        """Set every optimizer's lr to the advisor's for the step about to run."""
        self._step = int(trainer.global_step)
        if not self.advised.active:
            return
        try:
            for opt, ratios in zip(trainer.optimizers, self._ratios, strict=False):
                groups = opt.param_groups
                lr = self.advised.lr(self._step, default=float(groups[0]["lr"]))
                for group, ratio in zip(groups, ratios, strict=False):
                    group["lr"] = lr * ratio
        except Exception as exc:
            self.advised.fail("lr", f"setting the lr at step {self._step} failed: "
                                    f"{type(exc).__name__}: {exc}")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Any) -> None:
        """Read back the lr the optimizer is about to apply."""
        if not self.advised.active:
            return
        try:
            applied = float(optimizer.param_groups[0]["lr"])
            self._pending["applied"] = applied
            wanted = self.advised.recommended(self._step)
            if wanted is not None:
                self._pending["recommended"] = wanted
            self.advised.applied(self._step, applied)
        except Exception as exc:
            self.advised.fail("read back", f"reading the applied lr failed: "
                                           f"{type(exc).__name__}: {exc}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Feed the advisor the train loss the module logged; write at the loggers' cadence."""
        if not self.advised.active:
            return
        step = self._step
        try:
            metrics = _scalars(trainer.callback_metrics)
            loss_key = self.advised.key_for("train_loss", metrics)
            self.advised.observe(step, train_loss=metrics.get(loss_key) if loss_key else None,
                                 lr=self._pending.get("applied"))
            every = max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1))
            if (step + 1) % every == 0 or step == 0:
                self._write(step)
            self._pending = {}
            self._publish(step)
        except Exception as exc:
            self.advised.fail("batch end", f"at step {step}: {type(exc).__name__}: {exc}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Feed the advisor the validation metric, at the step Lightning logs it at."""
        if not self.advised.active or trainer.sanity_checking:
            return
        step = int(trainer.global_step)
        try:
            metrics = _scalars(trainer.callback_metrics)
            key = self.advised.key_for("val_metric", metrics)
            if key is not None:
                self.advised.observe(step, val_metric=metrics[key])
                self._publish(step)
        except Exception as exc:
            self.advised.fail("validation end", f"at step {step}: {type(exc).__name__}: {exc}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write what the advisor did, flush the MLflow writers."""
        summary = self.advised.summary()
        for wandb_writer in self.wandb:
            wandb_writer.summary(summary)
        for mlflow_writer in self.mlflow:
            mlflow_writer.summary(summary)
            mlflow_writer.close(self.flush_timeout_s)

    # ------------------------------------------------------------------ write-back
    def _open_writers(self, trainer: pl.Trainer) -> None:
        from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

        for logger in trainer.loggers:
            try:
                if isinstance(logger, MLFlowLogger):
                    with _caller_tracking_uri():
                        client, run_id = logger.experiment, logger.run_id
                    if run_id is None:
                        continue
                    writer = mlflow_names.MlflowWriter(client, str(run_id),
                                                       flush_timeout_s=self.flush_timeout_s)
                    writer.bundle_tags(self.advised.bundle_uri, self.advised.model_version,
                                       {"tracker_sched.lr_control": "optimizer"})
                    self.mlflow.append(writer)
                elif isinstance(logger, WandbLogger):
                    wandb_writer = wandb_names.WandbWriter(logger.experiment, step_key=STEP_KEY,
                                                           on_error=self.advised.warn_once)
                    wandb_writer.define_metrics()
                    self.wandb.append(wandb_writer)
            except Exception as exc:
                self.advised.warn_once(f"logger {type(logger).__name__}",
                                       f"no write-back through {type(logger).__name__}: "
                                       f"{type(exc).__name__}: {exc}")

    def _write(self, step: int) -> None:
        rec = self.advised.plan
        lrs = self._pending
        for mlflow_writer in self.mlflow:
            names = {"recommended": mlflow_names.LR_RECOMMENDED,
                     "applied": mlflow_names.LR_APPLIED}
            mlflow_writer.metrics({names[k]: v for k, v in lrs.items()}, step)
        for wandb_writer in self.wandb:
            names = {"recommended": wandb_names.LR_RECOMMENDED,
                     "applied": wandb_names.LR_APPLIED}
            row: dict[str, object] = {names[k]: v for k, v in lrs.items()}
            if rec is not None:
                row[wandb_names.STATUS] = wandb_names.STATUS_CODES[rec.status]
                if rec.predicted_final is not None:
                    row[wandb_names.PREDICTED_FINAL] = rec.predicted_final
            wandb_writer.row(row, step)

    def _publish(self, step: int) -> None:
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


def _scalars(metrics: Any) -> dict[str, float]:
    """``trainer.callback_metrics`` (tensors) as floats; what is no scalar is left out."""
    out: dict[str, float] = {}
    for key, value in dict(metrics).items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


@contextlib.contextmanager
def _caller_tracking_uri() -> Iterator[None]:
    """Put MLflow's process-wide tracking URI (and ``MLFLOW_TRACKING_URI``) back as they
    were: ``MLFlowLogger.experiment`` sets its own the first time it is read."""
    from mlflow.tracking._tracking_service import utils

    before, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        utils._tracking_uri = before
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


__all__ = ["STEP_KEY", "AdvisorCallback"]
