"""A value read from a tracker, a config or a training loop as a float: the one rule.

Trackers and configs hand over numbers in many shapes: MLflow params as text,
W&B history as JSON (non-finite floats as their names), training loops as 0-d
tensors or numpy scalars. Every reader turns them into floats here.
"""

from __future__ import annotations

import math
from typing import Any

#: JSON has no NaN or infinity: W&B writes them as these names.
NON_FINITE = {"NaN": math.nan, "nan": math.nan, "Infinity": math.inf, "inf": math.inf,
              "-Infinity": -math.inf, "-inf": -math.inf}


def to_float(value: Any, *, text: bool = False, finite: bool = False) -> float | None:
    """``value`` as a float, or None where it is not a plain number.

    Args:
        value: a bool (never a number: a flag), an int or float, a 0-d tensor or numpy
            scalar (read with ``.item()``), or text.
        text: parse text as a number (a config param: ``"0.1"``); otherwise only the
            names in :data:`NON_FINITE` are numbers.
        finite: None for NaN and infinities too.

    Returns:
        The float, or None (an int too large for a float is None too).
    """
    if isinstance(value, str):
        if text:
            try:
                out = float(value.strip())
            except ValueError:
                return None
        else:
            got = NON_FINITE.get(value)
            if got is None:
                return None
            out = got
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int | float):
        try:
            out = float(value)
        except OverflowError:
            return None
    else:
        item = getattr(value, "item", None)
        if not callable(item):
            return None
        try:
            inner = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        if isinstance(inner, bool) or not isinstance(inner, int | float):
            return None
        out = float(inner)
    return out if not finite or math.isfinite(out) else None
