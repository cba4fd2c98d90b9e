"""Secrets in run configs and URLs never reach what is stored or logged (issue 15, item 7).

The probe found an ``hf_token`` from a run's config in ``bundle.json`` and in the registered
MLflow artifact, and a ``RemoteAdvisor`` URL's ``user:token@`` in the log, the plan's reason
and the ``tracker_sched.reason`` tag. The stores' own checks (MLflow, W&B) are in
``tests/mlflow/test_redact_stores.py`` and ``tests/wandb/test_wandb_store.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tracker_sched.advising.remote import RemoteAdvisor
from tracker_sched.bundle.folder import MANIFEST, Bundle
from tracker_sched.fit.generative import FitResult

SECRETS = ("hf_SECRETTOKEN1", "SECRETKEY2", "SECRETPASS3", "SECRETURL4", "SECRETAUTH5")
CONFIG: dict[str, Any] = {
    "peak_lr": 0.1, "schedule": "cosine", "max_tokens": 512, "tokenizer": "gpt2",
    "hf_token": SECRETS[0], "WANDB_API_KEY": SECRETS[1], "db": {"password": SECRETS[2]},
    "data_url": f"https://alice:{SECRETS[3]}@data.example.com/x", "authHeader": SECRETS[4],
}


@pytest.mark.parametrize(("key", "secret"), [
    ("hf_token", True), ("access_token", True), ("apiKey", True), ("WANDB_API_KEY", True),
    ("aws_secret_access_key", True), ("db_password", True), ("passwd", True),
    ("auth", True), ("Authorization", True), ("credentials", True), ("private_key", True),
    ("peak_lr", False), ("max_tokens", False), ("tokenizer", False), ("num_tokens", False),
    ("keys_seen", False), ("schedule", False), ("seed", False),
])
def test_the_key_rule(key: str, secret: bool) -> None:
    from tracker_sched.util.redact import is_secret_key

    assert is_secret_key(key) is secret


def test_configs_are_redacted_recursively_and_the_names_listed() -> None:
    from tracker_sched.util.redact import REDACTED, redact_config

    clean, names = redact_config(CONFIG)
    text = json.dumps(clean)
    assert not any(s in text for s in SECRETS)
    assert clean["peak_lr"] == 0.1 and clean["max_tokens"] == 512 and clean["tokenizer"] == "gpt2"
    assert clean["hf_token"] == REDACTED and clean["db"]["password"] == REDACTED
    assert clean["data_url"] == "https://***@data.example.com/x"
    assert names == ["WANDB_API_KEY", "authHeader", "data_url", "db.password", "hf_token"]
    assert CONFIG["hf_token"] == SECRETS[0]  # the caller's dict is not changed


@pytest.mark.parametrize(("text", "want"), [
    ("cannot reach http://bob:tok3n@127.0.0.1:5000/invocations (ConnectionError)",
     "cannot reach http://***@127.0.0.1:5000/invocations (ConnectionError)"),
    ("see https://h.example/x?token=abc&page=2", "see https://h.example/x?token=***&page=2"),
    ("no url here", "no url here"),
])
def test_text_redaction(text: str, want: str) -> None:
    from tracker_sched.util.redact import redact_text

    assert redact_text(text) == want


def test_item7_bundle_json_never_holds_a_config_secret(tiny_fit: FitResult,
                                                       tmp_path: Path) -> None:
    m = tiny_fit.bundle.manifest
    top = [t.model_copy(update={"config": dict(CONFIG)}) for t in m.sweep.top_runs]
    sweep = m.sweep.model_copy(update={"best_config": dict(CONFIG), "top_runs": top,
                                       "best_hyperparameters": dict(CONFIG)})
    bundle = Bundle(m.model_copy(update={"sweep": sweep}), tiny_fit.bundle.models)
    dest = bundle.save(tmp_path / "b")
    raw = (dest / MANIFEST).read_text()
    assert not any(s in raw for s in SECRETS)
    loaded = Bundle.load(dest).manifest
    assert loaded.redacted == ["WANDB_API_KEY", "authHeader", "data_url", "db.password",
                               "hf_token"]
    assert loaded.sweep.best_config["peak_lr"] == 0.1
    assert bundle.manifest.sweep.best_config["hf_token"] == SECRETS[0]  # in memory: the run's


def test_item7_remote_advisor_never_shows_url_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tracker_sched.remote")
    url = "http://alice:S3CRETTOKEN@127.0.0.1:9"  # nothing listens on port 9
    remote = RemoteAdvisor(url, 100, initial_lr=0.05, timeout=0.5, retries=0, replan_every=1)
    remote.observe(1, train_loss=1.0, lr=0.05)
    remote.wait(5)
    remote.close()
    assert "S3CRETTOKEN" not in remote.plan.reason and "***@127.0.0.1" in remote.plan.reason
    assert not any("S3CRETTOKEN" in r.getMessage() for r in caplog.records)
    assert "S3CRETTOKEN" not in repr(remote.url_shown)


def test_item7_the_reason_tag_is_redacted() -> None:
    pytest.importorskip("mlflow")
    from tracker_sched.integrations.mlflow.callback import TAG_REASON, recommendation_tags
    from tracker_sched.schema import Recommendation, Schedule

    rec = Recommendation(status="fallback", step=3, lr_now=0.1, schedule=Schedule(step=[],
                         lr=[]), reason="server: cannot reach http://u:T0KEN@h:1/invocations")
    assert "T0KEN" not in recommendation_tags(rec)[TAG_REASON]
