"""The W&B offline source: runs read straight from wandb's offline transaction logs.

``wandb`` in offline mode (``WANDB_MODE=offline``) writes each run to
``offline-run-<time>-<id>/run-<id>.wandb``; wandb ships no Python reader for
these files (``wandb sync`` is done by the Go ``wandb-core``), so this is ours.

The format, checked against files written by wandb 0.31:

* a 7-byte file header: ``b":W&B"``, the magic ``0xBEE1`` as little-endian
  ``uint16`` (bytes ``e1 be``) and a version byte ``0``;
* then the LevelDB log layout: the file is cut into 32 KiB blocks counted from
  byte 0 (so the header takes the first 7 bytes of block 0). A block holds
  chunks, each a 7-byte header (``crc32: uint32 LE``, ``length: uint16 LE``,
  ``type: uint8``) and ``length`` bytes of data. Chunks never cross a block; a
  block tail shorter than a chunk header is zero padding. Types: 1 full record,
  2 first, 3 middle, 4 last fragment of a record;
* the checksum is the plain (unmasked) IEEE CRC-32 of the type byte followed by
  the data: ``zlib.crc32(data, zlib.crc32(bytes([type])))``;
* each record is a serialized ``wandb.proto.wandb_internal_pb2.Record``.

Damage (a cut-off file, a chunk whose checksum fails) costs only the records
it touches: good records before and after it are kept, and the run gets a
``repaired`` :class:`~tracker_sched.schema.RunIssue` saying which bytes were
unreadable.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import ValidationError

from tracker_sched.errors import MissingDependencyError, SourceError
from tracker_sched.schema import MetricMap, RunIssue, RunRecord
from tracker_sched.sources.base import SourceResult
from tracker_sched.sources.files import record_from_raw
from tracker_sched.sources.wandb_history import (
    AUTO,
    as_series,
    choose_step_key,
    missing_step_key,
    repeat_note,
    rows_to_metrics,
)

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_LEN = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _record_class() -> Any:
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError as exc:
        raise MissingDependencyError("wandb", "wandb") from exc
    return wandb_internal_pb2.Record  # type: ignore[attr-defined]


def _crc(ctype: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(bytes([ctype])))


class _NotALog(Exception):
    """The file does not start with a W&B transaction-log header."""


class _NoStep(Exception):
    """No history row has the step key."""


@dataclass
class _Damage:
    start: int
    end: int
    why: str


@dataclass
class _Scan:
    """What one pass over a log found: damaged byte ranges and the record count."""

    damage: list[_Damage] = field(default_factory=list)
    records: int = 0

    def bad(self, start: int, end: int, why: str) -> None:
        if end <= start:
            return
        last = self.damage[-1] if self.damage else None
        if last is not None and start <= last.end:
            last.end = max(last.end, end)
            if why not in last.why:
                last.why += f", {why}"
        else:
            self.damage.append(_Damage(start, end, why))


def iter_log_records(fh: BinaryIO, scan: _Scan) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(start, end, payload)`` for every intact record of a log, in file order.

    Unreadable bytes are noted in ``scan`` and skipped: after a chunk whose
    checksum fails, reading resumes at the next chunk when the chunk's length is
    plausible, else at the next block.
    """
    header = fh.read(len(FILE_HEADER))
    if len(header) < len(FILE_HEADER):
        raise _NotALog(f"only {len(header)} bytes, shorter than the 7-byte W&B header")
    if header[:4] != FILE_HEADER[:4] or header[4:6] != FILE_HEADER[4:6]:
        raise _NotALog(f"header {header.hex()} is not ':W&B' + magic 0xBEE1")
    if header[6] != FILE_HEADER[6]:
        raise _NotALog(f"log format version {header[6]}; this reader knows version 0")

    block_start = 0
    block = header + fh.read(BLOCK_LEN - len(header))
    pos = len(header)
    pending: bytearray | None = None
    pending_start = 0

    def drop_pending(why: str, until: int) -> None:
        nonlocal pending
        if pending is not None:
            scan.bad(pending_start, until, why)
            pending = None

    while True:
        at = block_start + pos
        room = len(block) - pos
        last_block = len(block) < BLOCK_LEN
        if room < CHUNK_HEADER.size or _is_zero_fill(block, pos):
            if last_block:
                if any(block[pos:]):
                    scan.bad(at, block_start + len(block), "file cut off inside a chunk")
                break
            if any(block[pos:]):  # padding is zeros; anything else is damage
                scan.bad(at, block_start + len(block), "garbage in block padding")
            block_start += len(block)
            block = fh.read(BLOCK_LEN)
            pos = 0
            if not block:
                break
            continue
        crc, length, ctype = CHUNK_HEADER.unpack_from(block, pos)
        end = pos + CHUNK_HEADER.size + length
        if end > len(block):
            why = "file cut off inside a chunk" if last_block else "chunk length past block end"
            drop_pending(why, at)
            scan.bad(at, block_start + len(block), why)
            pos = len(block)
            continue
        data = bytes(block[pos + CHUNK_HEADER.size : end])
        if ctype not in (FULL, FIRST, MIDDLE, LAST) or crc != _crc(ctype, data):
            why = "bad checksum" if ctype in (FULL, FIRST, MIDDLE, LAST) else "unknown chunk type"
            drop_pending(why, at)
            scan.bad(at, block_start + end, why)
            pos = end
            continue
        if ctype == FULL:
            drop_pending("record missing its last fragment", at)
            scan.records += 1
            yield at, block_start + end, data
        elif ctype == FIRST:
            drop_pending("record missing its last fragment", at)
            pending, pending_start = bytearray(data), at
        elif pending is None:
            scan.bad(at, block_start + end, "fragment of a record whose start was lost")
        elif ctype == MIDDLE:
            pending += data
        else:
            scan.records += 1
            yield pending_start, block_start + end, bytes(pending + data)
            pending = None
        pos = end
    drop_pending("file cut off inside a record", block_start + len(block))


