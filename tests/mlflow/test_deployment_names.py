"""The deployments target keeps its state under its home (issue 15, item 2).

``mlflow deployments create -t tracker-sched --name ./../../victim`` used to replace a folder
outside the home with a bundle, and ``delete`` then removed it; a name with a ``/`` gave a
``FileNotFoundError`` traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")

from tracker_sched.errors import InputError
from tracker_sched.fit.generative import FitResult
from tracker_sched.integrations.mlflow import deployments


@pytest.fixture
def setup(tiny_fit: FitResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    home = tmp_path / "a" / "b" / "home"
    monkeypatch.setenv(deployments.ENV_HOME, str(home))
    victim = tmp_path / "a" / "b" / "victim"  # home/deployments/./../../victim lands here
    victim.mkdir(parents=True)
    (victim / "thesis.tex").write_text("precious")
    bundle = tiny_fit.bundle.save(tmp_path / "bundle")
    client = deployments.TrackerSchedDeploymentClient("tracker-sched")
    return {"home": home, "victim": victim, "bundle": bundle, "client": client}


@pytest.mark.parametrize("name", ["./../../victim", "../victim", "a/b", "/abs", "..", ".",
                                  "x\\y", "", "-rf", "a\x00b", "n" * 200])
def test_item2_unsafe_names_are_refused(setup: dict[str, Any], name: str) -> None:
    with pytest.raises(InputError, match="deployment name"):
        setup["client"].create_deployment(name, str(setup["bundle"]))
    assert (setup["victim"] / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in setup["victim"].iterdir()) == ["thesis.tex"]


def test_item2_delete_never_leaves_the_home(setup: dict[str, Any]) -> None:
    """A registry entry edited to point outside the home is not followed by delete."""
    client, home, victim = setup["client"], setup["home"], setup["victim"]
    client.create_deployment("cnn", str(setup["bundle"]))
    registry = json.loads((home / "deployments.json").read_text())
    registry["cnn"]["bundle_path"] = str(victim)
    (home / "deployments.json").write_text(json.dumps(registry))
    with pytest.raises(InputError, match="outside"):
        client.delete_deployment("cnn")
    assert (victim / "thesis.tex").read_text() == "precious"


def test_item2_predict_never_reads_outside_the_home(setup: dict[str, Any]) -> None:
    client, home = setup["client"], setup["home"]
    client.create_deployment("cnn", str(setup["bundle"]))
    registry = json.loads((home / "deployments.json").read_text())
    registry["cnn"]["bundle_path"] = str(setup["bundle"])  # a real bundle, but not ours
    (home / "deployments.json").write_text(json.dumps(registry))
    with pytest.raises(InputError, match="outside"):
        client.predict("cnn", [{"step": 0, "lr": 0.01, "total_steps": 840}])


def test_item2_a_safe_name_round_trips(setup: dict[str, Any]) -> None:
    client, home = setup["client"], setup["home"]
    record = client.create_deployment("cnn-v1.2_b", str(setup["bundle"]))
    assert Path(record["bundle_path"]).resolve().parent == (home / "deployments").resolve()
    client.delete_deployment("cnn-v1.2_b")
    assert not Path(record["bundle_path"]).exists()
    assert client.list_deployments() == []
