"""Optuna: a pruner that stops trials whose forecast says they will not beat the best.

Importing this package does not import optuna; the pruner module does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracker_sched._optional import lazy_exports

if TYPE_CHECKING:
    from tracker_sched.integrations.optuna.pruner import TrackerSchedPruner

__all__ = ["TrackerSchedPruner"]


__getattr__ = lazy_exports(__name__, ".pruner", __all__, extra="optuna", roots=("optuna",))
