"""Opt-in MLflow run context provider: tags the runs started while tracker-sched is on.

MLflow finds it through the ``mlflow.run_context_provider`` entry point and asks
every provider, at each ``mlflow.start_run``, whether it is "in context" and
for its tags. This one is in context only when the user opted in: the
environment variable ``TRACKER_SCHED_ENABLED=1``, or a
:class:`~tracker_sched.integrations.mlflow.callback.MlflowAdvisorCallback`
open in this process. Its tags::

    tracker_sched.enabled          "true"
    tracker_sched.version          the installed tracker-sched version
    tracker_sched.bundle_version   the open callback's bundle, when one is open

MLflow loads this module while it is still importing itself, so nothing here
imports mlflow at module level: the provider class, which must subclass
MLflow's ``RunContextProvider``, is built on first access (PEP 562
``__getattr__``), by which time MLflow's base class is importable.
"""

from __future__ import annotations

import os
import threading
from typing import Any

ENV_ENABLED = "TRACKER_SCHED_ENABLED"
TAG_ENABLED = "tracker_sched.enabled"
TAG_VERSION = "tracker_sched.version"
TAG_BUNDLE_VERSION = "tracker_sched.bundle_version"

# Callbacks open in this process (id -> their bundle version). Filled by the
# callback itself; empty at import.
_open: dict[int, str | None] = {}
_lock = threading.Lock()


def register_callback(key: object, bundle_version: str | None) -> None:
    """Mark a live callback as open (runs started now are tagged)."""
    with _lock:
        _open[id(key)] = bundle_version


def unregister_callback(key: object) -> None:
    with _lock:
        _open.pop(id(key), None)


def enabled() -> bool:
    """True when the user opted in: ``TRACKER_SCHED_ENABLED=1`` or an open callback."""
    if os.environ.get(ENV_ENABLED, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    with _lock:
        return bool(_open)


def context_tags() -> dict[str, str]:
    """The tags for a run started now (empty when not enabled)."""
    if not enabled():
        return {}
    from tracker_sched import __version__

    tags = {TAG_ENABLED: "true", TAG_VERSION: __version__}
    with _lock:
        versions = [v for v in _open.values() if v]
    if versions:
        tags[TAG_BUNDLE_VERSION] = versions[-1]
    return tags


def _build_provider() -> type:
    from mlflow.tracking.context.abstract_context import RunContextProvider

    class TrackerSchedContext(RunContextProvider):
        """Tags runs started while tracker-sched is enabled (see the module docstring)."""

        def in_context(self) -> bool:
            return enabled()

        def tags(self) -> dict[str, str]:
            return context_tags()

    TrackerSchedContext.__module__ = __name__
    return TrackerSchedContext


def __getattr__(name: str) -> Any:
    if name == "TrackerSchedContext":
        cls = _build_provider()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "TrackerSchedContext"])
