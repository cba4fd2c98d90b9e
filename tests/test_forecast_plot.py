"""forecast.png: the runs it shows, by name, each forecast by a model that never saw it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny import tiny_config
from tracker_sched.fit.forecast_plot import figure_title, plot_fit_forecasts, shown_runs
from tracker_sched.fit.generative import FitResult, fit_sweep
from tracker_sched.model.forecast import Forecaster
from tracker_sched.sources.files import read_sweep

pytest.importorskip("matplotlib")

FIXTURE = Path(__file__).parent / "fixtures" / "cnn_sweep_small.jsonl"


@pytest.fixture(scope="module")
def cross_fitted() -> FitResult:
    return fit_sweep(read_sweep(FIXTURE).runs, tiny_config(ensemble=3, max_iterations=10),
                     workers=1, progress=False)


def test_each_run_is_shown_with_the_member_that_held_it_out(cross_fitted: FitResult,
                                                             tmp_path: Path) -> None:
    prep = cross_fitted.prepared
    assert prep.cross_fit
    rows = shown_runs(cross_fitted, max_runs=6)
    assert len(rows) == 6
    for i, fold in rows:
        assert fold is not None
        assert i in prep.folds[fold][1]  # held out by that member
        assert i not in prep.folds[fold][0]  # which never trained on it
    names = [prep.runs[i].record.name for i, _ in rows]
    assert names == sorted(names) and len(set(names)) == 6
    schedules = {str(prep.runs[i].record.config["schedule"]) for i, _ in rows}
    assert len(schedules) >= 3  # spread over the families, not six of the first one
    assert "never trained on it" in figure_title(cross_fitted)
    # The member alone forecasts differently from the full ensemble that trained on the run.
    i, fold = rows[0]
    data = prep.tensors(np.asarray([i]))
    args = (data, torch.tensor([0]), torch.tensor([20]), torch.tensor([10]))
    alone = Forecaster([cross_fitted.bundle.models[fold]]).forecast(*args)
    assert not torch.allclose(alone, cross_fitted.bundle.forecaster.forecast(*args))
    png = plot_fit_forecasts(tmp_path / "forecast.png", cross_fitted, (0.25, 0.5), 10)
    assert png is not None and png.stat().st_size > 10_000


def test_holdout_fit_shows_its_held_out_runs(tiny_fit: FitResult) -> None:
    prep = tiny_fit.prepared
    rows = shown_runs(tiny_fit)
    assert rows and all(fold is None for _, fold in rows)
    assert {i for i, _ in rows} <= {int(i) for i in prep.holdout_idx}
    assert "none trained on these runs" in figure_title(tiny_fit)
