"""Ray Tune: a trial scheduler that stops trials by the bundle's forecast, and the advisor
inside a trainable. Importing this package does not import ray; its names do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracker_sched.integrations.ray.scheduler import TrackerSchedScheduler, with_advisor

__all__ = ["TrackerSchedScheduler", "with_advisor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tracker_sched.integrations.ray import scheduler

        return getattr(scheduler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
