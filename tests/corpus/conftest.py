"""The corpus of logging styles, made once per test session by the real libraries.

Generating a style trains its sweep and logs it to the session's MLflow server
and to W&B offline files; reading it back is cached per (style, source), so the
tests below pay for each only once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.corpus.styles import STYLES, Corpus
from tracker_sched.sources.base import SourceResult

SOURCES = ("mlflow-server", "mlflow-sqlite", "wandb-offline")


class Corpora:
    """Each style generated on first use; each (style, source) read on first use."""

    def __init__(self, root: Path, server: str, sqlite: str) -> None:
        self.root, self.server, self.sqlite = root, server, sqlite
        self._made: dict[str, Corpus] = {}
        self._read: dict[tuple[str, str], SourceResult] = {}
        self.seconds: dict[str, float] = {}

    def get(self, style: str) -> Corpus:
        if style not in self._made:
            t0 = time.perf_counter()
            self._made[style] = STYLES[style](self.root / style, self.server)
            self.seconds[style] = time.perf_counter() - t0
        return self._made[style]

    def tracking_uri(self, source: str) -> str:
        return self.server if source == "mlflow-server" else self.sqlite

    def read(self, style: str, source: str) -> SourceResult:
        key = (style, source)
        if key not in self._read:
            corpus = self.get(style)
            if source == "wandb-offline":
                from tracker_sched.sources.wandb_offline import WandbOfflineSource

                self._read[key] = WandbOfflineSource(corpus.wandb_dir).read()
            else:
                from tracker_sched.sources.mlflow_source import MlflowSource

                self._read[key] = MlflowSource(corpus.experiment,
                                               tracking_uri=self.tracking_uri(source),
                                               progress=False).read()
        return self._read[key]


@pytest.fixture(scope="session")
def corpora(tmp_path_factory: pytest.TempPathFactory,
            mlflow_server_store: tuple[str, str]) -> Iterator[Corpora]:
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    made = Corpora(tmp_path_factory.mktemp("corpus"), *mlflow_server_store)
    yield made
    if made.seconds:
        print("\n[corpus] generated in " + ", ".join(f"{k} {v:.1f} s"
                                                   for k, v in made.seconds.items()))
