"""Saving a bundle never loses data: the old bundle, the user's files, a fit (issue 15, items 1,
3 and 5).

Each test names the item of the bad-input probe it keeps fixed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.tiny import FIXTURE
from tracker_sched.bundle.folder import Bundle
from tracker_sched.cli import main
from tracker_sched.errors import BundleError
from tracker_sched.fit.generative import FitResult


@pytest.fixture
def older(tiny_fit: FitResult, tmp_path: Path) -> Path:
    """A saved bundle marked as the older one (its created_at), with a user's files in it."""
    manifest = tiny_fit.bundle.manifest.model_copy(update={"created_at": "2000-01-01T00:00:00"})
    dest = Bundle(manifest, tiny_fit.bundle.models).save(tmp_path / "bundle")
    (dest / "NOTES.md").write_text("my notes\n")
    (dest / "plots").mkdir()
    (dest / "plots" / "loss.png").write_bytes(b"png")
    return dest


@contextlib.contextmanager
def failing_swap(dest: Path, nth: int) -> Iterator[None]:
    """The ``nth`` move of the staged new bundle into ``dest`` fails, as a rename can (EBUSY,
    EXDEV, a full disk). The staging is whatever hidden entry the save makes beside ``dest``;
    moves of the old files (inside ``dest``) are left alone, so a rollback can work."""
    real_rename, real_replace = os.rename, os.replace
    moves = [0]

    def staged(src: object) -> bool:
        try:
            rel = Path(str(src)).relative_to(dest.parent)
        except ValueError:
            return False
        return rel.parts[0].startswith(".")

    def fail_nth(real):  # type: ignore[no-untyped-def]
        def wrapper(src, dst, *a, **k):  # type: ignore[no-untyped-def]
            into_dest = Path(str(dst)) == dest or Path(str(dst)).parent == dest
            if into_dest and staged(src):
                moves[0] += 1
                if moves[0] == nth:
                    raise OSError(16, "simulated: device or resource busy", str(dst))
            return real(src, dst, *a, **k)
        return wrapper

    os.rename, os.replace = fail_nth(real_rename), fail_nth(real_replace)
    try:
        yield
    finally:
        os.rename, os.replace = real_rename, real_replace


def _fit_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["fit", "--path", str(FIXTURE), "--iterations", "2", "--ensemble", "1",
                   "--grid-points", "40", "--window", "10", "--no-plots", "--no-progress",
                   "--workers", "1", *args])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """A target refused up front is refused before any training step."""
    import tracker_sched.fit.generative as fit

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("training started although --out was refused")

    monkeypatch.setattr(fit, "train_ensemble", refuse)


# --------------------------------------------------------------------------- item 1: data lost


@pytest.mark.parametrize("nth", [1, 2])
def test_item1_a_failed_swap_keeps_the_old_bundle(tiny_fit: FitResult, older: Path,
                                                  nth: int) -> None:
    with failing_swap(older, nth), pytest.raises(BundleError, match="busy"):
        tiny_fit.bundle.save(older)
    assert Bundle.load(older).manifest.created_at == "2000-01-01T00:00:00"
    assert (older / "NOTES.md").read_text() == "my notes\n"
    assert not [p for p in older.parent.iterdir() if p.name.startswith(".")]  # no debris


def test_item1_saving_over_a_bundle_keeps_the_users_files(tiny_fit: FitResult,
                                                          older: Path) -> None:
    tiny_fit.bundle.save(older)
    assert Bundle.load(older).manifest.created_at == tiny_fit.bundle.manifest.created_at
    assert (older / "NOTES.md").read_text() == "my notes\n"
    assert (older / "plots" / "loss.png").read_bytes() == b"png"
    assert not [p for p in older.parent.iterdir() if p.name.startswith(".")]


def test_item1_fit_out_dot_inside_a_bundle_is_refused_before_training(
    older: Path, monkeypatch: pytest.MonkeyPatch, no_training: None
) -> None:
    monkeypatch.chdir(older)
    rc, out, err = _fit_cli("--out", ".")
    assert rc == 1 and "bundle written" not in out
    assert err.strip().startswith("tracker-sched: error: --out") and "current folder" in err
    assert (older / "NOTES.md").read_text() == "my notes\n"
    assert Bundle.load(older).manifest.created_at == "2000-01-01T00:00:00"


