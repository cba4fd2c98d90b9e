"""The W&B offline source against real offline runs written by the wandb SDK.

Every run here is logged by ``wandb.init(mode="offline")`` in-process into a
temporary folder; ``wandb.teardown()`` after each run makes the next
``wandb.init`` read the environment again (the sweep variables included).
No W&B server is involved and nothing is mocked.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.tiny import FIXTURE
from tests.wandb.sweep_helpers import offline_env
from tracker_sched.data.validation import validate_sweep
from tracker_sched.errors import InputError, MissingDependencyError, SourceError
from tracker_sched.fit.config import FitConfig
from tracker_sched.fit.generative import fit_sweep
from tracker_sched.model.latent import ModelConfig
from tracker_sched.schema import MetricMap, RunRecord
from tracker_sched.sources.base import Source
from tracker_sched.sources.files import read_sweep
from tracker_sched.sources.wandb_log import BLOCK_LEN, FILE_HEADER, Scan, iter_log_records
from tracker_sched.sources.wandb_offline import WandbOfflineSource

wandb = pytest.importorskip("wandb")

ROWS = 50


def log_run(
    root: Path,
    rows: list[tuple[int, dict[str, Any]]],
    *,
    run_id: str,
    config: dict[str, Any] | None = None,
    name: str | None = None,
    exit_code: int = 0,
    sweep: tuple[str, Path] | None = None,
) -> Path:
    """Log ``rows`` (step, values) as one real offline run; return its ``.wandb`` file."""
    with pytest.MonkeyPatch.context() as mp:
        offline_env(mp, root)
        if sweep is not None:
            mp.setenv("WANDB_SWEEP_ID", sweep[0])
            mp.setenv("WANDB_SWEEP_PARAM_PATH", str(sweep[1]))
        run = wandb.init(
            project="tracker-sched-test", entity="team", id=run_id, name=name,
            config=config or {}, dir=str(root), mode="offline",
            settings=wandb.Settings(silent=True, x_disable_stats=True, console="off"),
        )
        actual_id = run.id  # an agent-launched (sweep) run ignores id= and picks its own
        try:
            for step, values in rows:
                run.log(values, step=step)
        finally:
            run.finish(exit_code=exit_code)
            wandb.teardown()
    (log,) = root.glob(f"wandb/offline-run-*-{actual_id}/run-{actual_id}.wandb")
    return log


def base_rows(n: int = ROWS, *, lr_key: str | None = "lr") -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for step in range(n):
        values: dict[str, Any] = {
            "train/loss": float("nan") if step == 30 else 2.0 / (1 + step),
            "ints": step * 3,  # an int-valued metric: comes back as a JSON int
            "note": "text is skipped",
            "my/global_step": step * 10,  # a custom step column, declared nowhere
        }
        if lr_key is not None:
            values[lr_key] = 0.1 * (1 - step / n) + 1e-4
        if step % 5 == 0:  # the validation metric at its own, slower rate
            values["val/acc"] = 0.5 + step / 200
        rows.append((step, values))
    return rows


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Four real offline runs in one wandb dir: plain, no lr, agent-launched, failed."""
    root = tmp_path_factory.mktemp("wandb-runs")
    params = root / "sweep-params.yaml"
    params.write_text("peak_lr:\n  value: 0.03\nwarmup:\n  value: 7\n", encoding="utf-8")
    config = {"total_steps": ROWS, "peak_lr": 0.1, "optim": {"name": "adamw", "wd": 0.01}}
    logs = {
        "a-base": log_run(root, base_rows(), run_id="a-base", config=config, name="base run"),
        "b-nolr": log_run(root, base_rows(lr_key=None), run_id="b-nolr",
                          config={"max_steps": ROWS}),
        "c-sweep": log_run(root, base_rows(20), run_id="c-sweep", config={"peak_lr": 0.1},
                           sweep=("swp-42", params)),
        "d-failed": log_run(root, base_rows(10), run_id="d-failed", exit_code=3),
    }
    return {"root": root, "logs": logs}


