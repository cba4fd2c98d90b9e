"""Sweeps logged by the real libraries, each in the way its users log: the corpus.

Every style trains a tiny model on local synthetic data (no download) for a
few dozen steps per run, several configurations x 2 seeds, and logs each run
through the library's own tracker integration, to a real MLflow server and to
W&B offline files at once:

* ``hf``: ``transformers.Trainer(report_to=["mlflow", "wandb"])``, budget from
  ``num_train_epochs`` (``max_steps=-1``), the loss every 5 steps (not dividing
  the 36-step budget), the eval loss once per epoch;
* ``lightning``: ``MLFlowLogger`` + ``WandbLogger`` + ``LearningRateMonitor``
  (lr once per epoch, under ``lr-SGD/pg1`` or ``lr-AdamW``), budget from
  ``max_epochs`` in the hyperparameters;
* ``every_k``: the issue's first failure: a plain loop logging every 3 steps, 19
  steps per epoch, a 152-step budget as ``total_steps``: 16 configurations x 2
  seeds, last logged step 150;
* ``per_epoch``: a plain loop logging once per epoch with ``epochs`` as the only
  budget (W&B without ``step=``, so ``_step`` is the epoch).

Each :class:`Corpus` keeps what the training loop itself saw (final validation
loss per run), so a test can name the best configuration the way a person
would: the mean over its seeds, read off the loop, not off our readers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.frameworks import data, finish_wandb, hf_model, lightning_module, mlp, trackers


@dataclass
class LoggedRun:
    name: str
    params: dict[str, Any]  # the sweep's values for this run, seed excluded
    seed: int
    final_val: float


@dataclass
class Corpus:
    style: str
    experiment: str  # MLflow experiment name
    wandb_dir: Path
    budget: int  # every run's budget in steps, as the loop ran it
    configurations: int
    val_key: str  # as MLflow shows it
    wandb_val_key: str | None = None  # where W&B names it otherwise (HF: eval/loss)
    runs: list[LoggedRun] = field(default_factory=list)

    def val_key_in(self, source: str) -> str:
        return (self.wandb_val_key or self.val_key) if source.startswith("wandb") else self.val_key

    def best_params(self) -> dict[str, Any]:
        """The configuration a person would name: lowest mean final val loss over its seeds,
        by the sweep's values that vary (a value every run shares names no configuration)."""
        keys = sorted({k for r in self.runs for k in r.params})
        varying = [k for k in keys if len({repr(r.params.get(k)) for r in self.runs}) > 1]
        groups: dict[tuple[tuple[str, Any], ...], list[float]] = {}
        for run in self.runs:
            groups.setdefault(tuple((k, run.params.get(k)) for k in varying), []).append(
                run.final_val)
        best = min(groups, key=lambda k: sum(groups[k]) / len(groups[k]))
        return dict(best)


# --------------------------------------------------------------------------- HF Trainer


def hf_trainer(root: Path, mlflow_uri: str) -> Corpus:
    """3 configurations (scheduler, lr) x 2 seeds through ``transformers.Trainer``."""
    from transformers import Trainer, TrainingArguments

    x, y = data(0, 96 + 128)
    train = [{"x": x[i], "labels": y[i]} for i in range(96)]
    evals = [{"x": x[i], "labels": y[i]} for i in range(96, 224)]
    corpus = Corpus("hf", "corpus-hf", root / "wandb-home", budget=36, configurations=3,
                    val_key="eval_loss", wandb_val_key="eval/loss")
    configs = [("linear", 0.3), ("cosine", 0.05), ("constant", 0.005)]
    with trackers(root, mlflow_uri, corpus.experiment, "corpus-hf"):
        for sched, lr in configs:
            for seed in (0, 1):
                torch.manual_seed(seed)
                args = TrainingArguments(
                    output_dir=str(root / f"hf-{sched}-{lr}-s{seed}"), learning_rate=lr,
                    lr_scheduler_type=sched, seed=seed, num_train_epochs=3, max_steps=-1,
                    per_device_train_batch_size=8, logging_steps=5, eval_strategy="epoch",
                    save_strategy="no", report_to=["mlflow", "wandb"], use_cpu=True,
                    disable_tqdm=True, dataloader_num_workers=0, log_level="error",
                    warmup_steps=0,
                )
                trainer = Trainer(model=hf_model(), args=args,
                                  train_dataset=train, eval_dataset=evals)
                trainer.train()
                finish_wandb()  # the Trainer leaves its W&B run open for later evals
                final = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
                assert trainer.state.global_step == corpus.budget
                corpus.runs.append(LoggedRun(f"hf-{sched}-{lr}-s{seed}",
                                             {"lr_scheduler_type": sched, "learning_rate": lr},
                                             seed, float(final[-1])))
    return corpus


# --------------------------------------------------------------------------- Lightning


