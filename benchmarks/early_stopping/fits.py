"""The benchmark's bundles: fitted once per task (``sweeps.FIT``), kept under ``--cache``,
several at a time in a process pool (each fit is one process on one thread), and the
replays built from them."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.early_stopping.sweeps import FIT, Replay, build_replay, fit_bundle
from tracker_sched.bundle.folder import Bundle
from tracker_sched.fit.prepare import prepare
from tracker_sched.fit.stop_calibration import calibrate_prepared
from tracker_sched.schema import RunRecord


def _cached(folder: Path | None) -> Bundle | None:
    """The bundle saved in ``folder`` if it was fitted with the current ``FIT``."""
    if folder is None or not (folder / "bundle.json").is_file():
        return None
    loaded = Bundle.load(folder)
    same = loaded.manifest.model == FIT.model and loaded.manifest.fit == FIT.model_dump(
        mode="json", exclude={"model"})
    return loaded if same else None


def load_or_fit(name: str, records: Callable[[], list[RunRecord]], cache: Path | None,
                recalibrate: bool = True) -> Bundle:
    """Fit, or load the bundle a previous run saved under ``cache`` (same fit config), its
    stop calibration recomputed with the current code (it never changes the weights;
    ``recalibrate=False``: a bundle this invocation just fitted, already current)."""
    folder = cache / name if cache is not None else None
    loaded = _cached(folder)
    if loaded is not None and not recalibrate:
        return loaded
    if loaded is not None:
        cal = calibrate_prepared(loaded.models, prepare(records(), FIT), FIT)
        loaded.manifest = loaded.manifest.model_copy(update={"stopping": cal})
        return loaded
    bundle = fit_bundle(records())
    if folder is not None:
        bundle.save(folder)
    return bundle


def pool_map(fn: Callable[[Any], Any], jobs: list[Any], workers: int) -> list[Any]:
    """``[fn(j) for j in jobs]``, in ``workers`` spawned processes when > 1 (in order)."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        return pool.map(fn, jobs, chunksize=1)


#: (task, bundle name, the sweep it is fitted on, {block: the sweep pruned}, cache folder)
ReadyJob = tuple[str, str, list[RunRecord], dict[str, list[RunRecord]], str | None]


def ready(job: ReadyJob) -> tuple[str, dict[str, Replay], float, bool]:
    """One bundle fitted (or loaded and recalibrated) and its pruned sweeps' replays, without
    the bundle (the arms need its calibration only: cheap to send back from a process).

    Returns:
        The bundle's name, the replays by block, the seconds it took, whether it was fitted.
    """
    import torch

    torch.set_num_threads(1)
    name, key, fit, pruned, cache = job
    t0 = time.perf_counter()
    folder = Path(cache) if cache is not None else None
    fitted = _cached(folder / key if folder is not None else None) is None
    bundle = load_or_fit(key, fit.copy, folder)
    reps = {block: dataclasses.replace(build_replay(name, bundle, records), bundle=None)
            for block, records in pruned.items()}
    seconds = time.perf_counter() - t0
    print(f"{name}: bundle {key} {'fitted' if fitted else 'loaded'} in {seconds:.0f} s",
          flush=True)
    return key, reps, seconds, fitted


__all__ = ["ReadyJob", "load_or_fit", "pool_map", "ready"]
