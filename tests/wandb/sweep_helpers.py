"""Real offline W&B runs for the sweep-callback tests: agent-launched runs, replayed sweeps.

Everything goes through the real wandb SDK in offline mode into a temporary
folder. A run launched by ``wandb agent`` is reproduced as wandb itself sees
one: ``WANDB_SWEEP_ID`` and ``WANDB_SWEEP_PARAM_PATH`` (a YAML of
``{param: {value: v}}``) set before ``wandb.init``. ``wandb.teardown()`` after
each run makes the next ``wandb.init`` read the environment again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tracker_sched.schema import RunRecord
from tracker_sched.sources.wandb_log import Scan, iter_log_records

wandb = pytest.importorskip("wandb")

SWEEP_PARAMS = ("schedule", "peak_lr", "seed")
#: The keys W&B users log (the fixture's own names are train_loss, lr, val_acc).
WANDB_KEYS = {"train_loss": "train/loss", "lr": "lr", "val_metric": "val/acc"}


def offline_env(mp: pytest.MonkeyPatch, root: Path) -> None:
    """wandb in offline mode, every folder it writes under ``root``, no sweep or server
    variables leaking in from the caller's environment."""
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(root))
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_ERROR_REPORTING", "false")
    mp.setenv("WANDB_DISABLE_GIT", "true")
    mp.setenv("WANDB_CONSOLE", "off")
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(var, str(root / ".wandb-home"))
    for var in ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RUN_ID", "WANDB_PROJECT",
                "WANDB_ENTITY", "WANDB_API_KEY", "WANDB_BASE_URL"):
        mp.delenv(var, raising=False)


@contextmanager
def agent_run(
    root: Path,
    *,
    sweep_id: str | None,
    params: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Iterator[Any]:
    """A real offline run as ``wandb agent`` would start it; finished and torn down on exit.

    ``params`` are the sweep's values for this run (written to the YAML that
    ``WANDB_SWEEP_PARAM_PATH`` names); ``config`` the script's own defaults.
    """
    with pytest.MonkeyPatch.context() as mp:
        offline_env(mp, root)
        if sweep_id is not None:
            param_file = root / f"sweep-params-{len(list(root.glob('sweep-params-*')))}.yaml"
            param_file.write_text(json.dumps({k: {"value": v} for k, v in params.items()}),
                                  encoding="utf-8")  # JSON is YAML
            mp.setenv("WANDB_SWEEP_ID", sweep_id)
            mp.setenv("WANDB_SWEEP_PARAM_PATH", str(param_file))
            init_config = dict(config or {})
        else:
            init_config = {**(config or {}), **params}
        run = wandb.init(
            project="tracker-sched-test", entity="team", name=name, config=init_config,
            dir=str(root), mode="offline",
            settings=wandb.Settings(silent=True, x_disable_stats=True, console="off"),
        )
        try:
            yield run
        finally:
            run.finish()
            wandb.teardown()


def run_log(root: Path, run_id: str) -> Path:
    """The ``.wandb`` transaction log of run ``run_id`` under ``root``."""
    (log,) = root.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    return log


def replay_sweep(root: Path, records: list[RunRecord], sweep_id: str) -> list[str]:
    """Log ``records`` as runs of one offline sweep, with W&B's usual metric keys.

    Returns the wandb run ids (a sweep run picks its own id).
    """
    ids = []
    for rec in records:
        rows: dict[int, dict[str, float]] = {}
        for role, key in WANDB_KEYS.items():
            series = rec.series(role)  # type: ignore[arg-type]
            assert series is not None
            for step, value in zip(series.step, series.value, strict=True):
                rows.setdefault(step, {})[key] = value
        params = {k: rec.config[k] for k in SWEEP_PARAMS}
        config = {k: v for k, v in rec.config.items() if k not in SWEEP_PARAMS}
        config["total_steps"] = rec.total_steps
        with agent_run(root, sweep_id=sweep_id, params=params, config=config,
                       name=rec.name) as run:
            for step, values in sorted(rows.items()):
                run.log(values, step=step)
            ids.append(run.id)
    return ids


def read_log(path: Path) -> tuple[list[Any], Scan]:
    """Every intact record of a ``.wandb`` file, decoded, with the reader's damage scan."""
    from wandb.proto import wandb_internal_pb2

    scan = Scan()
    records = []
    with path.open("rb") as fh:
        for _, _, payload in iter_log_records(fh, scan):
            rec = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            rec.ParseFromString(payload)
            records.append(rec)
    return records, scan


def history_rows(records: list[Any]) -> dict[int, dict[str, Any]]:
    """History rows by ``_step``: flat key -> decoded JSON value. Asserts one row per step."""
    rows: dict[int, dict[str, Any]] = {}
    for rec in records:
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {".".join(item.nested_key) or item.key: json.loads(item.value_json)
               for item in rec.history.item}
        step = int(row["_step"])
        assert step not in rows, f"two history rows at step {step}"
        rows[step] = row
    return rows


def summary_of(records: list[Any]) -> dict[str, Any]:
    """The run summary as the log leaves it (later updates win)."""
    out: dict[str, Any] = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                out[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
    return out
