"""The bundle: manifest schemas and the folder format of a fitted model."""

from __future__ import annotations

from typing import Any

from tracker_sched import _compat

#: The manifest file that makes a folder a bundle (torch-free here: `fit` checks its
#: `--out` before it imports torch).
MANIFEST = "bundle.json"


def __getattr__(name: str) -> Any:
    # compat: remove in 0.3. The 0.1 module tracker_sched.bundle is now this package;
    # its names are read from the modules that now hold them, on first use (not imported
    # here: importing a submodule must not import the whole stage).
    return _compat.moved_attr(__name__, name, "tracker_sched.bundle.folder",
                              "tracker_sched.bundle.manifest", "tracker_sched.data.summary")
