"""The benchmark suite (``benchmarks.suite``): its response surface and statistics against
known answers, and the whole protocol end to end in ``--smoke`` mode.

The smoke run is real: Friedman #1 runs of 40 steps trained with torch (2 families x 3
peaks), the sweep logged to a real MLflow sqlite store and read back through
``MlflowSource``, both bundles fitted (tiny configs), both advisors driving runs. One
run per module.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.suite import stats
from benchmarks.suite.cli import main
from benchmarks.suite.protocol import ARMS, block_seeds, dense_peaks
from benchmarks.suite.surface import best_point, fit_family

# ------------------------------------------------------------------ response surface


def _points(f: Any, xs: list[float], seeds: int = 2) -> list[tuple[float, float]]:
    return [(10.0 ** x, f(x)) for x in xs for _ in range(seeds)]


def test_surface_finds_the_vertex_of_a_known_quadratic() -> None:
    xs = [-3.0, -2.5, -2.0, -1.5]
    sp = fit_family("cosine", _points(lambda x: 0.9 - 0.1 * (x + 2.2) ** 2, xs), "max")
    assert sp.where == "vertex"
    assert math.log10(sp.peak) == pytest.approx(-2.2, abs=1e-9)
    assert sp.predicted == pytest.approx(0.9, abs=1e-12)


def test_surface_takes_the_better_end_when_the_curve_opens_the_wrong_way() -> None:
    xs = [-3.0, -2.5, -2.0, -1.5]
    # convex for a maximised metric: no vertex is a maximum; the right end is higher
    sp = fit_family("step", _points(lambda x: 0.5 + 0.1 * (x + 2.6) ** 2, xs), "max")
    assert sp.where == "edge"
    assert sp.peak == pytest.approx(10 ** -1.5)
    assert sp.predicted == pytest.approx(0.5 + 0.1 * 1.1 ** 2)
    # a vertex outside the range: no extrapolation, the nearer end
    sp = fit_family("step", _points(lambda x: 0.9 - 0.1 * (x + 1.0) ** 2, xs), "max")
    assert sp.where == "edge" and sp.peak == pytest.approx(10 ** -1.5)


def test_surface_fits_a_minimised_metric_in_log_space() -> None:
    xs = [-3.0, -2.5, -2.0, -1.5, -1.0]
    # log(mse) = 0.5 + 2 (x + 1.8)^2: minimum mse e^0.5 at x = -1.8
    sp = fit_family("cosine", _points(lambda x: math.exp(0.5 + 2 * (x + 1.8) ** 2), xs), "min")
    assert sp.where == "vertex"
    assert math.log10(sp.peak) == pytest.approx(-1.8, abs=1e-9)
    assert sp.predicted == pytest.approx(math.exp(0.5), rel=1e-9)


def test_surface_skips_non_finite_runs_and_keeps_a_short_family_observed() -> None:
    pts = [(1e-3, 0.7), (1e-3, 0.72), (1e-2, 0.8), (1e-2, math.nan), (1e-1, math.inf)]
    sp = fit_family("constant", pts, "max")
    assert sp.where == "observed" and sp.peak == pytest.approx(1e-2)
    assert sp.predicted == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no finite"):
        fit_family("constant", [(1e-3, math.nan)], "max")


def test_best_point_picks_the_family_predicted_best() -> None:
    xs = [-3.0, -2.5, -2.0, -1.5]
    finals: dict[tuple[str, float], list[float]] = {}
    for fam, top in (("cosine", 0.9), ("constant", 0.85)):
        for x in xs:
            finals[(fam, 10.0 ** x)] = [top - 0.1 * (x + 2.2) ** 2] * 2
    best, every = best_point(finals, "max")
    assert best.family == "cosine" and math.log10(best.peak) == pytest.approx(-2.2)
    assert [s.family for s in every] == ["constant", "cosine"]


# ------------------------------------------------------------------ statistics


def test_paired_matches_a_hand_computed_t_interval() -> None:
    out = stats.paired([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, 2) = 4.303, sd = 1
    assert out["mean"] == 2.0 and out["sd"] == pytest.approx(1.0)
    assert out["lo"] == pytest.approx(2.0 - half) and out["hi"] == pytest.approx(2.0 + half)
    assert (out["wins"], out["ties"], out["losses"], out["worst"]) == (3, 0, 0, 1.0)
    one = stats.paired([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["lo"])
    with pytest.raises(ValueError):
        stats.paired([])


def test_gains_are_points_for_accuracy_and_percent_of_the_reference_for_a_loss() -> None:
    assert stats.gains([0.90, 0.80], [0.85, 0.85], "max") == pytest.approx([5.0, -5.0])
    # reference mean 2.0: a loss of 1.0 is 50% lower, 2.0 no change, 2.5 is 25% worse
    assert stats.gains([1.0, 2.0, 2.5], [2.0, 2.0, 2.0], "min") == pytest.approx([50, 0, -25])
    with pytest.raises(ValueError, match="unpaired"):
        stats.gains([1.0], [1.0, 2.0], "max")


def test_pooled_weights_seeds_and_tasks() -> None:
    out = stats.pooled({"a": [1.0, 1.0, 1.0, 1.0], "b": [3.0, 3.0]})
    assert out["n"] == 6 and out["tasks"] == 2
    assert out["mean"] == pytest.approx(10 / 6)
    assert out["mean_of_task_means"] == pytest.approx(2.0)
    assert stats.headroom_share(0.3, 0.6) == pytest.approx(0.5)
    assert stats.headroom_share(0.3, 0.4) is None  # headroom under half a point


def test_blocks_and_the_dense_grid() -> None:
    assert block_seeds("design", 3) == [100, 101, 102]
    assert block_seeds("confirm", 3) == [200, 201, 202]
    with pytest.raises(SystemExit):
        block_seeds("design", 101)
    grid = dense_peaks((1e-3, 1e-2, 1e-1))
    assert len(grid) == 7
    assert np.allclose(np.log10(grid), [-3, -8 / 3, -7 / 3, -2, -5 / 3, -4 / 3, -1])
    assert grid[0] == 1e-3 and grid[3] == 1e-3 * (1e-2 / 1e-3) and grid[-1] == 1e-1


def test_schedule_free_runs_at_a_constant_rate_on_the_tasks_twin_optimizer() -> None:
    pytest.importorskip("schedulefree")
    from benchmarks.suite import tasks
    from benchmarks.suite.loop import SCHEDULE_FREE, LoopSpec, train

    task = tasks.get("friedman")
    out = task.train(SCHEDULE_FREE, 3e-3, 0, smoke=True)
    assert out.record.state == "finished" and math.isfinite(out.test)
    assert set(out.record.lr.value) == {3e-3}  # no schedule: its own warm-up, inside
    spec = LoopSpec(task="t", steps=4, batch_size=8, log_every=2, loss_fn=lambda a, b: a.sum(),
                    metric_fn=lambda n, x, y: 0.0, val_key="v", worst=0.0,
                    optimizer=lambda p, lr: __import__("torch").optim.SGD(p, lr=lr))
    with pytest.raises(ValueError, match="no schedule-free optimizer"):
        train(spec, None, lambda: None,  # type: ignore[arg-type]
              family=SCHEDULE_FREE, peak=0.1, seed=0)


# ------------------------------------------------------------------ smoke, end to end


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("suite")
    argv = ["--smoke", "--tasks", "friedman", "--seeds", "2", "--runs-dir", str(root / "runs"),
            "--out-dir", str(root / "out")]
    assert main(argv) == 0
    jobs = root / "runs" / "friedman" / "jobs_smoke.jsonl"
    lines = jobs.read_text().splitlines()
    doc = json.loads((root / "out" / "suite_smoke.json").read_text())
    return {"root": root, "argv": argv, "doc": doc, "lines": lines, "jobs": jobs}


@pytest.mark.slow
def test_smoke_runs_every_arm_on_the_block(smoke: dict[str, Any]) -> None:
    block = smoke["doc"]["blocks"]["design"]
    t = block["tasks"]["friedman"]
    # --smoke: 2 families x 3 peaks x 2 seeds
    assert t["seeds"] == [100, 101] and t["sweep"]["runs"] == 12
    assert (smoke["root"] / "runs" / "friedman" / "tracker" / "mlflow.db").exists()
    for arm in ARMS:
        assert len(t["arms"][arm]["test"]) == 2
        assert all(math.isfinite(v) and v > 0 for v in t["arms"][arm]["test"])
    # (a) is the best configuration of the sweep's finals as read back from MLflow
    finals = {k: statistics.fmean(v) for k, v in t["sweep"]["finals"].items()}
    a = t["choices"]["a"]
    assert min(finals, key=finals.__getitem__) == f"{a['schedule']} {a['peak_lr']:g}"
    # (o) is the dense grid's best mean test value; its gain can be no worse than (a)'s
    o = t["choices"]["o"]
    grid = o["grid_mean_test"]
    assert grid[f"{o['schedule']} {o['peak_lr']:.4g}"] == min(grid.values())
    assert len(grid) == 2 * 7
    assert t["arms"]["o"]["gain"]["mean"] >= 0
    assert t["choices"]["a'"]["extra_runs"] == 4
    # (sf): schedule-free at each sweep peak on the sweep's seeds, the best by mean val
    sf = t["choices"]["sf"]
    assert sf["extra_runs"] == 3 * 2 and sf["schedule"] == "schedulefree"
    assert sf["candidates"][f"{sf['peak_lr']:.4g}"] == min(sf["candidates"].values())
    assert t["arms"]["sf"]["config"] == {"schedule": "schedulefree", "peak_lr": sf["peak_lr"]}
    ev = t["evidence"]
    assert set(ev) == {"forecast", "control", "confounding", "sweep"}
    assert ev["forecast"]["available"] and "0.5" in ev["forecast"]["taus"]
    assert isinstance(ev["control"]["usable"], bool)
    assert block["pooled"]["g"]["all_tasks"]["n"] == 2
    # the task's threads (oracle grid, fits, choices) share one pool: no run trained twice
    keys = [json.loads(line)["key"] for line in smoke["lines"]]
    assert len(keys) == len(set(keys))
    # sweep 12, refined 4, schedule-free selection 6, dense grid 2 x 14, advised 2 x 2, and
    # the fixed arms that are not already a grid point
    assert len(keys) >= 12 + 4 + 6 + 28 + 4
    assert (smoke["root"] / "out" / "suite_smoke_friedman_design.png").stat().st_size > 0


@pytest.mark.slow
def test_smoke_resumes_from_its_cache(smoke: dict[str, Any],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(smoke["argv"]) == 0
    out = capsys.readouterr().out
    assert "runs to train" not in out and "fit:" not in out
    assert smoke["jobs"].read_text().splitlines() == smoke["lines"]
    again = json.loads((smoke["root"] / "out" / "suite_smoke.json").read_text())
    first = smoke["doc"]["blocks"]["design"]["tasks"]["friedman"]["arms"]
    assert again["blocks"]["design"]["tasks"]["friedman"]["arms"]["g"]["test"] == \
        first["g"]["test"]
    assert main([*smoke["argv"], "--print"]) == 0
    assert "friedman" in capsys.readouterr().out


@pytest.mark.slow
def test_wandb_offline_round_trip(smoke: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    from benchmarks.suite.tracking import log_and_read, wandb_id
    from tracker_sched.schema import RunRecord

    rows = [json.loads(x) for x in smoke["lines"][:2]]
    recs = [RunRecord.model_validate(r["record"]) for r in rows]
    read, info = log_and_read(recs, "wandb", tmp_path, "suite-test")
    assert info["runs"] == 2 and not read.issues
    got = {r.run_id: r for r in read.runs}
    for rec in recs:
        back = got[wandb_id(rec.run_id)]
        assert back.total_steps == rec.total_steps
        assert back.val_metric is not None and rec.val_metric is not None
        assert back.val_metric.value == pytest.approx(rec.val_metric.value)
        assert back.config["peak_lr"] == rec.config["peak_lr"]


def test_the_variants_leave_one_task_out_choice_never_sees_the_held_out_task() -> None:
    from benchmarks.suite.variants import loto, verdict

    def task(absolute: list[float], relative: list[float]) -> dict[str, Any]:
        diff = [r - a for a, r in zip(absolute, relative, strict=True)]
        return {"seeds": [1, 2, 3], "test": {
            "gain_absolute": absolute, "gain_relative": relative,
            "relative_vs_absolute": stats.paired(diff)}}

    # x: relative is far better; y and z: absolute a little better (standardised 3.0 vs 2.5
    # and 6.0 vs 4.1), so the fold that holds x out picks absolute, and x loses
    tasks = {"x": task([-3.0, -2.0, -4.0], [0.1, 0.3, 0.2]),
             "y": task([1.0, 2.0, 1.5], [1.0, 2.2, 1.4]),
             "z": task([0.5, 0.7, 0.6], [0.5, 0.8, 0.6])}
    out = loto(tasks, "relative")
    x = out["per_task"]["x"]
    assert x["planners"]["pick"] == x["with_best"]["pick"] == "absolute"
    assert x["planners"]["gain"]["mean"] == pytest.approx(-3.0)
    assert out["per_task"]["y"]["planners"]["pick"] == "relative"  # x's win counts there
    # every option negative on the others: "best" (gain 0) is kept
    neg = {n: task([-g for g in t["test"]["gain_absolute"]],
                   [-g for g in t["test"]["gain_relative"]]) for n, t in tasks.items()}
    assert out["picks"]["with_best"] != ["best"] * 3
    assert loto(neg, "relative")["per_task"]["y"]["with_best"]["pick"] == "best"
    assert verdict(tasks, out, "relative").startswith("keep absolute")


def test_the_fit_variants_rule_keeps_the_cheaper_fit_unless_the_costlier_one_earns_it() -> None:
    from benchmarks.suite.auto_rule import standardised
    from benchmarks.suite.fit_variants import loto, pick

    def task(cheap: list[float], shipped: list[float]) -> dict[str, Any]:
        return {"unit": "points", "kinds": {"generative": {
            v: {"gain_test": g, "standardised": standardised(g)}
            for v, g in (("patience2", cheap), ("patience4", shipped))}}}

    # a tie within MARGIN goes to the cheaper variant
    same = {n: task([0.1, 0.3, 0.2], [0.1, 0.3, 0.21]) for n in "xy"}
    assert pick(same, "generative")[0] == "patience2"
    # x: the costlier fit is far better; y and z: equal. Holding x out, the folds see no
    # reason to pay for the costlier fit, and x's held-out gain is the cheap fit's
    tasks = {"x": task([-3.0, -2.0, -4.0], [0.1, 0.3, 0.2]),
             "y": task([1.0, 2.0, 1.5], [1.0, 2.0, 1.5]),
             "z": task([0.5, 0.7, 0.6], [0.5, 0.7, 0.6])}
    out = loto(tasks, "generative")
    assert out["per_task"]["x"]["pick"] == "patience2"
    assert out["per_task"]["x"]["gain"]["mean"] == pytest.approx(-3.0)
    assert out["per_task"]["y"]["pick"] == "patience4"  # x's evidence counts there
    assert out["choice_all_tasks"] == "patience4" and not out["folds_agree"]
    assert out["ship"] == "patience4"
    # every fold and the rule on all tasks agree: the cheaper fit ships
    assert loto(same | {"z": task([0.2, 0.1, 0.3], [0.2, 0.1, 0.3])}, "generative")["ship"] == (
        "patience2")
    # the rule on all tasks picks the cheaper fit, but the fold that holds y out does not:
    # not validated, so the former setting (patience 4) ships
    def scored(cheap: float, costly: float) -> dict[str, Any]:
        return {"unit": "points", "kinds": {"generative": {
            "patience2": {"gain_test": [0.0], "standardised": cheap},
            "patience4": {"gain_test": [0.0], "standardised": costly}}}}

    split = loto({"x": scored(0.0, 0.35), "y": scored(0.1, 0.0), "z": scored(0.1, 0.0)},
                 "generative")
    assert split["choice_all_tasks"] == "patience2"
    assert split["per_task"]["y"]["pick"] == "patience4"
    assert split["ship"] == split["former"] == "patience4"


def test_machine_speed_compares_the_same_plain_runs_only(tmp_path: Path) -> None:
    from benchmarks.suite.machine_speed import compare

    def write(root: Path, rows: list[tuple[str, str, float]]) -> None:
        (root / "friedman").mkdir(parents=True)
        (root / "friedman" / "jobs.jsonl").write_text(
            "".join(json.dumps({"key": k, "kind": kind, "wall_s": s}) + "\n"
                    for k, kind, s in rows))

    write(tmp_path / "old", [("r1", "run", 2.0), ("r2", "run", 4.0), ("g1", "generative", 1.0),
                             ("gone", "run", 9.0)])
    write(tmp_path / "new", [("r1", "run", 3.0), ("r2", "run", 4.0), ("g1", "generative", 5.0),
                             ("fresh", "run", 7.0)])
    out = compare(tmp_path / "old", tmp_path / "new")
    # r1 and r2 only: an advised run's time depends on its bundle, not the machine alone
    assert out["friedman"] == {"runs": 2, "median_ratio": 1.25, "sum_s_before": 6.0,
                               "sum_s_now": 7.0}
    assert out["all"] == {"runs": 2, "median_ratio": 1.25, "sum_ratio": round(7 / 6, 3)}
    with pytest.raises(SystemExit, match="no run"):
        compare(tmp_path / "old", tmp_path / "nowhere")


def test_same_results_counts_matches_and_names_every_difference(tmp_path: Path) -> None:
    from benchmarks.suite.machine_speed import same_results

    def write(root: Path, rows: list[dict[str, Any]]) -> None:
        (root / "friedman").mkdir(parents=True)
        (root / "friedman" / "jobs.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))

    def run(key: str, test: float, kind: str = "run", seed: int = 0) -> dict[str, Any]:
        return {"key": key, "kind": kind, "seed": seed, "val": 0.5, "test": test,
                "state": "finished"}

    write(tmp_path / "old", [run("r1", 0.9), run("r2", 0.8), run("old-only", 0.1),
                             run("generative|0|t1", 0.7, "generative")])
    write(tmp_path / "new", [run("r1", 0.9), run("r2", 0.81), run("new-only", 0.1),
                             run("generative|0|t2", 0.7, "generative")])
    out = same_results(tmp_path / "old", tmp_path / "new")
    # advised runs match by kind and seed: their keys hold their bundle's creation time
    assert out == {"plain_runs": 2, "advised_runs": 1, "bundles": 0,
                   "differ": ["friedman r2"]}


def test_the_offline_env_restores_its_own_variables_and_leaves_wandbs_service_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale service token must not come back: under 2 test processes, every wandb test
    after the suite's wandb logging failed to connect to a service that had been stopped."""
    from benchmarks.suite.tracking import _offline_env

    monkeypatch.setenv("WANDB_SERVICE", "token-of-a-running-service")
    monkeypatch.setenv("WANDB_PROJECT", "the-callers")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    with _offline_env(tmp_path):
        assert os.environ["WANDB_DIR"] == str(tmp_path) and "WANDB_PROJECT" not in os.environ
        del os.environ["WANDB_SERVICE"]  # what wandb.teardown() does after stopping it
        os.environ["OTHER"] = "set inside"
    assert "WANDB_SERVICE" not in os.environ
    assert os.environ["WANDB_PROJECT"] == "the-callers" and "WANDB_DIR" not in os.environ
    assert os.environ.pop("OTHER") == "set inside"
