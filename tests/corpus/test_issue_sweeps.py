"""The issue's two failing sweeps, through the command line a user types.

1. A plain script logging every 3 steps, 19-step epochs, a 152-step budget given
   as ``total_steps``, 32 runs (16 configurations x 2 seeds): it used to train for
   minutes and then fail with "no run reached the end of its budget" (the last
   logged step is 150), from MLflow and from W&B offline files alike.
2. ``transformers.Trainer(report_to=["mlflow"])``: it used to exclude every run
   ("train_loss has 1 usable"), make every run its own configuration, report every
   run as repaired and print "18 usable runs of 36".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.corpus.conftest import Corpora
from tracker_sched.bundle.folder import Bundle
from tracker_sched.cli import main

pytestmark = pytest.mark.slow

QUICK = ["--iterations", "5", "--ensemble", "1", "--no-plots", "--no-progress"]


def _where(corpora: Corpora, style: str, source: str) -> list[str]:
    corpus = corpora.get(style)
    if source == "wandb-offline":
        return ["--source", "wandb-offline", "--path", str(corpus.wandb_dir)]
    return ["--source", "mlflow", "--project", corpus.experiment,
            "--tracking-uri", corpora.tracking_uri(source)]


@pytest.mark.parametrize("source", ["mlflow-server", "wandb-offline"])
def test_every_3_steps_sweep_fits_and_names_the_best_configuration(
    corpora: Corpora, source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    corpus = corpora.get("every_k")
    where = _where(corpora, "every_k", source)
    assert main(["validate", *where]) == 0
    out = capsys.readouterr().out
    assert "32 usable runs of 32 (32 finished); 32 reached the end of their budget" in out
    assert "16 configurations x 2 seeds (hyperparameters: lr, momentum, schedule" in out
    assert "budget: 152 steps from config total_steps=152 (32 runs)" in out

    assert main(["fit", *where, "--out", str(tmp_path / "bundle"), *QUICK]) == 0
    out = capsys.readouterr().out
    sweep = Bundle.load(tmp_path / "bundle").manifest.sweep
    assert sweep.best_hyperparameters == corpus.best_params()  # the one a person would name
    assert sweep.best_config_runs == 2
    assert "over 2 runs: lr=" in out


def test_hf_trainer_mlflow_sweep_with_default_names(
    corpora: Corpora, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    corpus = corpora.get("hf")
    where = _where(corpora, "hf", "mlflow-server")
    assert main(["validate", *where]) == 0
    out = capsys.readouterr().out
    assert "6 usable runs of 6 (6 finished)" in out  # once each, none repaired
    assert "repaired" not in out and "excluded" not in out
    assert "3 configurations x 2 seeds (hyperparameters: learning_rate, lr_scheduler_type" in out
    assert "output_dir (run identity (name))" in out
    assert "budget: 36 steps from config num_train_epochs=3 x 12 steps per epoch" in out
    assert "validation metric: eval_loss (min)" in out

    assert main(["fit", *where, "--out", str(tmp_path / "bundle"), *QUICK]) == 0
    manifest = Bundle.load(tmp_path / "bundle").manifest
    assert manifest.metrics.train_loss == "loss"  # the series, not the 1-point summary
    assert manifest.metrics.lr == "learning_rate"
    assert manifest.sweep.best_hyperparameters == corpus.best_params()
    assert manifest.sweep.best_config_runs == 2
