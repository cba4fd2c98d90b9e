"""Fitting: the generative and control fits, their checks, the fit report and plots."""

from __future__ import annotations

from typing import Any

from tracker_sched import _compat


def __getattr__(name: str) -> Any:
    # compat: remove in 0.3. The 0.1 module tracker_sched.fit is now this package;
    # its names are read from the modules that now hold them, on first use (not imported
    # here: importing a submodule must not import the whole stage).
    return _compat.moved_attr(__name__, name, "tracker_sched.fit.generative",
                              "tracker_sched.fit.config", "tracker_sched.fit.prepare")
