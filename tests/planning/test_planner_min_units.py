"""The generative planner on a minimised, positive metric (a validation MSE).

The model sees such a metric as log10 (``tracker_sched.data.grid``); a recommendation's
``predicted_final`` is documented as the predicted final validation metric, so it must come
back in the metric's own units, as the control planner's does. Before the fix the generative
planner returned its log10 (on the suite's Friedman task 0.33 for a predicted MSE of 2.15).
The plan must also predict a lower final than the current course it replaces. A ``best`` plan
(``--mode auto``'s default) carries the same current-course forecast, in the same units.

The sweep: tests/synthetic.py's validation loss, times 100 (an MSE in the units of an
unscaled regression target), 12 runs of 120 steps; one tiny member, 20 iterations.
"""

from __future__ import annotations

import pytest

from tests.synthetic import make_sweep
from tests.tiny import history_until, tiny_config
from tracker_sched.data.grid import VAL_METRIC
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.planning.best import BestPlanner
from tracker_sched.planning.generative import GenerativePlanner, PlannerConfig
from tracker_sched.schema import RunRecord, Series

SCALE = 100.0  # finals of 30 to 190: their log10 (1.5 to 2.3) is far outside that range


def scaled(run: RunRecord) -> RunRecord:
    val = run.val_metric
    assert val is not None
    return run.model_copy(update={"val_metric": Series(
        step=list(val.step), value=[SCALE * v for v in val.value])})


def test_a_minimised_metrics_prediction_is_in_its_own_units_and_the_plan_lowers_it() -> None:
    sweep = make_sweep(metric="val_loss", peaks=(1e-3, 1e-2), total_steps=120)
    cfg = tiny_config(ensemble=1, holdout_fraction=0.0, max_iterations=20, eval_every=20)
    bundle = fit_sweep([scaled(r) for r in sweep.runs], cfg, workers=1,
                       progress=False).bundle
    assert bundle.manifest.metrics.direction == "min"
    assert bundle.manifest.normalisation.transforms[VAL_METRIC] == "log10"

    now = int(0.3 * sweep.total_steps)
    run = scaled(sweep.run("constant", 1e-2, 7))  # a new seed
    assert run.val_metric is not None
    actual = run.val_metric.value[-1]
    live = history_until(run, now)
    keep = GenerativePlanner(bundle, PlannerConfig(min_gain=1e9)).plan(
        live, step=now, total_steps=sweep.total_steps)
    plan = GenerativePlanner(bundle, PlannerConfig(
        lr_cap=1e3, trust_region_dex=None, no_rise_after_tau=1.0)).plan(
        live, step=now, total_steps=sweep.total_steps)
    assert keep.status == "fallback" and plan.status == "planned"
    assert keep.predicted_final is not None and plan.predicted_final is not None
    for pred in (keep.predicted_final, plan.predicted_final):  # a tiny model: within 4x
        assert actual / 4 <= pred <= actual * 4
    assert plan.predicted_final < keep.predicted_final  # lower is better for an MSE
    best = BestPlanner(bundle).plan(live, step=now, total_steps=sweep.total_steps)
    assert best.predicted_final == pytest.approx(keep.predicted_final, rel=1e-5)
