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
  cadence (``log_every_n_steps``).
- **Tracking URI**: ``MLFlowLogger`` points MLflow's process-wide tracking URI at its
  own store when its run starts, which the Trainer does in its setup, before any
  callback hook. At ``setup`` this callback puts back the caller's URI (and
  ``MLFLOW_TRACKING_URI``) as they were when the callback was made, so that an
  ``mlflow:models:/`` bundle is read from the caller's store and what the script logs
  after ``fit`` goes where it went before. The logger is unaffected: it writes through
  its own client. Make the callback after setting the URI.

Step convention: step N is the optimizer step that ``trainer.global_step == N``
is about to run (Lightning logs that batch's metrics at step N).

Training never dies because of us: a bundle that cannot load, an advisor or
tracker failure is logged once and the module's own lr stays in charge.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

import lightning.pytorch as pl

from ..advised_callback import AdvisedCallback
from ..mlflow import writer as mlflow_names
from ..wandb import writer as wandb_names

log = logging.getLogger("tracker_sched.integrations.lightning")

STEP_KEY = "trainer/global_step"  # the step column WandbLogger writes


class AdvisorCallback(AdvisedCallback, pl.Callback):
    """Advise a Lightning run from a fitted bundle.

    Takes the arguments of :class:`~tracker_sched.integrations.advised_callback.AdvisedCallback`.
    By default the metric names ``train_loss``/``loss`` and ``val_acc``/``val_loss``...,
    whichever has the bundle's sense, are found (``metric_map`` where they do not fit); with
    ``write_back`` the recommendations go through the attached MLflow and W&B loggers.

    Attributes:
        advised: the shared :class:`~tracker_sched.integrations.advised.AdvisedRun`
            (its ``summary()`` says what the advisor did).

    >>> # trainer = L.Trainer(..., callbacks=[AdvisorCallback("file:bundle/")])
    """

    def _init_state(self) -> None:
        self._ratios: list[list[float]] = []  # per optimizer: each group's lr / the first's
        self._step = 0
        self._pending: dict[str, float] = {}  # lr values of the current step, written at cadence
        self._callers_uri = _tracking_uri_state()

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Put back the caller's MLflow tracking URI where an ``MLFlowLogger`` replaced it."""
        try:
            from lightning.pytorch.loggers import MLFlowLogger

            theirs = {getattr(lg, "_tracking_uri", None) for lg in trainer.loggers
                      if isinstance(lg, MLFlowLogger)}
            now, callers = _tracking_uri_state(), self._callers_uri
            # A caller who set no URI gets MLflow's default, whichever store the logger chose.
            if callers != (None, None) and now != callers and now[0] in theirs - {None}:
                _set_tracking_uri_state(self._callers_uri)
        except Exception as exc:  # the logger's store is still written; only the URI stays
            self.advised.warn_once("tracking uri", "could not put back the caller's MLflow "
                                                   f"tracking URI: {type(exc).__name__}: {exc}")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Learn the budget, read the groups' lr ratios, open the loggers' writers."""

        def budget() -> int:
            steps = trainer.estimated_stepping_batches
            if not math.isfinite(steps):
                raise ValueError("the Trainer has no finite budget (set max_steps or max_epochs)")
            return int(steps)

        def read_ratios() -> None:
            self._ratios = []
            for opt in trainer.optimizers:
                lrs = [float(g["lr"]) for g in opt.param_groups]
                self._ratios.append([lr / (lrs[0] or 1.0) for lr in lrs])

        def open_writers() -> None:
            if trainer.is_global_zero:
                self._open_writers(trainer)

        if self._begin("train start", "module", budget, read_ratios, open_writers):
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
                self._write(step, self._pending)
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
        self._finish()

    # ------------------------------------------------------------------ write-back
    def _open_writers(self, trainer: pl.Trainer) -> None:
        from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

        for logger in trainer.loggers:
            try:
                if isinstance(logger, MLFlowLogger):
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


def _scalars(metrics: Any) -> dict[str, float]:
    """``trainer.callback_metrics`` (tensors) as floats; what is no scalar is left out."""
    out: dict[str, float] = {}
    for key, value in dict(metrics).items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


def _tracking_uri_state() -> tuple[str | None, str | None]:
    """MLflow's process-wide tracking URI as ``set_tracking_uri`` left it (None: never set)
    and ``MLFLOW_TRACKING_URI``, read without importing mlflow (not imported: never set)."""
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    return getattr(utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")


def _set_tracking_uri_state(state: tuple[str | None, str | None]) -> None:
    from mlflow.tracking._tracking_service import utils

    utils._tracking_uri = state[0]  # type: ignore[assignment]  # typed None, holds str
    if state[1] is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = state[1]


__all__ = ["STEP_KEY", "AdvisorCallback"]
