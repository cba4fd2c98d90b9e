"""Bundles: a save/load round trip, and every way a load can fail (each a BundleError)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.tiny import FIXTURE, tiny_config
from tracker_sched.bundle.folder import MANIFEST, WEIGHTS, Bundle
from tracker_sched.bundle.manifest import SCHEMA_VERSION
from tracker_sched.errors import BundleError
from tracker_sched.fit.generative import FitResult, fit_sweep, report_windows
from tracker_sched.sources.files import read_sweep


@pytest.fixture(scope="module")
def fitted() -> FitResult:
    return fit_sweep(read_sweep(FIXTURE).runs, tiny_config(), workers=1, progress=False)


@pytest.fixture(scope="module")
def saved(fitted: FitResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted.bundle.save(tmp_path_factory.mktemp("bundles") / "b")


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(saved, dest)
    return dest


def _edit_manifest(path: Path, edit: Callable[[dict[str, object]], None]) -> None:
    raw = json.loads((path / MANIFEST).read_text())
    edit(raw)
    (path / MANIFEST).write_text(json.dumps(raw))


def _load_error(path: Path) -> str:
    with pytest.raises(BundleError) as info:
        Bundle.load(path)
    return str(info.value)


# --------------------------------------------------------------------------- round trip


def test_save_writes_the_documented_files(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [MANIFEST, WEIGHTS]
    raw = json.loads((saved / MANIFEST).read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["kind"] == "latent_ode"
    state = torch.load(saved / WEIGHTS, map_location="cpu", weights_only=True)
    assert sorted(state) == ["member_0"]
    assert all(isinstance(v, torch.Tensor) for v in state["member_0"].values())
    # no temp folders left next to the bundle
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_load_gives_identical_forecasts_and_manifest(fitted: FitResult, saved: Path) -> None:
    loaded = Bundle.load(saved)
    assert loaded.manifest == fitted.bundle.manifest
    assert len(loaded.models) == 1
    prep = fitted.prepared
    data = prep.tensors(prep.holdout_idx)
    run_idx, end_idx, length = report_windows(data, tiny_config())
    expected = fitted.bundle.forecaster.forecast(data, run_idx, end_idx, length)
    got = loaded.forecaster.forecast(data, run_idx, end_idx, length)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    for a, b in zip(fitted.bundle.models[0].state_dict().items(),
                    loaded.models[0].state_dict().items(), strict=True):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert not loaded.models[0].training


def test_save_replaces_an_existing_bundle(fitted: FitResult, copy: Path) -> None:
    (copy / "report.json").write_text("{}")  # stale output of an earlier fit
    changed = Bundle(fitted.bundle.manifest.model_copy(update={"created_at": "replaced"}),
                     fitted.bundle.models)
    changed.save(copy)
    assert Bundle.load(copy).manifest.created_at == "replaced"
    assert not (copy / "report.json").exists()
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy"]


def test_save_into_an_empty_folder(fitted: FitResult, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    fitted.bundle.save(tmp_path / "empty")
    assert Bundle.load(tmp_path / "empty").manifest == fitted.bundle.manifest


def test_save_refuses_a_folder_that_is_not_a_bundle(fitted: FitResult, tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="is not a bundle"):
        fitted.bundle.save(dest)
    assert (dest / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # temp folder cleaned up


def test_save_refuses_a_file(fitted: FitResult, tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    dest.write_text("a file")
    with pytest.raises(BundleError):
        fitted.bundle.save(dest)
    assert dest.read_text() == "a file"


def test_bundle_checks_its_member_count(fitted: FitResult) -> None:
    with pytest.raises(BundleError, match="manifest says 1 members, got 2"):
        Bundle(fitted.bundle.manifest, fitted.bundle.models * 2)


# --------------------------------------------------------------------------- load failures


def test_load_missing_folder(tmp_path: Path) -> None:
    msg = _load_error(tmp_path / "nope")
    assert "no bundle at" in msg and "nope" in msg


def test_load_a_file_instead_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert "not a folder" in _load_error(tmp_path / "f")


def test_load_without_manifest(copy: Path) -> None:
    (copy / MANIFEST).unlink()
    msg = _load_error(copy)
    assert "incomplete" in msg and "bundle.json is missing" in msg


def test_load_without_weights(copy: Path) -> None:
    (copy / WEIGHTS).unlink()
    msg = _load_error(copy)
    assert "incomplete" in msg and "weights.pt is missing" in msg


def test_load_manifest_not_json(copy: Path) -> None:
    (copy / MANIFEST).write_text('{"schema_version": 1, ')
    msg = _load_error(copy)
    assert "not valid JSON" in msg and "corrupt" in msg


def test_load_manifest_not_an_object(copy: Path) -> None:
    (copy / MANIFEST).write_text("[1, 2, 3]")
    assert "schema_version" in _load_error(copy)


def test_load_newer_schema_version(copy: Path) -> None:
    _edit_manifest(copy, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    msg = _load_error(copy)
    assert f"schema version {SCHEMA_VERSION + 1}" in msg
    assert "upgrade tracker-sched" in msg


def test_load_without_schema_version(copy: Path) -> None:
    _edit_manifest(copy, lambda m: m.pop("schema_version"))
    msg = _load_error(copy)
    assert "no integer schema_version" in msg


def test_load_manifest_missing_a_field(copy: Path) -> None:
    _edit_manifest(copy, lambda m: m.pop("sweep"))
    msg = _load_error(copy)
    assert "does not match the bundle schema" in msg and "sweep" in msg


def test_load_garbage_weights(copy: Path) -> None:
    (copy / WEIGHTS).write_bytes(b"\x00\x01 definitely not a torch file \xff" * 10)
    msg = _load_error(copy)
    assert "cannot be read as weights" in msg and "corrupt" in msg


def test_load_weights_that_are_not_a_dict(copy: Path) -> None:
    torch.save([torch.zeros(2)], copy / WEIGHTS)
    assert "does not hold a state dict" in _load_error(copy)


def test_load_weights_with_a_member_missing(copy: Path) -> None:
    state = torch.load(copy / WEIGHTS, weights_only=True)
    torch.save({"member_1": state["member_0"]}, copy / WEIGHTS)
    assert "no weights for member 0" in _load_error(copy)


def test_load_manifest_with_more_members_than_weights(copy: Path) -> None:
    _edit_manifest(copy, lambda m: m.update(members=2))
    assert "no weights for member 1" in _load_error(copy)


def test_load_weights_that_do_not_fit_the_config(copy: Path) -> None:
    def wider(m: dict[str, object]) -> None:
        model = m["model"]
        assert isinstance(model, dict)
        model["ode_dim"] = 9

    _edit_manifest(copy, wider)
    msg = _load_error(copy)
    assert "weights of member 0 do not fit the model config" in msg


def test_load_weights_with_a_missing_tensor(copy: Path) -> None:
    state = torch.load(copy / WEIGHTS, weights_only=True)
    state["member_0"].pop("decoder.bias")
    torch.save(state, copy / WEIGHTS)
    msg = _load_error(copy)
    assert "do not fit the model config" in msg and "decoder.bias" in msg