def lightning(root: Path, mlflow_uri: str) -> Corpus:
    """3 configurations (optimizer, lr) x 2 seeds through Lightning's loggers."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    x, y = data(1, 88 + 128)
    train = torch.utils.data.TensorDataset(x[:88], y[:88])  # 11 steps per epoch
    val = torch.utils.data.TensorDataset(x[88:], y[88:])
    corpus = Corpus("lightning", "corpus-lightning", root / "wandb-home", budget=44,
                    configurations=3, val_key="val_loss")
    configs = [("SGD", 0.3), ("SGD", 0.01), ("AdamW", 0.03)]
    with trackers(root, mlflow_uri, corpus.experiment, "corpus-lightning") as wandb_dir:
        for opt_name, lr in configs:
            for seed in (0, 1):
                name = f"pl-{opt_name}-{lr}-s{seed}"
                L.seed_everything(seed, verbose=False)
                module = lightning_module(optimizer=opt_name, lr=lr, seed=seed, max_epochs=4)
                loggers = [MLFlowLogger(experiment_name=corpus.experiment,
                                        tracking_uri=mlflow_uri, run_name=name),
                           WandbLogger(project="corpus-lightning", save_dir=str(wandb_dir),
                                       offline=True, name=name)]
                trainer = L.Trainer(
                    max_epochs=4, logger=loggers, log_every_n_steps=3,
                    callbacks=[LearningRateMonitor(logging_interval="epoch")],
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu", devices=1,
                    num_sanity_val_steps=0,
                )
                trainer.fit(module, torch.utils.data.DataLoader(train, batch_size=8),
                            torch.utils.data.DataLoader(val, batch_size=128))
                finish_wandb()
                assert trainer.global_step == corpus.budget
                corpus.runs.append(LoggedRun(name, {"optimizer": opt_name, "lr": lr}, seed,
                                             module.val_losses[-1]))
    return corpus


# --------------------------------------------------------------------------- plain loops


def _plain_sweep(
    root: Path, mlflow_uri: str, corpus: Corpus, configs: list[dict[str, Any]],
    epochs: int, batches: int, log: Callable[[int, int], bool], by_epoch: bool,
) -> Corpus:
    """A plain PyTorch loop, logged by hand through ``mlflow`` and ``wandb``.

    ``log(step, epoch_end)`` says whether to log after an optimizer step. With
    ``by_epoch`` the loop logs once per epoch as Keras-style callbacks do: MLflow at
    ``step=epoch`` (0-based), W&B without ``step=`` (its ``_step`` counts the calls) and
    with the epoch as a column.
    """
    import mlflow
    import wandb

    total = epochs * batches
    x, y = data(2, batches * 16 + 256)
    xt, yt, xv, yv = x[: batches * 16], y[: batches * 16], x[batches * 16:], y[batches * 16:]
    with trackers(root, mlflow_uri, corpus.experiment, corpus.experiment) as wandb_dir:
        exp_id = mlflow.set_experiment(corpus.experiment).experiment_id
        for params in configs:
            for seed in (0, 1):
                name = "-".join(f"{v}" for v in params.values()) + f"-s{seed}"
                config = {**params, "seed": seed, "batch_size": 16, "epochs": epochs,
                          "run_name": name, "output_dir": str(root / "out" / name)}
                if not by_epoch:
                    config["total_steps"] = total
                model = mlp(seed)
                opt = torch.optim.SGD(model.parameters(), lr=params["lr"],
                                      momentum=params.get("momentum", 0.0))
                gen = torch.Generator().manual_seed(seed)
                run = wandb.init(project=corpus.experiment, name=name, config=config,
                                 dir=str(wandb_dir), mode="offline",
                                 settings=wandb.Settings(silent=True, x_disable_stats=True,
                                                         console="off"))
                val = math.nan
                with mlflow.start_run(experiment_id=exp_id, run_name=name):
                    mlflow.log_params(config, synchronous=False)
                    step = 0
                    for epoch in range(epochs):
                        order = torch.randperm(xt.shape[0], generator=gen)
                        for b in range(batches):
                            idx = order[b * 16:(b + 1) * 16]
                            lr = params["lr"] * (0.5 * (1 + math.cos(math.pi * step / total))
                                                 if params.get("schedule") == "cosine" else 1.0)
                            for group in opt.param_groups:
                                group["lr"] = lr
                            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                            opt.zero_grad()
                            loss.backward()  # type: ignore[no-untyped-call]
                            opt.step()
                            step += 1
                            if not log(step, b == batches - 1):
                                continue
                            with torch.no_grad():
                                val = float(nn.functional.cross_entropy(model(xv), yv))
                            row = {"train_loss": float(loss), "lr": lr, "val_loss": val}
                            if by_epoch:
                                mlflow.log_metrics(row, step=epoch, synchronous=False)
                                run.log({**row, "epoch": epoch})
                            else:
                                mlflow.log_metrics(row, step=step, synchronous=False)
                                run.log(row, step=step)
                run.finish()
                corpus.runs.append(LoggedRun(name, params, seed, val))
    return corpus


def every_k(root: Path, mlflow_uri: str) -> Corpus:
    """The issue's sweep: every 3 steps, 19-step epochs, 8 epochs = 152 steps, 32 runs."""
    configs = [{"lr": lr, "momentum": m, "schedule": s} for lr in (0.003, 0.03, 0.3, 1.0)
               for m in (0.0, 0.9) for s in ("constant", "cosine")]
    corpus = Corpus("every_k", "corpus-every-k", root / "wandb-home", budget=152,
                    configurations=16, val_key="val_loss")
    return _plain_sweep(root, mlflow_uri, corpus, configs, epochs=8, batches=19,
                        log=lambda step, _: step % 3 == 0, by_epoch=False)


def per_epoch(root: Path, mlflow_uri: str) -> Corpus:
    """A loop that logs once per epoch, its budget only ``epochs``: 3 configurations x 2 seeds."""
    configs = [{"lr": lr, "schedule": "cosine"} for lr in (0.01, 0.1, 1.0)]
    corpus = Corpus("per_epoch", "corpus-per-epoch", root / "wandb-home", budget=8,
                    configurations=3, val_key="val_loss")
    return _plain_sweep(root, mlflow_uri, corpus, configs, epochs=8, batches=10,
                        log=lambda _, epoch_end: epoch_end, by_epoch=True)


STYLES: dict[str, Callable[[Path, str], Corpus]] = {
    "hf": hf_trainer, "lightning": lightning, "every_k": every_k, "per_epoch": per_epoch,
}
