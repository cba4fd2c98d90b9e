"""Hugging Face ``transformers.Trainer``: :class:`AdvisorCallback`.

Importing this package does not import transformers; the callback's module does
(``pip install "tracker-sched[transformers]"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracker_sched._optional import lazy_exports

if TYPE_CHECKING:
    from .callback import AdvisorCallback

__all__ = ["AdvisorCallback"]

__getattr__ = lazy_exports(__name__, ".callback", __all__, extra="transformers",
                           roots=("transformers", "accelerate"))
