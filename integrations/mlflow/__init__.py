"""MLflow: live callback, deployments target ``tracker-sched``, run context provider.

Nothing here imports mlflow until used: MLflow loads the plugin modules
(``deployments``, ``context``) while importing itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracker_sched._optional import lazy_exports

if TYPE_CHECKING:
    from tracker_sched.integrations.mlflow.callback import (
        MlflowAdvisorCallback,
        log_recommendation,
    )

__all__ = ["MlflowAdvisorCallback", "log_recommendation"]


__getattr__ = lazy_exports(__name__, ".callback", __all__, extra="mlflow", roots=("mlflow",))
