"""Hugging Face ``transformers.Trainer``: :class:`AdvisorCallback`.

Importing this package does not import transformers; the callback's module does
(``pip install "tracker-sched[transformers]"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .callback import AdvisorCallback

__all__ = ["AdvisorCallback"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tracker_sched.errors import MissingDependencyError

        try:
            from . import callback
        except ImportError as exc:
            if exc.name is not None and exc.name.split(".")[0] in ("transformers", "accelerate"):
                raise MissingDependencyError(exc.name, "transformers") from exc
            raise
        return getattr(callback, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