def test_item1_fit_out_a_parent_of_the_current_folder_is_refused(
    older: Path, monkeypatch: pytest.MonkeyPatch, no_training: None
) -> None:
    monkeypatch.chdir(older / "plots")
    rc, _, err = _fit_cli("--out", "..")
    assert rc == 1 and "current folder" in err
    assert (older / "plots" / "loss.png").is_file()


def test_item1_a_symlinked_out_is_refused_before_training(
    older: Path, tmp_path: Path, no_training: None
) -> None:
    link = tmp_path / "link"
    link.symlink_to(older, target_is_directory=True)
    rc, out, err = _fit_cli("--out", str(link))
    assert rc == 1 and "bundle written" not in out
    assert len(err.strip().splitlines()) == 1 and "symbolic link" in err
    assert Bundle.load(older).manifest.created_at == "2000-01-01T00:00:00"


def test_item1_save_refuses_a_symlink(tiny_fit: FitResult, older: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(older, target_is_directory=True)
    with pytest.raises(BundleError, match="symbolic link"):
        tiny_fit.bundle.save(link)
    assert link.is_symlink() and Bundle.load(older).manifest.created_at.startswith("2000")


def test_item1_bundle_folders_follow_the_umask(tiny_fit: FitResult, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        dest = tiny_fit.bundle.save(tmp_path / "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in dest.iterdir()} == {0o644}


# --------------------------------------------------------------------------- item 5: --out checks


@pytest.mark.parametrize("kind", ["file", "not-a-bundle"])
def test_item5_out_targets_that_would_lose_data_are_refused_before_training(
    kind: str, tmp_path: Path, no_training: None
) -> None:
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("precious")
    else:
        target.mkdir()
        (target / "thesis.tex").write_text("precious")
    rc, _, err = _fit_cli("--out", str(target))
    assert rc == 1 and err.startswith("tracker-sched: error: --out")
    assert ("is a file" if kind == "file" else "not a bundle") in err
    kept = target if kind == "file" else target / "thesis.tex"
    assert kept.read_text() == "precious"


# ------------------------------------------------------- item 3: never report an unloadable bundle


def test_item3_an_overflowing_metric_never_yields_an_unloadable_bundle(tmp_path: Path) -> None:
    """One finite extreme value (1e308) used to overflow the normalisation to inf: saved as
    null, "bundle written", and every later load failed."""
    lines = FIXTURE.read_text().splitlines()
    first = json.loads(lines[0])
    vals = first["val_metric"]["value"]
    vals[len(vals) // 2] = 1e308
    lines[0] = json.dumps(first)
    sweep = tmp_path / "sweep.jsonl"
    sweep.write_text("\n".join(lines) + "\n")
    out = tmp_path / "bundle"
    rc, stdout, err = _fit_cli_path(sweep, out)
    assert rc == 0, err
    bundle = Bundle.load(out)  # "bundle written" means it loads
    assert all(np.isfinite(bundle.manifest.normalisation.std))
    assert first["run_id"] in stdout  # the run is listed as truncated, not silently used


def _fit_cli_path(sweep: Path, out: Path) -> tuple[int, str, str]:
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = main(["fit", "--path", str(sweep), "--iterations", "2", "--ensemble", "1",
                   "--grid-points", "40", "--window", "10", "--no-plots", "--no-progress",
                   "--workers", "1", "--out", str(out)])
    return rc, o.getvalue(), e.getvalue()


def test_item3_save_refuses_a_bundle_that_would_not_load(tiny_fit: FitResult,
                                                        tmp_path: Path) -> None:
    m = tiny_fit.bundle.manifest
    bad_norm = m.normalisation.model_copy(update={"std": (float("inf"), 1.0, 1.0)})
    bad = Bundle(m.model_copy(update={"normalisation": bad_norm}), tiny_fit.bundle.models)
    with pytest.raises(BundleError, match="std"):
        bad.save(tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert list(tmp_path.iterdir()) == []
