"""Log a task's sweep to a real tracker and read it back through tracker_sched's sources.

MLflow: one sqlite store per task (``runs/suite/<task>/mlflow.db``), the sweep's
runs as children of one parent run (``tracker_sched.sources.mlflow_log.log_sweep``),
read back by ``MlflowSource``. W&B: one offline run per sweep run, written by the
wandb SDK itself (``wandb.init(mode="offline")``, a ``run.log`` per log point with
the keys W&B users log: ``train/loss``, ``lr``, ``val/acc`` or ``val/loss``), read
back by ``WandbOfflineSource``. The runs are logged after training, point by point,
with the values and steps training produced.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tracker_sched.schema import RunRecord
from tracker_sched.sources.base import SourceResult

WANDB_KEYS = {"train_loss": "train/loss", "lr": "lr", "val_acc": "val/acc",
              "val_loss": "val/loss"}


def wandb_id(run_id: str) -> str:
    """A W&B run id for ``run_id`` (W&B ids take letters, digits, ``-`` and ``_``)."""
    return "".join(c if c.isalnum() or c in "-_" else "p" for c in run_id)


@contextmanager
def _offline_env(root: Path) -> Iterator[None]:
    """wandb offline under ``root``; on exit the variables set or cleared here are restored.

    Only those: the block's ``wandb.teardown()`` stops the process's wandb service and clears
    its token (``WANDB_SERVICE``), and restoring the whole environment would bring back the
    token of a service that no longer runs, so the caller's next ``wandb.init`` would fail to
    connect (it did, in the test process that had a service running before).
    """
    set_vars = {
        "WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false", "WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off",
        **{v: str(root / ".wandb-home") for v in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR",
                                                   "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")},
    }
    cleared = ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RUN_ID", "WANDB_PROJECT",
               "WANDB_ENTITY", "WANDB_API_KEY", "WANDB_BASE_URL")
    keep = {k: os.environ.get(k) for k in (*set_vars, *cleared)}
    os.environ.update(set_vars)
    for var in cleared:
        os.environ.pop(var, None)
    try:
        yield
    finally:
        for k, v in keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def log_wandb(runs: Sequence[RunRecord], root: Path, project: str) -> None:
    """Write each run as a real W&B offline run under ``root/wandb``."""
    import wandb

    with _offline_env(root):
        for rec in runs:
            assert rec.train_loss is not None and rec.lr is not None
            assert rec.val_metric is not None
            val_key = WANDB_KEYS[rec.metric_keys.get("val_metric", "val_acc")]
            rows: dict[int, dict[str, float]] = {}
            for key, series in (("train/loss", rec.train_loss), ("lr", rec.lr),
                                (val_key, rec.val_metric)):
                for s, v in zip(series.step, series.value, strict=True):
                    rows.setdefault(int(s), {})[key] = float(v)
            run = wandb.init(
                project=project, id=wandb_id(rec.run_id), name=rec.run_id,
                config={**rec.config, "total_steps": rec.total_steps}, dir=str(root),
                mode="offline",
                settings=wandb.Settings(silent=True, x_disable_stats=True, console="off"),
            )
            try:
                for step in sorted(rows):
                    run.log(rows[step], step=step)
            finally:
                run.finish(exit_code=0 if rec.state == "finished" else 1)
                wandb.teardown()


def log_and_read(runs: Sequence[RunRecord], tracker: str, folder: Path,
                 project: str) -> tuple[SourceResult, dict[str, Any]]:
    """Log ``runs`` once (a marker file remembers it) and read the sweep back.

    Returns:
        What the tracker's source reads (the runs as a user's fit would see them), and
        the marker's facts (``log_s``: how long logging took).
    """
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "tracker.json"
    info = json.loads(marker.read_text()) if marker.exists() else None
    if tracker == "mlflow":
        from tracker_sched.sources.mlflow_log import log_sweep
        from tracker_sched.sources.mlflow_source import MlflowSource

        uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
        if info is None:
            t0 = time.perf_counter()
            parent = log_sweep(runs, project, tracking_uri=uri, parent_name=f"{project}-sweep")
            info = {"tracker": tracker, "parent_run_id": parent, "runs": len(runs),
                    "log_s": time.perf_counter() - t0}
            marker.write_text(json.dumps(info))
        return MlflowSource(project, parent_run_id=info["parent_run_id"], tracking_uri=uri,
                            progress=False).read(), info
    if tracker == "wandb":
        from tracker_sched.sources.wandb_offline import WandbOfflineSource

        if info is None:
            if (folder / "wandb").exists():  # an interrupted logging of ours: start over
                shutil.rmtree(folder / "wandb")
            t0 = time.perf_counter()
            log_wandb(runs, folder, project)
            info = {"tracker": tracker, "runs": len(runs), "log_s": time.perf_counter() - t0}
            marker.write_text(json.dumps(info))
        return WandbOfflineSource(folder / "wandb").read(), info
    raise ValueError(f"unknown tracker {tracker!r}; expected mlflow or wandb")
