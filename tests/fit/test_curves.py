"""The learning-curve baseline (tracker_sched.fit.curves) and the forecast verdict
(tracker_sched.fit.trust): known curves are recovered, odd curves never raise, the fit
report carries the new rows and the verdict, old reports still give one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tracker_sched.bundle.folder import Bundle
from tracker_sched.bundle.manifest import ForecastReport, ForecastRow, RankRow
from tracker_sched.cli.main import main
from tracker_sched.data.grid import CHANNELS
from tracker_sched.fit.curves import MIN_POINTS, Select, fit_curves
from tracker_sched.fit.generative import FitResult
from tracker_sched.fit.trust import BASELINES, VERDICT_TAUS, forecast_trust, trust_of
from tracker_sched.planning.auto import trust_verdict

G = 100
TAU = np.linspace(0.0, 1.0, G)
T = TAU + TAU[1]  # the curves' time axis: tau shifted by one grid step

# (family, c, a, exponent) of curves that rise towards c
KNOWN = [("pow3", 0.9, 0.03, 0.5), ("pow3", 0.8, 0.02, 1.0), ("pow3", 0.95, 0.1, 0.3),
         ("exp3", 0.9, 0.6, 5.0), ("exp3", 0.7, 0.4, 10.0)]


def _curve(family: str, c: float, a: float, e: float) -> np.ndarray:
    return c - a * (T ** -e if family == "pow3" else np.exp(-e * T))


@pytest.mark.parametrize("end", [25, 50])
@pytest.mark.parametrize("direction", ["max", "min"])
@pytest.mark.parametrize("select", ["sse", "tail"])
def test_known_curves_are_recovered_from_their_prefix(
    end: int, direction: str, select: Select
) -> None:
    sign = 1.0 if direction == "max" else -1.0
    y = sign * np.stack([_curve(*k) for k in KNOWN])
    fit = fit_curves(y[:, : end + 1], TAU[: end + 1], TAU[end:], direction,  # type: ignore[arg-type]
                     select=select)
    assert fit.family == [k[0] for k in KNOWN]
    assert fit.reason == [""] * len(KNOWN)
    np.testing.assert_allclose(fit.forecast[:, -1], y[:, -1], atol=1e-4)
    np.testing.assert_allclose(fit.forecast, y[:, end:], atol=1e-4)


def test_the_default_pow3_recovers_a_power_law_from_a_window() -> None:
    y = np.stack([_curve(*k) for k in KNOWN if k[0] == "pow3"])
    bounds = (float(y.min()), float(y.max()))  # the sweep's range, as the report gives it
    fit = fit_curves(y[:, 20:41], TAU[20:41], TAU[40:], "max", bounds, dt=float(TAU[1]))
    assert fit.family == ["pow3"] * len(y)
    np.testing.assert_allclose(fit.forecast, y[:, 40:], atol=1e-4)


def test_noisy_curves_land_near_their_final_value() -> None:
    rng = np.random.default_rng(0)
    y = np.stack([_curve(*k) for k in KNOWN])
    noisy = y + rng.normal(0.0, 0.005, y.shape)
    fit = fit_curves(noisy[:, :51], TAU[:51], TAU[50:], "max", select="sse")
    err = np.abs(fit.forecast[:, -1] - y[:, -1])
    assert err.max() < 0.02
    # the last value carried forward is far worse on these curves
    assert err.mean() < 0.5 * np.abs(noisy[:, 50] - y[:, -1]).mean()


def test_odd_curves_fall_back_to_their_last_value_and_never_raise() -> None:
    n = 26
    odd = np.array([
        [np.nan] * n,  # nothing observed
        [0.5] + [np.nan] * (n - 1),  # one point
        [0.5] * n,  # flat
        np.linspace(0.9, 0.1, n),  # getting worse all the time
        [np.inf] * 13 + [0.7] * 13,  # inf, then flat
        [1e300] * n,  # huge
        np.r_[np.linspace(0.1, 0.6, MIN_POINTS - 1), [np.nan] * (n - MIN_POINTS + 1)],
    ])
    for select in ("pow3", "sse", "tail", "mean"):
        fit = fit_curves(odd, TAU[:n], TAU[n - 1:], "max", select=select)  # type: ignore[arg-type]
        assert fit.family == ["last"] * len(odd)
    assert math.isnan(fit.forecast[0, -1]) and fit.reason[0] == "no finite value"
    np.testing.assert_array_equal(fit.forecast[1:, -1], [0.5, 0.5, 0.1, 0.7, 1e300, 0.6])
    assert all(fit.reason[1:])
    # a jump far beyond anything seen is refused, not extrapolated
    steep = np.linspace(0.0, 0.5, n)[None, :]
    fit = fit_curves(steep, TAU[:n], TAU[n - 1:], "max", bounds=(0.0, 0.5))
    assert np.all(fit.forecast <= 0.5 + 0.5 * 0.5 + 1e-12)
    # no runs, a single column
    assert fit_curves(np.zeros((0, 5)), TAU[:5], TAU[4:], "max").forecast.shape == (0, 96)
    one = fit_curves(np.ones((2, 1)), TAU[:1], TAU, "min")
    np.testing.assert_array_equal(one.forecast, np.ones((2, G)))


def test_the_fit_is_deterministic() -> None:
    y = np.random.default_rng(1).normal(size=(20, 40)).cumsum(axis=1)
    a = fit_curves(y, TAU[:40], TAU[39:], "max")
    b = fit_curves(y.copy(), TAU[:40], TAU[39:], "max")
    np.testing.assert_array_equal(a.forecast, b.forecast)
    assert a.family == b.family


# --------------------------------------------------------------------------- the report


def test_the_fit_report_has_curve_rows_and_a_verdict(tiny_fit: FitResult) -> None:
    report = tiny_fit.report
    holdout = report.holdout
    assert holdout is not None
    taus = sorted({r.tau for r in holdout.ranking})
    for tau in taus:
        for channel in CHANNELS:
            if channel == "log_lr":  # the curve does not forecast the lr
                with pytest.raises(KeyError):
                    holdout.row(tau, channel, "curve")
                continue
            row = holdout.row(tau, channel, "curve")
            assert math.isfinite(row.rmse_median_run) and row.runs == report.runs_holdout
        rank = holdout.rank(tau, "curve")
        assert rank.spearman is None or -1.0 <= rank.spearman <= 1.0
    trust = report.forecast_trust
    assert trust is not None and trust.level in {"trusted", "weak", "untrusted"}
    used = [t for t in VERDICT_TAUS if t in taus]
    assert trust.taus == used
    assert len(trust.comparisons) == len(used) * len(BASELINES) * 2
    assert sum(not c.model_wins for c in trust.comparisons) == len(trust.reasons)
    assert trust == forecast_trust(holdout)  # what is stored is what the table says
    assert tiny_fit.bundle.manifest.report.forecast_trust == trust
    # --mode auto reads it: an untrusted forecaster lowers the generative planner's trust
    assert trust_verdict(trust) is {"trusted": True, "untrusted": False}.get(trust.level)


def _report(model_rho: float, model_rmse: float, *, curve: bool = True) -> ForecastReport:
    base = {"last": (0.5, 0.2), "nearest": (0.6, 0.1), "curve": (0.7, 0.15)}
    if not curve:
        del base["curve"]
    rows, ranks = [], []
    for tau in (0.25, 0.5, 0.75):
        for method, (rho, rmse) in {"model": (model_rho, model_rmse), **base}.items():
            rows.append(ForecastRow(tau=tau, channel="val_metric", method=method,
                                    rmse_pooled=rmse, rmse_median_run=rmse, runs=9))
            ranks.append(RankRow(tau=tau, method=method, spearman=rho, runs=9))
    return ForecastReport(window=5, forecast=rows, ranking=ranks)


def test_the_verdict_levels() -> None:
    assert forecast_trust(_report(0.8, 0.05)).level == "trusted"
    weak = forecast_trust(_report(0.8, 0.12))
    assert weak.level == "weak"
    assert len(weak.reasons) == 2  # nearest wins the median-run RMSE at tau 0.25 and 0.5
    assert all("nearest" in r and "RMSE" in r for r in weak.reasons)
    bad = forecast_trust(_report(0.65, 0.05))
    assert bad.level == "untrusted"
    assert [c.baseline for c in bad.comparisons if not c.model_wins] == ["curve", "curve"]
    assert forecast_trust(None).level == "unknown"
    assert forecast_trust(_report(0.8, 0.05), taus=(0.9,)).level == "unknown"


def test_a_report_written_before_the_curve_baseline_still_gets_a_verdict() -> None:
    trust = forecast_trust(_report(0.8, 0.05, curve=False))
    assert trust.level == "trusted"
    assert any("curve" in r and "before" in r for r in trust.reasons)
    assert {c.baseline for c in trust.comparisons} == {"last", "nearest"}


def test_inspect_shows_the_verdict_also_of_an_old_bundle(
    tiny_fit: FitResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = tiny_fit.bundle.manifest
    old = Bundle(m.model_copy(update={"report": m.report.model_copy(
        update={"forecast_trust": None})}), tiny_fit.bundle.models)
    assert trust_of(old.manifest.report) == m.report.forecast_trust
    folder = old.save(tmp_path / "old")
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "curve" in out
    assert "forecast trust: " + m.report.forecast_trust.level.upper() in out  # type: ignore[union-attr]
    assert "predates the verdict" in out
