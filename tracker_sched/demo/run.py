"""``tracker-sched demo``: the whole loop on MLflow's embedded sqlite store, in minutes.

In a fresh folder it:

1. trains a small real MNIST-1D sweep (schedules x peak lrs x seeds) in worker
   processes and logs each run, as it finishes, as an MLflow child run of one
   parent run;
2. reads the sweep back from MLflow (``MlflowSource``) and fits the latent ODE;
3. registers the bundle as the MLflow model ``tracker-sched-demo`` with the
   alias ``champion``;
4. on new seeds, trains the sweep's best parametric schedule and the advisor
   (loaded from ``mlflow:models:/tracker-sched-demo@champion`` and driven by the
   MLflow callback, which writes ``tracker_sched.lr_recommended`` back into the run);
5. writes plots (also logged as artifacts of the sweep's parent run).

Everything lands in ``FOLDER/mlflow.db`` and ``FOLDER/artifacts``; ``mlflow ui
--backend-store-uri sqlite:///FOLDER/mlflow.db`` shows it. The comparison uses
two or three seeds: it shows the loop working, it is not a benchmark (see
``docs/benchmarks.md`` and ``docs/planner.md`` for that).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracker_sched._optional import require
from tracker_sched.demo.report import write_plots
from tracker_sched.demo.results import ArmRun, DemoConfig, DemoResult
from tracker_sched.demo.store import log_run, quiet_mlflow, use_tracking_uri
from tracker_sched.demo.view import VIEW_TAG, runs_view
from tracker_sched.errors import InputError
from tracker_sched.util.workers import spawn_pool

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from tracker_sched.tasks.mnist1d import Splits, TrainResult

log = logging.getLogger(__name__)

EXPERIMENT = "tracker-sched-demo"
MODEL_NAME = "tracker-sched-demo"
ALIAS = "champion"
MARKER = "tracker-sched-demo.json"
#: The UI opens a "custom model development" experiment on its training runs (not on the
#: GenAI overview), and shows the note as the experiment's description.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "tracker-sched demo. The run `sweep` holds the MNIST-1D sweep (schedules x peak lrs x "
        "seeds); the run `tracker-sched fit tracker-sched-demo` the latent ODE fitted on it, "
        "registered as the model tracker-sched-demo; the run `comparison` the sweep's best "
        "schedule against the advisor on new seeds. Accuracies are fractions (0 to 1). On "
        "advisor runs, `lr` is the lr applied and `tracker_sched.lr_recommended` the advice."),
}


Say = Callable[[str], None]


# ------------------------------------------------------------------------- folder


def check_folder(folder: Path) -> None:
    """Accept a missing or empty folder, or one a previous demo wrote; refuse anything else.

    The demo never deletes: a re-run adds a new sweep, model version and comparison
    to the same store.
    """
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--dir {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise InputError(
            f"--dir {folder} is not empty and was not written by a previous demo (no {MARKER}); "
            "pass a new or empty folder, e.g. --dir tracker-sched-demo"
        )


# -------------------------------------------------------------------------- sweep


def _init_worker(splits: Splits) -> None:
    import torch

    from tracker_sched.tasks.mnist1d import use_splits

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    use_splits(splits)  # the parent's dataset: no worker spends seconds regenerating it


def _train_job(kwargs: dict[str, Any]) -> TrainResult:
    from tracker_sched.tasks.mnist1d import train_run

    return train_run(**kwargs)


def _run_sweep(cfg: DemoConfig, client: MlflowClient, experiment_id: str, progress: bool,
               say: Say) -> str:
    """Train the sweep in worker processes; this process logs each run as it finishes
    (one writer: sqlite never sees two processes write at once). Returns the parent's id."""
    from tqdm.auto import tqdm

    from tracker_sched.tasks.mnist1d import load_splits

    jobs = [{"model": "cnn", "schedule": s, "peak_lr": p, "seed": seed, "epochs": cfg.epochs}
            for s in cfg.schedules for p in cfg.peaks for seed in cfg.sweep_seeds]
    parent = client.create_run(experiment_id, run_name="sweep", tags={
        "tracker_sched.demo": "sweep",
        "mlflow.note.content": f"tracker-sched demo: {len(jobs)} MNIST-1D CNN runs "
        f"({', '.join(cfg.schedules)} x peak lr {', '.join(f'{p:g}' for p in cfg.peaks)} "
        f"x seeds {', '.join(map(str, cfg.sweep_seeds))}), {cfg.epochs} epochs each"})
    parent_id: str = parent.info.run_id
    say(f"[1/4] sweep: training {len(jobs)} runs on {cfg.workers} worker(s), logging each "
        f"to MLflow as it finishes (parent run {parent_id})")
    with tqdm(total=len(jobs), desc="sweep", unit="run", disable=not progress) as bar, \
            ExitStack() as stack:
        done: Iterator[TrainResult]
        if cfg.workers > 1:
            pool = stack.enter_context(spawn_pool(
                cfg.workers, initializer=_init_worker, initargs=(load_splits(),)))
            done = pool.imap_unordered(_train_job, jobs)
        else:
            done = map(_train_job, jobs)
        for res in done:
            log_run(client, experiment_id, parent_id, res, {"tracker_sched.demo": "sweep"})
            bar.update(1)
    client.set_terminated(parent_id)
    return parent_id


