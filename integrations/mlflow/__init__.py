"""MLflow: live callback, deployments target ``tracker-sched``, run context provider.

Nothing here imports mlflow until used: MLflow loads the plugin modules
(``deployments``, ``context``) while importing itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracker_sched.integrations.mlflow.callback import (
        MlflowAdvisorCallback,
        log_recommendation,
    )

__all__ = ["MlflowAdvisorCallback", "log_recommendation"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tracker_sched.integrations.mlflow import callback

        return getattr(callback, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
