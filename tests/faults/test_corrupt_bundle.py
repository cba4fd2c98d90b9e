"""Fault matrix: a bundle corrupted in each field of ``bundle.json`` and in its weights.

What must survive every row: the caller. Loading either raises a
:class:`~tracker_sched.errors.BundleError` (never another exception, never an allocation
sized by the corrupt file), or the bundle loads and is usable: the advisor, the served
answer and ``tracker-sched inspect`` never raise and never give a non-finite or
non-positive lr. Issue 15, item 6: ``hidden=1e6`` used to allocate 4 TB; ``std`` 0, NaN
weights, a negative warm-up lr and ``grid_points`` 1 used to load, then crash in
``recommend``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny import FIXTURE, logged_rows
from tracker_sched.advising.advisor import Advisor
from tracker_sched.advising.serving import answer, observations_from_records, parse_request
from tracker_sched.bundle.folder import MANIFEST, WEIGHTS, Bundle
from tracker_sched.cli import main
from tracker_sched.errors import BundleError, InputError
from tracker_sched.fit.generative import FitResult
from tracker_sched.sources.files import read_sweep

NAN = float("nan")


@pytest.fixture(scope="module")
def clean(tiny_fit: FitResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_fit.bundle.save(tmp_path_factory.mktemp("clean") / "bundle")


@pytest.fixture(scope="module")
def live_rows() -> list[dict[str, Any]]:
    return [{"step": s, **row} for s, row in logged_rows(read_sweep(FIXTURE).runs[2])]


def _paths(raw: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    """Every field worth corrupting: each key down to the leaves, the first item of lists."""
    def walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        if path and path[0] == "report" and len(path) > 2:  # the fit report: two levels
            return
        if isinstance(node, dict):
            for k, v in node.items():
                yield (*path, k)
                yield from walk(v, (*path, k))
        elif isinstance(node, list) and node:
            yield (*path, "0")
            if path[-1] in ("warmup_lr", "warmup_tau", "mean", "std", "top_runs"):
                yield (*path, "-1")
            yield from walk(node[0], (*path, "0"))
    yield from walk(raw, ())


def _set(raw: Any, path: tuple[str, ...], value: Any) -> None:
    *head, last = path
    for key in head:
        raw = raw[int(key)] if isinstance(raw, list) else raw[key]
    if isinstance(raw, list):
        if value is _DELETE:
            del raw[int(last)]
        else:
            raw[int(last)] = value
    elif value is _DELETE:
        del raw[last]
    else:
        raw[last] = value


_DELETE = object()
VALUES: tuple[Any, ...] = (_DELETE, None, "x", -1, NAN, 1e-320, 10**6)


def _corruptions(clean: Path) -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
    raw = json.loads((clean / MANIFEST).read_text())
    out = []
    for path in _paths(raw):
        for value in VALUES:
            def edit(r: dict[str, Any], path: tuple[str, ...] = path, value: Any = value) -> None:
                _set(r, path, value if value is _DELETE else copy.deepcopy(value))
            label = "_" if value is _DELETE else repr(value)
            out.append((f"{'.'.join(path)}={label}", edit))
    return out


def _usable_or_refused(folder: Path, rows: list[dict[str, Any]]) -> str:
    try:
        bundle = Bundle.load(folder)
    except BundleError:
        return "refused"
    total = 840
    adv = Advisor(bundle, total)
    for row in rows:
        rec = adv.observe(row["step"], **{k: v for k, v in row.items() if k != "step"})
        assert math.isfinite(rec.lr_now) and rec.lr_now > 0
        assert math.isfinite(adv.lr(row["step"])) and adv.lr(row["step"]) > 0
    for n in (1, len(rows) // 2, len(rows)):
        try:
            rec = answer(bundle, parse_request({
                "observations": observations_from_records(rows[:n]), "total_steps": total}))
        except InputError:
            continue
        assert math.isfinite(rec.lr_now) and rec.lr_now > 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["inspect", str(folder)]) in (0, 1)
    return "usable"


def test_every_field_corrupted_is_refused_or_harmless(
    clean: Path, live_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    """One row per (field, bad value): several hundred loads, each a few milliseconds."""
    outcomes: dict[str, str] = {}
    folder = tmp_path / "b"
    shutil.copytree(clean, folder)
    original = (clean / MANIFEST).read_text()
    for label, edit in _corruptions(clean):
        raw = json.loads(original)
        try:
            edit(raw)
        except (KeyError, IndexError, TypeError):
            continue
        (folder / MANIFEST).write_text(json.dumps(raw))
        try:
            outcomes[label] = _usable_or_refused(folder, live_rows[:40])
        except Exception as exc:  # the invariant broke: say which corruption did it
            raise AssertionError(f"{label}: {type(exc).__name__}: {exc}") from exc
    assert len(outcomes) > 500
    refused = sum(v == "refused" for v in outcomes.values())
    assert refused > len(outcomes) // 2  # most corruptions are caught at load


@pytest.mark.parametrize(("label", "edit"), [
    ("hidden=1e6", lambda r: r["model"].update(hidden=10**6)),
    ("latent_dim=1e9", lambda r: r["model"].update(latent_dim=10**9)),
    ("members=1e6", lambda r: r.update(members=10**6)),
    ("grid_points=1e9", lambda r: r.update(grid_points=10**9)),
    ("std 0", lambda r: r["normalisation"].update(std=[0.0, 1.0, 1.0])),
    ("std NaN", lambda r: r["normalisation"].update(std=[NAN, 1.0, 1.0])),
    ("mean inf", lambda r: r["normalisation"].update(mean=[1.0, float("inf"), 1.0])),
    ("negative warm-up lr", lambda r: r["sweep"]["warmup_lr"].__setitem__(3, -0.01)),
    ("zero warm-up lr", lambda r: r["sweep"]["warmup_lr"].__setitem__(0, 0.0)),
    ("grid_points 1", lambda r: r.update(grid_points=1)),
    ("window past the grid", lambda r: r.update(window=r["grid_points"] + 1)),
    ("warm-up plan off the grid", lambda r: r["sweep"]["warmup_lr"].pop()),
    ("best peak lr NaN", lambda r: r["sweep"].update(best_peak_lr=NAN)),
])
def test_item6_a_hostile_manifest_is_refused_at_load(
    clean: Path, tmp_path: Path, label: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    folder = tmp_path / "b"
    shutil.copytree(clean, folder)
    raw = json.loads((folder / MANIFEST).read_text())
    edit(raw)
    (folder / MANIFEST).write_text(json.dumps(raw))
    t0 = time.perf_counter()
    with pytest.raises(BundleError):
        Bundle.load(folder)
    assert time.perf_counter() - t0 < 2.0, label  # refused before anything is allocated


@pytest.mark.parametrize("kind", ["nan", "inf", "truncated", "garbage", "other save"])
def test_item6_corrupt_weights_are_refused(
    clean: Path, tmp_path: Path, tiny_fit: FitResult, kind: str
) -> None:
    folder = tmp_path / "b"
    shutil.copytree(clean, folder)
    wpath = folder / WEIGHTS
    if kind in ("nan", "inf"):
        state = torch.load(wpath, weights_only=True)
        tensor = state["member_0"]["decoder.weight"]
        tensor[0, 0] = float(kind)
        torch.save(state, wpath)
    elif kind == "truncated":
        wpath.write_bytes(wpath.read_bytes()[:1000])
    elif kind == "garbage":
        wpath.write_bytes(b"\x00" * 4096)
    else:  # weights of another fit with the same sizes: they load, but are not this bundle's
        state = torch.load(wpath, weights_only=True)
        for t in state["member_0"].values():
            t.mul_(1.01)
        torch.save(state, wpath)
    with pytest.raises(BundleError):
        Bundle.load(folder)
