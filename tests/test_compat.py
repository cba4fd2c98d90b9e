"""What 0.1 wrote still works: its bundles load, its registered MLflow model loads, both give
0.1's answers; the flat module paths of 0.1 import the moved modules (``tracker_sched._compat``).

The artifacts in ``tests/fixtures/v0_1/`` were written by the 0.1 code (``make.py`` there).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tracker_sched import _compat
from tracker_sched.advising.serving import answer, parse_request, recommendation_to_row
from tracker_sched.bundle.folder import Bundle

V0_1 = Path(__file__).parent / "fixtures" / "v0_1"
ANSWERS = json.loads((V0_1 / "answers.json").read_text())


def same_answer(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["status"] == want["status"] == "planned"
    assert got["reason"] == want["reason"]
    assert got["step"] == want["step"]
    assert got["lr_now"] == pytest.approx(want["lr_now"], rel=1e-6)
    g, w = json.loads(got["schedule"]), json.loads(want["schedule"])
    assert g["step"] == w["step"]
    assert g["lr"] == pytest.approx(w["lr"], rel=1e-6)


@pytest.mark.parametrize("kind", ["generative", "control"])
def test_a_0_1_bundle_loads_and_answers_as_0_1_did(kind: str) -> None:
    bundle = Bundle.load(V0_1 / f"bundle_{kind}")
    assert bundle.manifest.kind == ("latent_ode" if kind == "generative" else "control_ode")
    got = recommendation_to_row(answer(bundle, parse_request(ANSWERS["request"])))
    same_answer(got, ANSWERS[f"bundle_{kind}"])


def test_a_model_registered_by_0_1_loads_and_answers_as_0_1_did() -> None:
    mlflow = pytest.importorskip("mlflow")
    pd = pytest.importorskip("pandas")
    # python_model.pkl names its class by module path: tracker_sched.stores.mlflow_pyfunc
    assert b"tracker_sched.stores.mlflow_pyfunc" in (V0_1 / "mlflow_model" /
                                                     "python_model.pkl").read_bytes()
    model = mlflow.pyfunc.load_model(str(V0_1 / "mlflow_model"))
    request = ANSWERS["request"]
    out = model.predict(pd.DataFrame(request["observations"]),
                        params={"total_steps": request["total_steps"]})
    got = {k: (v.item() if hasattr(v, "item") else v) for k, v in out.iloc[0].to_dict().items()}
    same_answer(got, ANSWERS["mlflow_model"])
    assert got["ready_step"] == ANSWERS["mlflow_model"]["ready_step"]


@pytest.mark.parametrize("old", sorted(_compat.MOVED))
def test_a_0_1_module_path_is_the_moved_module(old: str) -> None:
    module = importlib.import_module(old)
    assert module is importlib.import_module(_compat.MOVED[old])
    assert sys.modules[old] is module


@pytest.mark.parametrize(("package", "name"), [
    ("tracker_sched.fit", "fit_sweep"), ("tracker_sched.fit", "prepare"),
    ("tracker_sched.model", "LatentODE"), ("tracker_sched.bundle", "Bundle"),
    ("tracker_sched.bundle", "SweepSummary"), ("tracker_sched.demo", "run_demo"),
])
def test_a_0_1_module_that_is_now_a_package_still_has_its_names(package: str, name: str) -> None:
    assert getattr(importlib.import_module(package), name) is not None
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = importlib.import_module(package).not_a_name