# ------------------------------------------------------------------ fit, register


def _fit_and_register(cfg: DemoConfig, uri: str, sweep_id: str, progress: bool,
                      say: Say) -> tuple[str, Path]:
    """Read the sweep back from MLflow, fit it, save the bundle, register it; the model URI."""
    from tracker_sched.fit.generative import fit_sweep
    from tracker_sched.sources.mlflow_source import MlflowSource
    from tracker_sched.stores.mlflow_store import register_bundle

    say(f"[2/4] fit: reading the sweep back from MLflow and fitting the latent ODE "
        f"({cfg.fit.ensemble} member(s), at most {cfg.fit.max_iterations} iterations each)")
    read = MlflowSource(EXPERIMENT, parent_run_id=sweep_id, tracking_uri=uri,
                        progress=progress).read()
    fitted = fit_sweep(read.runs, cfg.fit, workers=max(1, min(cfg.workers, cfg.fit.ensemble)),
                       progress=progress, source_issues=read.issues)
    out = fitted.bundle.save(cfg.folder / "bundle")
    (out / "report.json").write_text(fitted.report.model_dump_json(indent=2))
    if fitted.report.holdout is not None:
        from tracker_sched.fit.forecast_plot import plot_fit_forecasts

        plot_fit_forecasts(out / "forecast.png", fitted, cfg.fit.report_taus, cfg.fit.window)
    best = fitted.bundle.manifest.sweep
    say(f"      {fitted.report.runs_used} runs used, fit in {fitted.report.wall_s:.0f} s; "
        f"sweep best: {best.best_config.get('schedule')} at peak lr "
        f"{best.best_config.get('peak_lr')} (mean final val acc "
        f"{best.best_config_mean_final_val:.3f} over {best.best_config_runs} seeds)")
    say(f"[3/4] register: MLflow model {MODEL_NAME!r}, alias {ALIAS!r}")
    model_uri = register_bundle(out, name=MODEL_NAME, alias=ALIAS, report=fitted.report,
                                experiment=EXPERIMENT, tracking_uri=uri)
    return model_uri, out


# ---------------------------------------------------------------------- compare


def _arm_params(config: dict[str, Any], total: int | None, arm: str,
                bundle: str) -> dict[str, object]:
    """Both comparison arms log the same param keys (the task's config, the budget, the
    arm and the bundle that advised it, ``none`` for the parametric arm)."""
    return {**config, "total_steps": total, "arm": arm, "bundle": bundle}


def _arm_result(arm: str, seed: int, run_id: str, res: TrainResult, status: str = "") -> ArmRun:
    rec = res.record
    assert rec.lr is not None and rec.val_metric is not None
    return ArmRun(arm=arm, seed=seed, run_id=run_id, final_val=res.final_val_acc,
                  final_test=res.final_test_acc, steps=list(rec.lr.step), lr=list(rec.lr.value),
                  val=list(rec.val_metric.value), wall_s=res.wall_s, status=status)


def _advisor_run(cfg: DemoConfig, client: MlflowClient, experiment_id: str, parent_id: str,
                 uri: str, model_uri: str, seed: int, peak: float) -> ArmRun:
    """One run driven by the registered model through the MLflow callback."""
    from mlflow.entities import Param

    from tracker_sched.integrations.mlflow.callback import MlflowAdvisorCallback
    from tracker_sched.tasks.mnist1d import steps_per_epoch, train_run

    total = cfg.epochs * steps_per_epoch()
    note = (f"Comparison arm, the advisor: MNIST-1D CNN, seed {seed}, {cfg.epochs} epochs, "
            f"the lr of every step from {model_uri} (starting from peak lr {peak:g}). "
            "Metrics: lr (the lr the optimizer applied; also tracker_sched.lr_applied), "
            "tracker_sched.lr_recommended (what the advisor recommended), tracker_sched.plan "
            "(a marker at each plan), tracker_sched.predicted_final, train_loss, val_acc and "
            "test_acc (fractions, 0 to 1).")
    rid = str(client.create_run(experiment_id, run_name=f"advisor-s{seed}", tags={
        "mlflow.parentRunId": parent_id, "tracker_sched.demo": "advisor",
        "mlflow.note.content": note}).info.run_id)
    cb = MlflowAdvisorCallback(model_uri, total, run_id=rid, tracking_uri=uri)
    try:
        def observer(step: int, loss: float, val: float, lr: float) -> None:
            cb.log_metrics({"train_loss": loss, "val_acc": val, "lr": lr}, step)

        res = train_run(schedule="advisor", peak_lr=peak, seed=seed, epochs=cfg.epochs,
                        lr_fn=cb.advisor.lr, observer=observer)
        client.log_metric(rid, "test_acc", res.final_test_acc, step=total)
        # The same params as the parametric arm's, so both share the runs table's columns.
        client.log_batch(rid, params=[Param(k, str(v)) for k, v in _arm_params(
            res.record.config, total, "advisor", model_uri).items()])
    finally:
        cb.close()
    client.set_terminated(rid, status="FINISHED" if res.record.state == "finished" else "FAILED")
    return _arm_result("advisor", seed, rid, res, cb.plan.status)


