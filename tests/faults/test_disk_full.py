"""Fault matrix: the disk fills up while a bundle is saved (simulated: the Nth write of the save
writes half its bytes, then fails with ENOSPC, as a full disk does).

What must survive every row: the bundle that was there before (it still loads, unchanged),
the user's own files in the folder, and the truth: no "bundle written", no staging debris,
one error line.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tiny import FIXTURE
from tracker_sched.bundle.folder import Bundle
from tracker_sched.cli import main
from tracker_sched.errors import BundleError
from tracker_sched.fit.generative import FitResult


@contextlib.contextmanager
def disk_full(monkeypatch: pytest.MonkeyPatch, nth: int) -> Iterator[list[int]]:
    """The ``nth`` file write (``Path.write_bytes``/``write_text``) runs out of space."""
    writes = [0]
    real_bytes, real_text = Path.write_bytes, Path.write_text

    def fill(path: Path, data: bytes) -> None:
        writes[0] += 1
        if writes[0] == nth:
            real_bytes(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_bytes(path, data)

    def write_bytes(self: Path, data: bytes) -> int:
        fill(self, bytes(data))
        return len(data)

    def write_text(self: Path, data: str, encoding: str | None = None,
                   errors: str | None = None, newline: str | None = None) -> int:
        fill(self, data.encode(encoding or "utf-8"))
        return len(data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(Path, "write_text", write_text)
    yield writes
    monkeypatch.setattr(Path, "write_bytes", real_bytes)
    monkeypatch.setattr(Path, "write_text", real_text)


@pytest.fixture
def older(tiny_fit: FitResult, tmp_path: Path) -> Path:
    manifest = tiny_fit.bundle.manifest.model_copy(update={"created_at": "2000-01-01T00:00:00"})
    dest = Bundle(manifest, tiny_fit.bundle.models).save(tmp_path / "bundle")
    (dest / "NOTES.md").write_text("mine")
    return dest


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("nth", [1, 2])  # the weights, then the manifest
def test_disk_full_saving_over_a_bundle(tiny_fit: FitResult, older: Path, nth: int,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Survives: the old bundle, the user's NOTES.md; nothing half-written is left."""
    before = {p.name: p.read_bytes() for p in older.iterdir()}
    with disk_full(monkeypatch, nth), pytest.raises(BundleError, match="No space left"):
        tiny_fit.bundle.save(older)
    assert {p.name: p.read_bytes() for p in older.iterdir()} == before
    assert Bundle.load(older).manifest.created_at == "2000-01-01T00:00:00"
    assert _entries(older.parent) == ["bundle"]


@pytest.mark.parametrize("nth", [1, 2])
def test_disk_full_saving_a_new_bundle(tiny_fit: FitResult, tmp_path: Path, nth: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Survives: the folder around it; no bundle folder appears that would not load."""
    with disk_full(monkeypatch, nth), pytest.raises(BundleError, match="No space left"):
        tiny_fit.bundle.save(tmp_path / "new")
    assert _entries(tmp_path) == []


def test_disk_full_in_the_cli_says_so_and_never_says_written(
    older: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Survives: the old bundle; the user sees one error line and exit status 1."""
    out, err = io.StringIO(), io.StringIO()
    import tracker_sched.bundle.folder as bundle_module

    real_save = bundle_module.Bundle.save

    def full_save(self: Bundle, path: object) -> Path:
        with disk_full(monkeypatch, 1):
            return real_save(self, path)  # type: ignore[arg-type]

    monkeypatch.setattr(bundle_module.Bundle, "save", full_save)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["fit", "--path", str(FIXTURE), "--out", str(older), "--iterations", "2",
                   "--ensemble", "1", "--grid-points", "40", "--window", "10", "--no-plots",
                   "--no-progress", "--workers", "1"])
    assert rc == 1 and "bundle written" not in out.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert lines[-1].startswith("tracker-sched: error:") and "No space left" in lines[-1]
    assert Bundle.load(older).manifest.created_at == "2000-01-01T00:00:00"
    assert (older / "NOTES.md").read_text() == "mine"


def test_disk_full_writing_the_deployments_registry(
    tiny_fit: FitResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Survives: the registry as it was (a reader never sees half a file), no temp file."""
    pytest.importorskip("mlflow")
    from tracker_sched.integrations.mlflow import deployment_registry, deployments

    monkeypatch.setenv(deployments.ENV_HOME, str(tmp_path / "home"))
    client = deployments.TrackerSchedDeploymentClient("tracker-sched")
    bundle = tiny_fit.bundle.save(tmp_path / "b")
    client.create_deployment("first", str(bundle))
    registry = tmp_path / "home" / deployments.REGISTRY_FILE
    before = registry.read_text()
    real_dump = json.dump

    def full_dump(obj: object, fp: object, **kw: object) -> None:
        real_dump({"half": "written"}, fp)  # type: ignore[arg-type]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(deployment_registry.json, "dump", full_dump)  # the registry's writer
    with pytest.raises(OSError, match="No space left"):
        client.create_deployment("second", str(bundle))
    assert registry.read_text() == before
    assert [p.name for p in registry.parent.iterdir() if p.name.startswith(".deploy")] == []
