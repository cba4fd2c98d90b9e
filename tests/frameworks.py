"""The tiny models and data the framework tests train, and the trackers they log to, in one
place: the HF Trainer and Lightning callback tests (tests/transformers, tests/lightning) and
the corpus of logging styles (tests/corpus/styles.py) share them.

Nothing is downloaded: the data is a seeded synthetic two-class problem, the models are a
2-layer MLP, as a ``transformers.PreTrainedModel`` built from its config and as a
``lightning.LightningModule``. transformers and lightning are imported on first use.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.wandb.sweep_helpers import offline_env

N_FEATURES = 8


def data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-class problem with a fixed nonlinear teacher (seed 1234), inputs from ``seed``."""
    teacher = torch.Generator().manual_seed(1234)
    w = torch.randn(N_FEATURES, 4, generator=teacher)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=gen)
    y = (torch.tanh(x @ w).sum(1) + 0.3 * torch.randn(n, generator=gen) > 0).long()
    return x, y


def mlp(seed: int) -> nn.Sequential:
    """The 2-layer MLP (``net[0]`` the body, ``net[2]`` the head), initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Linear(16, 2))


@contextlib.contextmanager
def trackers(root: Path, mlflow_uri: str, experiment: str, project: str) -> Iterator[Path]:
    """MLflow pointed at ``mlflow_uri``/``experiment`` and wandb offline under ``root``
    for a block; MLflow's process-wide state (tracking URI, active experiment and run)
    is put back afterwards, so no later test inherits it."""
    import mlflow
    import mlflow.tracking.fluent as fluent
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    wandb_dir = root / "wandb-home"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    saved_experiment = fluent._active_experiment_id
    saved_env = os.environ.get("MLFLOW_EXPERIMENT_ID")
    with pytest.MonkeyPatch.context() as mp, _use_tracking_uri(mlflow_uri):
        offline_env(mp, wandb_dir)
        mp.setenv("WANDB_PROJECT", project)
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        mp.setenv("DISABLE_MLFLOW_INTEGRATION", "FALSE")
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        try:
            yield wandb_dir
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            fluent._active_experiment_id = saved_experiment
            if saved_env is None:
                os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
            else:
                os.environ["MLFLOW_EXPERIMENT_ID"] = saved_env


def finish_wandb() -> None:
    """Finish the W&B run a framework left open (the HF Trainer keeps it for later evals)."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


# --------------------------------------------------------------------------- HF Trainer


@functools.cache
def _hf_classes() -> tuple[Any, Any]:
    import transformers

    class TinyConfig(transformers.PretrainedConfig):  # type: ignore[misc]
        model_type = "tracker-sched-tiny-mlp"

        def __init__(self, n_in: int = N_FEATURES, hidden: int = 16, **kw: Any) -> None:
            super().__init__(**kw)
            self.n_in, self.hidden = n_in, hidden

    class TinyModel(transformers.PreTrainedModel):  # type: ignore[misc]
        """A 2-layer MLP as a PreTrainedModel: built from its config, nothing downloaded."""

        config_class = TinyConfig

        def __init__(self, config: TinyConfig) -> None:
            super().__init__(config)
            self.net = nn.Sequential(nn.Linear(config.n_in, config.hidden), nn.Tanh(),
                                     nn.Linear(config.hidden, 2))
            self.post_init()

        def forward(self, x: torch.Tensor,
                    labels: torch.Tensor | None = None) -> dict[str, Any]:
            logits = self.net(x)
            out: dict[str, Any] = {"logits": logits}
            if labels is not None:
                out["loss"] = nn.functional.cross_entropy(logits, labels)
            return out

    return TinyConfig, TinyModel


def hf_model() -> Any:
    """A fresh tiny ``PreTrainedModel`` (seed torch first for a reproducible init): takes
    dataset items ``{"x": ..., "labels": ...}`` and returns ``logits`` and ``loss``."""
    config, model = _hf_classes()
    return model(config())


# --------------------------------------------------------------------------- Lightning


@functools.cache
def _lightning_class() -> Any:
    import lightning as L

    class TinyModule(L.LightningModule):  # type: ignore[misc]
        """The MLP with SGD (two param groups: ``lr-SGD/pg1``, ``pg2`` in
        LearningRateMonitor) or AdamW, and a StepLR that halves the lr each epoch."""

        def __init__(self, optimizer: str = "SGD", lr: float = 0.05, seed: int = 0,
                     max_epochs: int | None = None, head_lr_ratio: float = 1.0,
                     val_key: str = "val_loss") -> None:
            super().__init__()
            # What a sweep varies, logged as the run's params (the corpus reads the budget
            # from max_epochs); the test knobs are not.
            self.save_hyperparameters(ignore=["head_lr_ratio", "val_key"])
            self.head_lr_ratio, self.val_key = head_lr_ratio, val_key
            self.net = mlp(seed)
            self.val_losses: list[float] = []

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            logits = self.net(x)
            loss = nn.functional.cross_entropy(logits, y)
            self.val_losses.append(float(loss))
            if self.val_key == "val_acc":
                self.log("val_acc", (logits.argmax(1) == y).float().mean())
            else:
                self.log(self.val_key, loss)

        def configure_optimizers(self) -> Any:
            hp = self.hparams
            if hp.optimizer == "SGD":
                opt: torch.optim.Optimizer = torch.optim.SGD(
                    [{"params": self.net[0].parameters(), "lr": hp.lr},
                     {"params": self.net[2].parameters(), "lr": hp.lr * self.head_lr_ratio}],
                    lr=hp.lr, momentum=0.9)
            else:
                opt = torch.optim.AdamW(self.parameters(), lr=hp.lr)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    return TinyModule


def lightning_module(**kw: Any) -> Any:
    """A tiny ``LightningModule``; ``kw``: ``optimizer`` ("SGD" or "AdamW"), ``lr``, ``seed``,
    ``max_epochs`` (logged as params), ``head_lr_ratio`` (the SGD head group's lr over the
    body's) and ``val_key`` (``val_loss``, or ``val_acc`` for accuracy)."""
    return _lightning_class()(**kw)
