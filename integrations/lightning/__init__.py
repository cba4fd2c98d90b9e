"""Lightning: :class:`AdvisorCallback`, a ``lightning.Callback``.

Importing this package does not import lightning; the callback's module does
(``pip install "tracker-sched[lightning]"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracker_sched._optional import lazy_exports

if TYPE_CHECKING:
    from .callback import AdvisorCallback

__all__ = ["AdvisorCallback"]

__getattr__ = lazy_exports(__name__, ".callback", __all__, extra="lightning", roots=("lightning",))
