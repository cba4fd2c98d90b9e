"""Train a grid of MNIST-1D runs (schedule x peak lr x seed) and write them as JSON Lines.

    python -m benchmarks.make_sweep --out runs/cnn_sweep.jsonl --seeds 0 1

Writes ``<out>`` (one ``RunRecord.model_dump_json()`` per line, sorted by
run_id, written atomically), a sidecar ``<out stem>.summary.json`` with each
run's final accuracies, state and wall time, and prints a table of
configurations by mean final validation accuracy over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.mnist1d_task import DEFAULT_PEAKS, MODELS, SCHEDULES, TrainResult, train_run


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _run_job(kwargs: dict[str, Any]) -> TrainResult:
    return train_run(**kwargs)


def make_sweep(
    model: str = "cnn",
    schedules: Sequence[str] = SCHEDULES,
    peaks: Sequence[float] = DEFAULT_PEAKS,
    seeds: Sequence[int] = (0, 1),
    epochs: int = 30,
    batch_size: int = 128,
    log_every: int = 3,
    workers: int = 2,
    sweep_id: str | None = None,
    progress: bool = True,
) -> list[TrainResult]:
    """Train every (schedule, peak, seed) in a spawn-context process pool.

    Each worker uses one torch thread. Results come back sorted by run_id.
    """
    jobs = [
        {
            "model": model,
            "schedule": schedule,
            "peak_lr": float(peak),
            "seed": int(seed),
            "epochs": epochs,
            "batch_size": batch_size,
            "log_every": log_every,
            "sweep_id": sweep_id if sweep_id is not None else f"mnist1d-{model}",
        }
        for schedule in schedules
        for peak in peaks
        for seed in seeds
    ]
    from tqdm import tqdm

    results: list[TrainResult] = []
    bar = tqdm(total=len(jobs), desc=f"mnist1d-{model}", unit="run", disable=not progress)
    try:
        ctx = mp.get_context("spawn")
        with ctx.Pool(processes=max(1, workers), initializer=_init_worker) as pool:
            for result in pool.imap_unordered(_run_job, jobs):
                results.append(result)
                bar.set_postfix_str(f"{result.record.run_id} {result.record.state}")
                bar.update(1)
    finally:
        bar.close()
    results.sort(key=lambda r: r.record.run_id)
    ids = [r.record.run_id for r in results]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate run ids in the sweep (repeated schedule, peak or seed?)")
    return results


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; match an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path: Path, results: Iterable[TrainResult]) -> None:
    """One RunRecord JSON per line, sorted by run_id; temp file then rename."""
    records = sorted((r.record for r in results), key=lambda rec: rec.run_id)
    _atomic_write_text(path, "".join(rec.model_dump_json() + "\n" for rec in records))


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


def config_table(results: Iterable[TrainResult]) -> list[dict[str, Any]]:
    """Per (schedule, peak): mean final val/test accuracy over seeds, best val first."""
    groups: dict[tuple[str, float], list[TrainResult]] = {}
    for r in results:
        cfg = r.record.config
        groups.setdefault((str(cfg["schedule"]), float(cfg["peak_lr"])), []).append(r)  # type: ignore[arg-type]
    rows = [
        {
            "schedule": schedule,
            "peak_lr": peak,
            "n_seeds": len(rs),
            "mean_val_acc": statistics.fmean(r.final_val_acc for r in rs),
            "mean_test_acc": statistics.fmean(r.final_test_acc for r in rs),
            "crashed": sum(r.record.state == "crashed" for r in rs),
        }
        for (schedule, peak), rs in groups.items()
    ]

    def key(row: dict[str, Any]) -> tuple[float, str, float]:
        val = row["mean_val_acc"]
        return (-val if not math.isnan(val) else math.inf, row["schedule"], row["peak_lr"])

    rows.sort(key=key)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'schedule':<10} {'peak_lr':>8} {'seeds':>5} {'val_acc':>8} {'test_acc':>8} crashed"]
    for row in rows:
        lines.append(
            f"{row['schedule']:<10} {row['peak_lr']:>8.0e} {row['n_seeds']:>5d} "
            f"{row['mean_val_acc']:>8.4f} {row['mean_test_acc']:>8.4f} {row['crashed']:>7d}"
        )
    return "\n".join(lines)


def write_summary(
    path: Path, results: Sequence[TrainResult], total_wall_s: float, args: dict[str, Any]
) -> None:
    runs = [
        {
            "run_id": r.record.run_id,
            "schedule": r.record.config["schedule"],
            "peak_lr": r.record.config["peak_lr"],
            "seed": r.record.config["seed"],
            "state": r.record.state,
            "final_val_acc": r.final_val_acc,
            "final_test_acc": r.final_test_acc,
            "wall_s": round(r.wall_s, 3),
        }
        for r in sorted(results, key=lambda r: r.record.run_id)
    ]
    payload = {
        "args": args,
        "n_runs": len(runs),
        "n_crashed": sum(run["state"] == "crashed" for run in runs),
        "total_wall_s": round(total_wall_s, 3),
        "runs": runs,
        "table": config_table(results),
    }
    _atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output .jsonl path")
    parser.add_argument("--model", choices=MODELS, default="cnn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    parser.add_argument("--peaks", type=float, nargs="+", default=list(DEFAULT_PEAKS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sweep-id", default=None, help="default: mnist1d-<model>")
    parser.add_argument("--no-progress", action="store_true")
    ns = parser.parse_args(argv)

    t0 = time.perf_counter()
    results = make_sweep(
        model=ns.model,
        schedules=ns.schedules,
        peaks=ns.peaks,
        seeds=ns.seeds,
        epochs=ns.epochs,
        batch_size=ns.batch_size,
        log_every=ns.log_every,
        workers=ns.workers,
        sweep_id=ns.sweep_id,
        progress=not ns.no_progress,
    )
    total = time.perf_counter() - t0
    write_jsonl(ns.out, results)
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ns).items()}
    write_summary(summary_path(ns.out), results, total, args)

    print(format_table(config_table(results)))
    crashed = [r.record.run_id for r in results if r.record.state == "crashed"]
    per_run = statistics.fmean(r.wall_s for r in results) if results else math.nan
    print(
        f"\n{len(results)} runs, {len(crashed)} crashed"
        + (f" ({', '.join(crashed)})" if crashed else "")
        + f"; total wall {total:.1f} s, mean per run {per_run:.2f} s"
    )
    print(f"wrote {ns.out} ({ns.out.stat().st_size} bytes) and {summary_path(ns.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