def _is_zero_fill(block: bytes, pos: int) -> bool:
    # A chunk header of all zeros marks preallocated, never-written space.
    return block[pos : pos + CHUNK_HEADER.size] == b"\0" * CHUNK_HEADER.size


@dataclass
class _RawRun:
    """Everything collected from one log before it becomes a RunRecord."""

    run_id: str
    entity: str = ""
    project: str = ""
    name: str | None = None
    sweep_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    declared_steps: list[str] = field(default_factory=list)  # define_metric step metrics


def _item_key(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _apply_updates(target: dict[str, Any], updates: Any, removes: Any = ()) -> None:
    for item in updates:
        path = _item_key(item)
        node = target
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = _loads(item.value_json)
    for item in removes:
        path = _item_key(item)
        node = target
        for part in path[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)


def _add_row(raw: _RawRun, history: Any) -> None:
    row: dict[str, Any] = {}
    for item in history.item:
        row[".".join(_item_key(item))] = _loads(item.value_json)
    if "_step" not in row and history.HasField("step"):
        row["_step"] = int(history.step.num)
    raw.rows.append(row)


def _declare(raw: _RawRun, metric: Any) -> None:
    """A ``define_metric`` record: remember its step metric (``"*"`` ones first)."""
    step = metric.step_metric
    if not step or step in raw.declared_steps:
        return
    if metric.glob_name == "*":
        raw.declared_steps.insert(0, step)
    else:
        raw.declared_steps.append(step)


def _read_run(path: Path) -> tuple[_RawRun | None, _Scan, str | None]:
    """Parse one ``.wandb`` file. Returns (run or None, scan, reason it was excluded)."""
    record_cls = _record_class()
    from google.protobuf.message import DecodeError

    file_id = path.stem[4:] if path.stem.startswith("run-") else path.stem
    raw = _RawRun(run_id=file_id)
    scan = _Scan()
    try:
        with path.open("rb") as fh:
            for start, end, payload in iter_log_records(fh, scan):
                rec = record_cls()
                try:
                    rec.ParseFromString(payload)
                except DecodeError:
                    scan.records -= 1
                    scan.bad(start, end, "record does not decode")
                    continue
                _apply_record(raw, rec)
    except _NotALog as exc:
        return None, scan, f"not a W&B transaction log: {exc}"
    except OSError as exc:
        return None, scan, f"cannot read {path}: {exc}"
    if scan.records == 0 and scan.damage:
        return None, scan, "no readable records: " + _damage_text(scan)
    if scan.records == 0:
        return None, scan, ("no records: the file holds only the W&B header (a run killed "
                            "before its first flush, which wandb does every 15 s, leaves this)")
    return raw, scan, None


def _apply_record(raw: _RawRun, rec: Any) -> None:
    kind = rec.WhichOneof("record_type")
    if kind == "history":
        _add_row(raw, rec.history)
    elif kind == "metric":
        _declare(raw, rec.metric)
    elif kind == "run":
        run = rec.run
        raw.run_id = run.run_id or raw.run_id
        raw.entity = run.entity or raw.entity
        raw.project = run.project or raw.project
        raw.name = run.display_name or raw.name
        raw.sweep_id = run.sweep_id or raw.sweep_id
        _apply_updates(raw.config, run.config.update, run.config.remove)
        _apply_updates(raw.summary, run.summary.update, run.summary.remove)
    elif kind == "config":
        _apply_updates(raw.config, rec.config.update, rec.config.remove)
    elif kind == "summary":
        _apply_updates(raw.summary, rec.summary.update, rec.summary.remove)
    elif kind == "exit":
        raw.exit_code = int(rec.exit.exit_code)


def _to_record(raw: _RawRun, metric_map: MetricMap, step_key: str) -> tuple[RunRecord, str]:
    """The run as a RunRecord, and a repair note for steps logged twice ("" if none)."""
    config = {k: v for k, v in raw.config.items() if k != "_wandb"}
    summary = {k: v for k, v in raw.summary.items() if not k.startswith("_")}
    config["_wandb"] = {"entity": raw.entity, "project": raw.project,
                        "exit_code": raw.exit_code, "summary": summary}
    # No exit record: the run was killed, or is still running.
    state = ("crashed" if raw.exit_code is None
             else "finished" if raw.exit_code == 0 else "failed")
    key = choose_step_key(raw.rows, step_key, raw.declared_steps)
    missing = missing_step_key(raw.rows, key)
    if missing:
        raise _NoStep(missing)
    metrics, conflicts = rows_to_metrics(raw.rows, key)
    obj = {
        "run_id": raw.run_id,
        "source": "wandb",
        "sweep_id": raw.sweep_id,
        "name": raw.name,
        "config": config,
        "state": state,
        "metrics": as_series(metrics),
    }
    rec = record_from_raw(obj, metric_map)
    if key != "_step":
        rec = rec.model_copy(update={"metric_keys": {**rec.metric_keys, "step": key}})
    return rec, repeat_note(conflicts, rec.metric_keys.values(), key)


def _damage_text(scan: _Scan) -> str:
    return "; ".join(f"bytes {d.start}-{d.end} unreadable ({d.why})" for d in scan.damage)


def find_logs(path: str | os.PathLike[str]) -> list[Path]:
    """The ``run-*.wandb`` logs under ``path``: a wandb dir, an ``offline-run-*`` dir or a file."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise SourceError(f"W&B offline path {root} does not exist")
    found = sorted(root.glob("run-*.wandb"))
    for base in (root, root / "wandb"):
        found += sorted(base.glob("offline-run-*/run-*.wandb"))
    if not found:
        raise SourceError(
            f"no offline-run-*/run-*.wandb files in {root} or {root / 'wandb'}; point --path "
            "at the folder wandb wrote (WANDB_DIR, or its wandb/ subfolder)"
        )
    return found


def read_offline(
    path: str | os.PathLike[str],
    metric_map: MetricMap | None = None,
    *,
    step_key: str = AUTO,
) -> SourceResult:
    """Read every offline W&B run under ``path`` into RunRecords, sorted by run id.

    ``step_key``: the history key used as the step; ``"auto"`` follows
    :mod:`tracker_sched.sources.wandb_history` (the declared step metric, else
    ``train/global_step``/``trainer/global_step``, else ``_step``).

    A run whose file is damaged keeps its intact records and gets a ``repaired``
    issue; a file with no records, or that is no transaction log, is excluded.
    """
    _record_class()  # fail early, with the extra to install, if wandb is missing
    metric_map = metric_map or MetricMap()
    runs: list[RunRecord] = []
    issues: list[RunIssue] = []
    for log in find_logs(path):
        raw, scan, excluded = _read_run(log)
        file_id = log.stem[4:] if log.stem.startswith("run-") else log.stem
        if raw is None:
            issues.append(RunIssue(run_id=file_id, action="excluded",
                                   reason=f"{log.name}: {excluded}"))
            continue
        if scan.damage:
            issues.append(RunIssue(run_id=raw.run_id, action="repaired",
                                   reason=f"{log.name}: {_damage_text(scan)}; kept the "
                                          f"{scan.records} intact records around the damage"))
        try:
            rec, repeats = _to_record(raw, metric_map, step_key)
        except _NoStep as exc:
            issues.append(RunIssue(run_id=raw.run_id, action="excluded",
                                   reason=f"{log.name}: {exc}"))
            continue
        except (ValidationError, ValueError, TypeError) as exc:
            msg = str(exc).replace("\n", " ")
            issues.append(RunIssue(run_id=raw.run_id, action="excluded",
                                   reason=f"{log.name}: does not match the run schema: {msg}"))
            continue
        runs.append(rec)
        if repeats:
            issues.append(RunIssue(run_id=rec.run_id, action="repaired",
                                   reason=f"{log.name}: {repeats}"))
    runs.sort(key=lambda r: r.run_id)
    return SourceResult(runs=runs, issues=issues)


class WandbOfflineSource:
    """``--source wandb-offline --path DIR``: runs logged by wandb in offline mode.

    ``path`` is a folder holding ``offline-run-*`` folders (or its ``wandb/``
    subfolder does), one ``offline-run-*`` folder, or one ``.wandb`` file.
    ``step_key`` names the history key used as the step (``"auto"`` by default:
    the run's ``define_metric`` step metric, else ``train/global_step`` or
    ``trainer/global_step``, else wandb's ``_step``). Rows without it are skipped.

    >>> source = WandbOfflineSource("wandb/")  # doctest: +SKIP
    >>> result = source.read()  # doctest: +SKIP
    >>> [r.run_id for r in result.runs], result.issues  # doctest: +SKIP
    """

    name = "wandb-offline"

    def __init__(
        self,
        path: str | os.PathLike[str],
        metric_map: MetricMap | None = None,
        step_key: str = AUTO,
    ) -> None:
        self.path = Path(path)
        self.metric_map = metric_map
        self.step_key = step_key

    def read(self) -> SourceResult:
        return read_offline(self.path, self.metric_map, step_key=self.step_key)