@pytest.fixture(scope="module")
def result(logged: dict[str, Any]) -> dict[str, RunRecord]:
    """The runs read back, keyed by the names in ``logged`` (the sweep run's id is random)."""
    out = WandbOfflineSource(logged["root"]).read()
    assert out.issues == []
    ids = [run.run_id for run in out.runs]
    assert ids == sorted(ids)
    by_id = {run.run_id: run for run in out.runs}
    return {name: by_id[log.stem[4:]] for name, log in logged["logs"].items()}


def test_is_a_source() -> None:
    source = WandbOfflineSource("nowhere")
    assert isinstance(source, Source)
    assert source.name == "wandb-offline"


def test_round_trip_series_steps_and_config(result: dict[str, RunRecord]) -> None:
    assert sorted(result) == ["a-base", "b-nolr", "c-sweep", "d-failed"]
    run = result["a-base"]
    assert run.run_id == "a-base"
    assert run.source == "wandb"
    assert run.name == "base run"
    assert run.state == "finished"
    assert run.sweep_id is None
    assert run.total_steps == ROWS
    assert run.metric_keys == {"lr": "lr", "train_loss": "train/loss", "val_metric": "val/acc"}
    assert run.config["peak_lr"] == 0.1
    assert run.config["optim"] == {"name": "adamw", "wd": 0.01}
    meta = run.config["_wandb"]
    assert isinstance(meta, dict)
    assert meta["project"] == "tracker-sched-test"
    assert meta["entity"] == "team"
    assert run.lr is not None and run.train_loss is not None
    assert run.lr.step == list(range(ROWS))
    assert run.lr.value == [0.1 * (1 - s / ROWS) + 1e-4 for s in range(ROWS)]
    assert run.train_loss.step == list(range(ROWS))
    assert run.train_loss.value[3] == 2.0 / 4


def test_mixed_logging_rates_keep_every_row(result: dict[str, RunRecord]) -> None:
    run = result["a-base"]
    assert run.val_metric is not None and run.lr is not None
    assert run.val_metric.step == list(range(0, ROWS, 5))
    assert run.val_metric.value == [0.5 + s / 200 for s in range(0, ROWS, 5)]
    assert len(run.lr) == ROWS  # rows without val/acc are not dropped


def test_nan_passes_through_and_ints_are_numbers(logged: dict[str, Any]) -> None:
    mm = MetricMap(train_loss="train/loss", lr="ints", val_metric="val/acc")
    (run,) = [r for r in WandbOfflineSource(logged["logs"]["a-base"], mm).read().runs]
    assert run.train_loss is not None and run.lr is not None
    assert math.isnan(run.train_loss.value[30])
    assert run.lr.value == [float(3 * s) for s in range(ROWS)]


def test_run_without_lr_is_excluded_naming_the_keys(result: dict[str, RunRecord]) -> None:
    run = result["b-nolr"]
    assert run.lr is None
    assert run.total_steps == ROWS  # from max_steps
    checked = validate_sweep(list(result.values()))
    (issue,) = [i for i in checked.issues if i.run_id == run.run_id]
    assert issue.action == "excluded"
    assert "learning rate" in issue.reason
    keys_seen = run.config["_keys_seen"]
    assert keys_seen == ["ints", "my/global_step", "train/loss", "val/acc"]
    with pytest.raises(InputError) as err:
        MetricMap().resolve(keys_seen, strict=True)  # type: ignore[arg-type]
    assert "no lr metric" in str(err.value)
    assert "Keys seen: ints, my/global_step, train/loss, val/acc" in str(err.value)


def test_sweep_id_and_sweep_params_read_back(result: dict[str, RunRecord]) -> None:
    run = result["c-sweep"]
    assert run.sweep_id == "swp-42"
    assert run.config["peak_lr"] == 0.03
    assert run.config["warmup"] == 7
    assert run.total_steps is None


def test_exit_code_sets_state(result: dict[str, RunRecord]) -> None:
    run = result["d-failed"]
    assert run.state == "failed"
    meta = run.config["_wandb"]
    assert isinstance(meta, dict) and meta["exit_code"] == 3


def test_custom_step_key(logged: dict[str, Any]) -> None:
    source = WandbOfflineSource(logged["logs"]["a-base"], step_key="my/global_step")
    (run,) = source.read().runs
    assert run.lr is not None
    assert run.lr.step == [10 * s for s in range(ROWS)]


