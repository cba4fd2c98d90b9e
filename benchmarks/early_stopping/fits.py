"""The benchmark's bundles: fitted once per task (``sweeps.FIT``), kept under ``--cache``,
several at a time in a process pool (each fit is one process on one thread)."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.early_stopping.sweeps import FIT, fit_bundle
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


def load_or_fit(name: str, records: Callable[[], list[RunRecord]],
                cache: Path | None) -> Bundle:
    """Fit, or load the bundle a previous run saved under ``cache`` (same fit config), its
    stop calibration recomputed with the current code (it never changes the weights)."""
    folder = cache / name if cache is not None else None
    loaded = _cached(folder)
    if loaded is not None:
        cal = calibrate_prepared(loaded.models, prepare(records(), FIT), FIT)
        loaded.manifest = loaded.manifest.model_copy(update={"stopping": cal})
        return loaded
    bundle = fit_bundle(records())
    if folder is not None:
        bundle.save(folder)
    return bundle


def _fit_and_save(job: tuple[str, list[RunRecord], str]) -> tuple[str, float]:
    name, records, folder = job
    t0 = time.perf_counter()
    fit_bundle(records).save(Path(folder))
    return name, time.perf_counter() - t0


def fit_missing(fits: dict[str, Callable[[], list[RunRecord]]], cache: Path,
                workers: int) -> dict[str, float]:
    """Fit every bundle of ``fits`` (name -> its sweep) that ``cache`` lacks, ``workers`` at a
    time, and save each under ``cache/name``.

    Returns:
        The seconds each fit took, by name (those fitted here only).
    """
    todo = [(n, recs(), str(cache / n)) for n, recs in fits.items() if _cached(cache / n) is None]
    if not todo:
        return {}
    print(f"fitting {len(todo)} bundles, {workers} at a time: {', '.join(t[0] for t in todo)}",
          flush=True)
    out: dict[str, float] = {}
    if workers <= 1:
        results = map(_fit_and_save, todo)
        for name, s in results:
            out[name] = s
            print(f"  {name}: fitted in {s:.0f} s", flush=True)
        return out
    with mp.get_context("spawn").Pool(min(workers, len(todo))) as pool:
        for name, s in pool.imap_unordered(_fit_and_save, todo):
            out[name] = s
            print(f"  {name}: fitted in {s:.0f} s", flush=True)
    return out


__all__ = ["fit_missing", "load_or_fit"]