def _compare(cfg: DemoConfig, client: MlflowClient, experiment_id: str, uri: str,
             model_uri: str, schedule: str, peak: float, progress: bool,
             say: Say) -> tuple[str, list[ArmRun]]:
    """Both arms on the same new seeds, one run at a time in this process (a few seconds
    each): the advisor's MLflow callback is then the store's only writer while it runs."""
    from tqdm.auto import tqdm

    from tracker_sched.tasks.mnist1d import train_run

    seeds = ", ".join(map(str, cfg.compare_seeds))
    parent = client.create_run(experiment_id, run_name="comparison", tags={
        "tracker_sched.demo": "comparison",
        "mlflow.note.content": f"tracker-sched demo: the sweep's best schedule ({schedule}, "
        f"peak lr {peak:g}) against the advisor ({model_uri}) on seeds {seeds}. "
        "A demo, not a benchmark."})
    parent_id = str(parent.info.run_id)
    say(f"[4/4] compare on new seeds {seeds}: {schedule} at peak lr {peak:g} (the sweep's "
        f"best) vs the advisor from {model_uri}")
    runs: list[ArmRun] = []
    with tqdm(total=2 * len(cfg.compare_seeds), desc="compare", unit="run",
              disable=not progress) as bar:
        for seed in cfg.compare_seeds:
            res = train_run(schedule=schedule, peak_lr=peak, seed=seed, epochs=cfg.epochs)
            rid = log_run(client, experiment_id, parent_id, res,
                           {"tracker_sched.demo": "parametric"},
                           {"arm": "parametric", "bundle": "none"})
            runs.append(_arm_result("parametric", seed, rid, res))
            bar.update(1)
            runs.append(_advisor_run(cfg, client, experiment_id, parent_id, uri, model_uri,
                                     seed, peak))
            bar.update(1)
    client.set_terminated(parent_id)
    return parent_id, runs


# ------------------------------------------------------------------------ the demo


def run_demo(cfg: DemoConfig, *, progress: bool = True, say: Say | None = None) -> DemoResult:
    """Run every stage (see the module docstring) and return what it made.

    ``say`` gets one line per stage (default: the logger). Raises InputError for
    a folder the demo may not use and MissingDependencyError naming the ``demo``
    extra when mlflow, matplotlib or mnist1d is missing.
    """
    import torch

    say = say or log.info
    check_folder(cfg.folder)
    for module in ("mlflow", "matplotlib", "mnist1d"):
        require(module, "demo")  # all three before the first minute of training
    from mlflow.tracking import MlflowClient

    cfg.folder.mkdir(parents=True, exist_ok=True)
    folder = cfg.folder.resolve()
    marker = folder / MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"written_by": "tracker-sched demo"}) + "\n")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only contend with the workers
    stage_s: dict[str, float] = {}
    try:
        with use_tracking_uri(uri), quiet_mlflow():
            say(f"[0/4] MLflow store {uri} (artifacts in {folder / 'artifacts'})")
            t0 = time.perf_counter()
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(EXPERIMENT)
            exp_id = str(exp.experiment_id if exp is not None else client.create_experiment(
                EXPERIMENT, artifact_location=(folder / "artifacts").as_uri()))
            for key, value in {**EXPERIMENT_TAGS, VIEW_TAG: runs_view()}.items():
                client.set_experiment_tag(exp_id, key, value)
            stage_s["store"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            sweep_id = _run_sweep(cfg, client, exp_id, progress, say)
            stage_s["sweep"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            model_uri, bundle_dir = _fit_and_register(cfg, uri, sweep_id, progress, say)
            stage_s["fit_register"] = time.perf_counter() - t0
            from tracker_sched.bundle.folder import Bundle

            best = Bundle.load(bundle_dir).manifest.sweep.best_config
            schedule, peak = str(best["schedule"]), float(best["peak_lr"])
            t0 = time.perf_counter()
            compare_id, runs = _compare(cfg, client, exp_id, uri, model_uri, schedule, peak,
                                        progress, say)
            stage_s["compare"] = time.perf_counter() - t0
            result = DemoResult(folder=folder, tracking_uri=uri, experiment_id=exp_id,
                                sweep_run_id=sweep_id, compare_run_id=compare_id,
                                model_uri=model_uri, best_schedule=schedule, best_peak_lr=peak,
                                runs=runs, stage_s=stage_s)
            write_plots(cfg, result, bundle_dir, client)
    finally:
        torch.set_num_threads(threads)
    return result
