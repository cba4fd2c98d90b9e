"""Each logging style, logged by the real library, fits from each tracker with default names.

For every style (``tests/corpus/styles.py``) and every way to read it (the MLflow
server's REST endpoints, the same store through MLflow's client on its sqlite
file, W&B offline files):

* the pre-flight stage passes with the corpus's real shape: every run usable,
  complete and unrepaired, "N configurations x 2 seeds", the budget the loop ran;
* the sweep's best configuration is the one a person names from the loop's own
  numbers (lowest mean final validation loss over the 2 seeds);
* a fit runs end to end, and its sweep summary equals the one from the same runs
  written to a sweep file and read back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.corpus.conftest import SOURCES, Corpora
from tests.corpus.styles import STYLES
from tests.tiny import tiny_config
from tracker_sched.data.preflight import preflight
from tracker_sched.data.summary import SweepSummary
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.fit.prepare import prepare
from tracker_sched.sources.files import read_sweep, write_sweep

pytestmark = pytest.mark.slow

FIT = tiny_config(max_iterations=5, eval_every=5)


def _same_summary(a: SweepSummary, b: SweepSummary) -> None:
    assert a.best_hyperparameters == b.best_hyperparameters
    assert a.best_run_id == b.best_run_id
    assert a.best_config_runs == b.best_config_runs
    assert a.best_config_mean_final_val == pytest.approx(b.best_config_mean_final_val)
    assert (a.runs_used, a.configurations, a.budgets) == (b.runs_used, b.configurations, b.budgets)
    assert a.runs_by_state == b.runs_by_state


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("style", list(STYLES))
def test_preflight_sees_the_sweep_as_logged(corpora: Corpora, style: str, source: str) -> None:
    corpus = corpora.get(style)
    result = corpora.read(style, source)
    checked = preflight(result.runs, source_issues=result.issues)
    assert checked.problems == []
    # Nothing excluded, repaired or partial: HF's double `epoch` and one-point `train_loss`
    # summary, Lightning's lr at epoch starts, the loop's last step 150 of 152 are all normal.
    assert checked.issues == [], checked.issues
    assert len(checked.runs) == len(corpus.runs) == checked.runs_read
    assert all(r.complete and r.eligible for r in checked.runs)
    assert checked.configurations.describe() == f"{corpus.configurations} configurations x 2 seeds"
    assert {r.total_steps for r in checked.runs} == {corpus.budget}
    assert checked.val_key == corpus.val_key_in(source) and checked.direction == "min"


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("style", list(STYLES))
def test_best_configuration_is_the_one_a_person_names(corpora: Corpora, style: str,
                                                      source: str) -> None:
    corpus = corpora.get(style)
    result = corpora.read(style, source)
    summary = prepare(result.runs, FIT).summary
    assert summary.best_hyperparameters == corpus.best_params()
    assert summary.best_config_runs == 2  # averaged over its two seeds
    best = corpus.best_params()
    want = [r.final_val for r in corpus.runs if all(r.params[k] == v for k, v in best.items())]
    assert summary.best_config_mean_final_val == pytest.approx(sum(want) / 2, rel=1e-5)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("style", list(STYLES))
def test_fits_and_matches_the_sweep_written_as_files(corpora: Corpora, style: str, source: str,
                                                     tmp_path: Path) -> None:
    result = corpora.read(style, source)
    fitted = fit_sweep(result.runs, FIT, workers=1, progress=False,
                       source_issues=result.issues)
    assert fitted.report.runs_used == len(result.runs)
    assert fitted.report.runs_by_state == {"finished": len(result.runs)}
    path = write_sweep(tmp_path / "sweep.jsonl", result.runs)
    from_files = read_sweep(path)
    assert from_files.issues == []
    _same_summary(fitted.bundle.manifest.sweep, prepare(from_files.runs, FIT).summary)


@pytest.mark.parametrize("style", list(STYLES))
def test_mlflow_and_wandb_agree_on_the_sweep(corpora: Corpora, style: str) -> None:
    """The same training runs, logged to both trackers at once, summarise the same."""
    server = prepare(corpora.read(style, "mlflow-server").runs, FIT).summary
    sqlite = prepare(corpora.read(style, "mlflow-sqlite").runs, FIT).summary
    offline = prepare(corpora.read(style, "wandb-offline").runs, FIT).summary
    _same_summary(server, sqlite)
    assert offline.best_hyperparameters == server.best_hyperparameters
    assert offline.best_config_mean_final_val == pytest.approx(server.best_config_mean_final_val,
                                                               rel=1e-6)
    assert (offline.runs_used, offline.configurations, offline.budgets) == (
        server.runs_used, server.configurations, server.budgets)
