"""Ray Tune: a trial scheduler that stops trials by the bundle's forecast, and the advisor
inside a trainable. Importing this package does not import ray; its names do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracker_sched._optional import lazy_exports

if TYPE_CHECKING:
    from tracker_sched.integrations.ray.scheduler import TrackerSchedScheduler, with_advisor

__all__ = ["TrackerSchedScheduler", "with_advisor"]


__getattr__ = lazy_exports(__name__, ".scheduler", __all__, extra="ray", roots=("ray",))
