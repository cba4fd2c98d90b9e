"""Optuna: a pruner that stops trials whose forecast says they will not beat the best.

Importing this package does not import optuna; the pruner module does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracker_sched.integrations.optuna.pruner import TrackerSchedPruner

__all__ = ["TrackerSchedPruner"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tracker_sched.integrations.optuna import pruner

        return getattr(pruner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