def test_path_forms(logged: dict[str, Any]) -> None:
    root: Path = logged["root"]
    log: Path = logged["logs"]["a-base"]
    for path in (root, root / "wandb", log.parent, log):
        ids = [r.run_id for r in WandbOfflineSource(path).read().runs]
        assert "a-base" in ids
    assert len(WandbOfflineSource(log.parent).read().runs) == 1


def test_truncated_file_keeps_records_before_the_cut(
    logged: dict[str, Any], tmp_path: Path
) -> None:
    data = logged["logs"]["a-base"].read_bytes()
    cut = tmp_path / "run-a-base.wandb"
    cut.write_bytes(data[: len(data) // 2])
    out = WandbOfflineSource(cut).read()
    (run,) = out.runs
    (issue,) = out.issues
    assert issue.run_id == "a-base"
    assert issue.action == "repaired"
    assert "unreadable" in issue.reason and "cut off" in issue.reason
    assert f"-{len(data) // 2} unreadable" in issue.reason
    assert run.state == "crashed"  # the exit record was after the cut
    assert run.lr is not None
    assert 0 < len(run.lr) < ROWS
    assert run.lr.step == list(range(len(run.lr)))


def _history_record_spans(path: Path) -> list[tuple[int, int]]:
    from wandb.proto import wandb_internal_pb2

    spans = []
    with path.open("rb") as fh:
        for start, end, payload in iter_log_records(fh, Scan()):
            rec = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            rec.ParseFromString(payload)
            if rec.WhichOneof("record_type") == "history":
                spans.append((start, end))
    return spans


def test_bad_checksum_costs_only_that_record(logged: dict[str, Any], tmp_path: Path) -> None:
    src: Path = logged["logs"]["a-base"]
    spans = _history_record_spans(src)
    assert len(spans) == ROWS
    start, end = spans[20]
    data = bytearray(src.read_bytes())
    data[end - 3] ^= 0xFF  # a byte of the step-20 row's data
    bad = tmp_path / "run-a-base.wandb"
    bad.write_bytes(bytes(data))
    out = WandbOfflineSource(bad).read()
    (run,) = out.runs
    (issue,) = out.issues
    assert issue.action == "repaired"
    assert f"bytes {start}-{end} unreadable (bad checksum)" in issue.reason
    assert run.lr is not None
    assert run.lr.step == [s for s in range(ROWS) if s != 20]  # rows after the damage kept
    assert run.state == "finished"


@pytest.fixture(scope="module")
def multi_block(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run spanning several 32 KiB blocks, with a record larger than a block."""
    root = tmp_path_factory.mktemp("wandb-big")
    rows = [(step, {**values, "note": f"{step:04d}" * 750})  # ~3 KB of text a row
            for step, values in base_rows()]
    return log_run(root, rows, run_id="big", config={"blob": "y" * 40_000})


def test_records_split_across_blocks_are_reassembled(multi_block: Path) -> None:
    spans = _history_record_spans(multi_block)
    assert len(spans) == ROWS
    assert multi_block.stat().st_size > 4 * BLOCK_LEN
    with multi_block.open("rb") as fh:
        scan = Scan()
        records = list(iter_log_records(fh, scan))
    assert scan.damage == []
    assert any(end - start > BLOCK_LEN for start, end, _ in records)  # first/middle/last
    (run,) = WandbOfflineSource(multi_block).read().runs
    assert run.config["blob"] == "y" * 40_000
    assert run.lr is not None and run.lr.step == list(range(ROWS))


def test_corrupt_chunk_length_loses_the_rest_of_its_block_only(
    multi_block: Path, tmp_path: Path
) -> None:
    spans = _history_record_spans(multi_block)
    block = 2
    in_block = [i for i, (start, end) in enumerate(spans)
                if start // BLOCK_LEN == block and end // BLOCK_LEN == block]
    first = in_block[0]
    start, _ = spans[first]
    data = bytearray(multi_block.read_bytes())
    data[start + 4 : start + 6] = b"\xff\xff"  # the chunk's length now runs past the block
    bad = tmp_path / "run-big.wandb"
    bad.write_bytes(bytes(data))
    out = WandbOfflineSource(bad).read()
    (run,) = out.runs
    (issue,) = out.issues
    assert f"bytes {start}-" in issue.reason
    assert "chunk length past block end" in issue.reason
    assert run.lr is not None
    lost = sorted(set(range(ROWS)) - set(run.lr.step))
    assert lost[0] == first
    assert lost == list(range(first, lost[-1] + 1))  # one contiguous stretch
    assert run.lr.step[-1] == ROWS - 1  # the blocks after the damage are read again
    assert spans[lost[-1] + 1][0] >= (block + 1) * BLOCK_LEN


@pytest.mark.parametrize("where", [0.25, 0.5, 0.75])
def test_flipped_byte_anywhere_never_crashes(
    logged: dict[str, Any], tmp_path: Path, where: float
) -> None:
    data = bytearray(logged["logs"]["a-base"].read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    bad = tmp_path / "run-a-base.wandb"
    bad.write_bytes(bytes(data))
    out = WandbOfflineSource(bad).read()
    assert [i.action for i in out.issues] == ["repaired"]
    assert "unreadable" in out.issues[0].reason
    assert len(out.runs) == 1


def test_header_only_and_foreign_files_are_excluded(tmp_path: Path) -> None:
    (tmp_path / "offline-run-1-hdr").mkdir()
    (tmp_path / "offline-run-1-hdr" / "run-hdr.wandb").write_bytes(FILE_HEADER)
    (tmp_path / "offline-run-2-junk").mkdir()
    (tmp_path / "offline-run-2-junk" / "run-junk.wandb").write_bytes(b"not a log at all")
    out = WandbOfflineSource(tmp_path).read()
    assert out.runs == []
    reasons = {i.run_id: (i.action, i.reason) for i in out.issues}
    assert reasons["hdr"][0] == "excluded" and "no records" in reasons["hdr"][1]
    assert reasons["junk"][0] == "excluded" and "not a W&B transaction log" in reasons["junk"][1]


def test_missing_path_and_empty_folder_raise(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        WandbOfflineSource(tmp_path / "missing").read()
    with pytest.raises(SourceError, match="no offline-run"):
        WandbOfflineSource(tmp_path).read()


def test_missing_wandb_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb.proto", None)  # as if wandb were not installed
    with pytest.raises(MissingDependencyError, match=r"tracker-sched\[wandb\]"):
        WandbOfflineSource(tmp_path).read()


@pytest.fixture(scope="module")
def one_thread() -> None:
    """Torch runs on one thread in every test (tests/conftest.py)."""


@pytest.mark.slow
def test_fit_from_a_real_offline_sweep(
    tmp_path_factory: pytest.TempPathFactory, one_thread: None
) -> None:
    originals = read_sweep(FIXTURE).runs[:8]
    root = tmp_path_factory.mktemp("wandb-sweep")
    keys = {"lr": "lr", "train_loss": "train/loss", "val_metric": "val/acc"}
    for rec in originals:
        rows: dict[int, dict[str, Any]] = {}
        for role, key in keys.items():
            series = rec.series(role)  # type: ignore[arg-type]
            assert series is not None
            for step, value in zip(series.step, series.value, strict=True):
                rows.setdefault(step, {})[key] = value
        config = {**rec.config, "total_steps": rec.total_steps}
        log_run(root, sorted(rows.items()), run_id=rec.run_id, config=config, name=rec.name)

    out = WandbOfflineSource(root).read()
    assert out.issues == []
    assert [r.run_id for r in out.runs] == sorted(r.run_id for r in originals)
    by_id = {r.run_id: r for r in out.runs}
    for rec in originals:
        back = by_id[rec.run_id]
        assert back.total_steps == rec.total_steps
        for role in keys:
            assert back.series(role) == rec.series(role)  # type: ignore[arg-type]

    fit_config = FitConfig(
        max_iterations=20, eval_every=10, batch_size=16, grid_points=40, window=10, ensemble=1,
        model=ModelConfig(latent_dim=4, ode_dim=8, hidden=16, encoder_hidden=16),
    )
    fitted = fit_sweep(out.runs, fit_config, workers=1, progress=False)
    metrics = fitted.bundle.manifest.metrics
    assert (metrics.lr, metrics.train_loss, metrics.val_metric) == ("lr", "train/loss", "val/acc")
    assert metrics.direction == "max"
    assert fitted.report.runs_used == 8

    # The same through the command line: `tracker-sched fit --source wandb-offline`.
    from tracker_sched.bundle.folder import Bundle
    from tracker_sched.cli import main

    cfg = tmp_path_factory.mktemp("cfg") / "fit.json"
    cfg.write_text(fit_config.model_dump_json())
    out_dir = tmp_path_factory.mktemp("bundle") / "b"
    rc = main(["fit", "--source", "wandb-offline", "--path", str(root), "--out", str(out_dir),
               "--config", str(cfg), "--workers", "1", "--no-progress", "--no-plots"])
    assert rc == 0
    loaded = Bundle.load(out_dir)
    assert loaded.manifest.metrics.val_metric == "val/acc"
    assert loaded.manifest.report.runs_used == 8


def test_cli_wandb_offline_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tracker_sched.cli import main

    assert main(["fit", "--source", "wandb-offline", "--out", str(tmp_path / "b")]) == 1
    assert "--path" in capsys.readouterr().err
    rc = main(["fit", "--source", "wandb-offline", "--path", str(tmp_path / "nope"),
               "--out", str(tmp_path / "b")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tracker-sched: error:")


def test_file_with_no_intact_chunk_is_excluded_with_the_damage(
    logged: dict[str, Any], tmp_path: Path
) -> None:
    data = logged["logs"]["d-failed"].read_bytes()
    bad = tmp_path / "run-d-failed.wandb"
    bad.write_bytes(data[:7] + bytes(b ^ 0x5A for b in data[7:]))
    out = WandbOfflineSource(bad).read()
    assert out.runs == []
    (issue,) = out.issues
    assert issue.action == "excluded"
    assert issue.reason.startswith(f"run-d-failed.wandb: no readable records: bytes 7-{len(data)}")


def test_step_axis_declared_with_define_metric(tmp_path: Path) -> None:
    """HF Trainer and Lightning declare their optimizer step: ``_step`` counts log calls."""
    with pytest.MonkeyPatch.context() as mp:
        offline_env(mp, tmp_path)
        run = wandb.init(project="p", entity="team", id="declared", dir=str(tmp_path),
                         mode="offline", config={"total_steps": 40},
                         settings=wandb.Settings(silent=True, x_disable_stats=True,
                                                 console="off"))
        run.define_metric("optim_step")
        run.define_metric("*", step_metric="optim_step", step_sync=True)
        for step in range(4, 41, 4):  # a training row and an eval row per step: 2 log calls
            run.log({"train/loss": 1 / step, "train/learning_rate": 0.1, "optim_step": step})
            run.log({"eval/loss": 2 / step, "train/epoch": step / 20, "optim_step": step})
        run.finish()
        wandb.teardown()
    out = WandbOfflineSource(tmp_path).read()
    assert out.issues == []  # train/epoch at a step twice, with one value: no repair
    (rec,) = out.runs
    assert rec.metric_keys["step"] == "optim_step"
    assert rec.lr is not None and rec.lr.step == list(range(4, 41, 4))
    assert rec.val_metric is not None and rec.val_metric.step == list(range(4, 41, 4))
    by_calls = WandbOfflineSource(tmp_path, step_key="_step").read().runs[0]
    assert by_calls.lr is not None and by_calls.lr.step == list(range(0, 20, 2))


def test_framework_step_column_without_a_declaration(tmp_path: Path) -> None:
    """An undeclared ``trainer/global_step`` in most rows is the step (the API shows no
    declarations either)."""
    rows = [(i, {"trainer/global_step": 3 * i + 2, "train_loss": 1.0, "lr-AdamW": 0.01,
                 "val_loss": 0.5}) for i in range(12)]
    log_run(tmp_path, rows, run_id="pl", config={"max_steps": 36})
    (rec,) = WandbOfflineSource(tmp_path).read().runs
    assert rec.metric_keys["step"] == "trainer/global_step"
    assert rec.train_loss is not None and rec.train_loss.step[-1] == 35


def test_a_step_key_no_row_has_names_the_keys(logged: dict[str, Any]) -> None:
    out = WandbOfflineSource(logged["logs"]["a-base"], step_key="global_step").read()
    assert out.runs == []
    (issue,) = out.issues
    assert issue.action == "excluded"
    assert "no history row has a whole-number step under 'global_step'" in issue.reason
    assert "my/global_step" in issue.reason and "--step-key" in issue.reason
