"""The advisor inside ``transformers.Trainer``: a ``TrainerCallback`` that takes a bundle URI.

::

    from transformers import Trainer, TrainingArguments
    from tracker_sched.integrations.transformers import AdvisorCallback

    args = TrainingArguments(..., max_steps=840, report_to=["mlflow"])
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      compute_metrics=accuracy,
                      callbacks=[AdvisorCallback("mlflow:models:/cnn-sched@champion")])
    trainer.train()

How it fits the Trainer's own extension points:

- **Budget**: ``state.max_steps`` at ``on_train_begin`` (the Trainer has resolved
  ``max_steps`` or ``num_train_epochs`` by then).
- **Metrics in**: what the Trainer logs, at ``on_log``: ``loss`` and
  ``learning_rate`` every ``logging_steps``, ``eval_*`` at each evaluation
  (``on_evaluate`` catches an evaluation that bypassed ``on_log``).
- **lr out**: the Trainer's own ``LambdaLR`` (every ``lr_scheduler_type`` of
  ``get_scheduler`` but ``reduce_lr_on_plateau``) is driven by the advisor: its
  ``lr_lambdas`` are replaced so that the scheduler the Trainer steps returns
  ``advisor_lr / base_lr``, keeping the param groups' ratios. The Trainer's logged
  ``learning_rate`` is then the advisor's, read back and checked at each log
  (``applied_steps`` / ``mismatched_steps``). Another scheduler: the optimizer's
  lrs are set at each ``on_step_begin`` instead (a warning says so).
- **Write-back**: through the trackers that ``report_to`` names and that have a
  live run (MLflow's active run, ``wandb.run``); see
  :mod:`tracker_sched.integrations.mlflow.writer` and
  :mod:`tracker_sched.integrations.wandb.writer` for the names.

Step convention: the Trainer logs ``learning_rate`` at global step N as the lr of
the optimizer step that made step N; the advisor is asked ``lr(N)`` for that step,
so ``tracker_sched.lr_recommended`` and ``learning_rate`` line up at every N.

Training never dies because of us: a bundle that cannot load, an advisor or
tracker failure is logged once and the Trainer's own schedule stays in charge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from transformers import TrainerCallback

from ..advised import AdvisedRun, number
from ..advised_callback import AdvisedCallback
from ..mlflow import writer as mlflow_names
from ..wandb import writer as wandb_names

log = logging.getLogger("tracker_sched.integrations.transformers")

STEP_KEY = "train/global_step"  # the W&B step column of the Trainer's WandbCallback


class AdvisorCallback(AdvisedCallback, TrainerCallback):
    """Advise a ``transformers.Trainer`` run from a fitted bundle.

    Takes the arguments of :class:`~tracker_sched.integrations.advised_callback.AdvisedCallback`.
    By default the Trainer's ``loss``, ``learning_rate`` and ``eval_accuracy`` /
    ``eval_loss``, whichever has the bundle's sense, are found (``metric_map`` where they do
    not fit); with ``write_back`` the recommendations go to the ``report_to`` trackers.

    Attributes:
        advised: the shared :class:`~tracker_sched.integrations.advised.AdvisedRun`
            (its ``summary()`` says what the advisor did).
        lr_control: ``"scheduler"`` (the Trainer's LambdaLR is driven), ``"optimizer"``
            (the lrs are set each step) or None (not advising).

    >>> # trainer = Trainer(..., callbacks=[AdvisorCallback("mlflow:models:/m@champion")])
    """

    def _init_state(self) -> None:
        self.lr_control: Literal["scheduler", "optimizer"] | None = None
        self._restore: Callable[[], None] | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._ratios: list[float] = []
        self._val_seen: int | None = None

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Learn the budget, take over the lr, open the trackers' writers. Never raises."""

        def open_writers() -> None:
            if state.is_world_process_zero:
                self._open_writers(args)

        if self._begin("train begin", "Trainer", lambda: int(state.max_steps),
                       lambda: self._take_over(kwargs.get("optimizer"), kwargs.get("lr_scheduler")),
                       open_writers):
            self._publish(0)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Without a LambdaLR to drive: set the optimizer's lrs for the coming step."""
        if self.lr_control == "optimizer" and self._optimizer is not None:
            self._set_optimizer(int(state.global_step) + 1)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        """Read what the Trainer logged, check the applied lr, feed the advisor, write back."""
        if not self.advised.active or not logs or "train_runtime" in logs:
            return  # the end-of-training summary row is an average, not a step's value
        step = int(state.global_step)
        try:
            rows = self._lr_rows(step, logs)
            if self.advised.key_for("val_metric", logs) is not None:
                self._val_seen = step
            self.advised.observe(step, logs)
            self._write(step, rows)
            self._publish(step)
        except Exception as exc:
            self.advised.fail("on_log", f"on_log at step {step}: {type(exc).__name__}: {exc}")

    def on_evaluate(self, args: Any, state: Any, control: Any,
                    metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """An evaluation whose metrics did not come through ``on_log`` is observed here."""
        step = int(state.global_step)
        if not self.advised.active or not metrics or self._val_seen == step:
            return
        self._val_seen = step
        self.advised.observe(step, {k: v for k, v in metrics.items()
                                    if self.advised.key_for("val_metric", {k: v}) == k})
        self._publish(step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write what the advisor did, flush the writers, give the scheduler back."""
        self._finish()
        if self._restore is not None:
            self._restore()
            self._restore = None

    # ------------------------------------------------------------------ lr control
    def _take_over(self, optimizer: Any, scheduler: Any) -> None:
        lambda_lr = scheduler
        if not isinstance(lambda_lr, torch.optim.lr_scheduler.LambdaLR):
            lambda_lr = getattr(scheduler, "scheduler", None)  # accelerate's wrapper
        if isinstance(lambda_lr, torch.optim.lr_scheduler.LambdaLR) and lambda_lr.base_lrs[0] > 0:
            self._drive(lambda_lr)
            self.lr_control = "scheduler"
            return
        opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
        if opt is None or not getattr(opt, "param_groups", None):
            raise ValueError("the Trainer passed no optimizer to its callbacks")
        self._optimizer = opt
        lrs = [float(g["lr"]) for g in opt.param_groups]
        self._ratios = [lr / (lrs[0] or 1.0) for lr in lrs]
        self.lr_control = "optimizer"
        self.advised.warn_once("scheduler", f"the Trainer's scheduler is "
                                            f"{type(scheduler).__name__}, not a LambdaLR: the "
                                            "optimizer's lrs are set before each step, and the "
                                            "Trainer's logged learning_rate is its scheduler's")
        self._set_optimizer(1)

    def _drive(self, sched: torch.optim.lr_scheduler.LambdaLR) -> None:
        """Make ``sched`` return the advisor's lr (its own where the advisor has none)."""
        base0 = float(sched.base_lrs[0])
        originals = list(sched.lr_lambdas)
        advised = self.advised

        def follow(own: Callable[[int], float]) -> Callable[[int], float]:
            def factor(epoch: int) -> float:  # epoch = optimizer steps done = next step - 1
                default = base0 * float(own(epoch))
                return advised.lr(epoch + 1, default=default) / base0

            return factor

        sched.lr_lambdas = [follow(own) for own in originals]
        # The first step's lr was set when the scheduler was built: set it again, ours now.
        for group, base, factor in zip(sched.optimizer.param_groups, sched.base_lrs,
                                       sched.lr_lambdas, strict=False):
            group["lr"] = base * factor(sched.last_epoch)
        sched._last_lr = [float(g["lr"]) for g in sched.optimizer.param_groups]

        def restore() -> None:
            sched.lr_lambdas = originals

        self._restore = restore

    def _set_optimizer(self, step: int) -> None:
        assert self._optimizer is not None
        groups = self._optimizer.param_groups
        lr = self.advised.lr(step, default=float(groups[0]["lr"]))
        for group, ratio in zip(groups, self._ratios, strict=False):
            group["lr"] = lr * ratio

    # ------------------------------------------------------------------ write-back
    def _open_writers(self, args: Any) -> None:
        report = getattr(args, "report_to", None) or []
        report = [report] if isinstance(report, str) else list(report)
        every = "all" in report
        if every or "mlflow" in report:
            writer = _mlflow_writer(self.advised, self.flush_timeout_s, str(self.lr_control))
            if writer is not None:
                self.mlflow.append(writer)
        if every or "wandb" in report:
            import wandb

            if wandb.run is None:
                self.advised.warn_once("wandb", "report_to names wandb but there is no W&B "
                                                "run: nothing written back to W&B")
            else:
                wandb_writer = wandb_names.WandbWriter(wandb.run, step_key=STEP_KEY,
                                                       on_error=self.advised.warn_once)
                wandb_writer.define_metrics()
                self.wandb.append(wandb_writer)

    def _lr_rows(self, step: int, logs: Mapping[str, Any]) -> dict[str, float]:
        """The recommended and applied lr at ``step`` (tracker-neutral keys)."""
        out: dict[str, float] = {}
        applied = number(logs.get("learning_rate"))
        wanted = self.advised.recommended(step)
        if applied is not None:
            out["applied"] = applied
            self.advised.applied(step, applied)
        if wanted is not None and applied is not None:
            out["recommended"] = wanted
        return out


def _mlflow_writer(advised: AdvisedRun, flush_timeout_s: float,
                   lr_control: str) -> mlflow_names.MlflowWriter | None:
    """A writer to MLflow's active run (the one the Trainer's MLflowCallback started)."""
    mlflow = mlflow_names.require_mlflow()
    from mlflow.tracking import MlflowClient

    run = mlflow.active_run()
    if run is None:
        advised.warn_once("mlflow", "report_to names mlflow but no MLflow run is active: "
                                    "nothing written back to MLflow")
        return None
    writer = mlflow_names.MlflowWriter(MlflowClient(mlflow.get_tracking_uri()),
                                       str(run.info.run_id), flush_timeout_s=flush_timeout_s)
    writer.bundle_tags(advised.bundle_uri, advised.model_version,
                       {"tracker_sched.lr_control": lr_control})
    return writer


__all__ = ["STEP_KEY", "AdvisorCallback"]
