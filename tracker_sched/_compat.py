"""The flat module paths of 0.1, kept for one release (compat: remove in 0.3).

0.2 moved the flat modules into subpackages, one per stage of the data flow.
Code written against 0.1 still imports the old paths (``tracker_sched.advisor``,
``tracker_sched.planner``, ...). :data:`MOVED` maps each old path to its new
module and an import hook makes both names the same module object, so a patch
through the old name reaches the code. There is no file at an old path: a
re-export file there would be a second module (a patch through it would miss
the code) and would hide the move from ``git``'s rename detection.

The four old modules whose names are now packages (``model``, ``fit``,
``bundle``, ``demo``) answer their old names through :func:`moved_attr`.

Nothing here is covered by the layers contract: the hook imports by name.

Artifacts of 0.1 do not depend on this module: a registered MLflow model names
``tracker_sched.stores.mlflow_pyfunc``, which did not move, and a bundle folder
names no module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

MOVED = {  # compat: remove in 0.3
    "tracker_sched.advisor": "tracker_sched.advising.advisor",
    "tracker_sched.confounding": "tracker_sched.design.confounding",
    "tracker_sched.control": "tracker_sched.fit.control",
    "tracker_sched.control_checks": "tracker_sched.fit.checks",
    "tracker_sched.control_planner": "tracker_sched.planning.control",
    "tracker_sched.dataset": "tracker_sched.data.grid",
    "tracker_sched.demo_report": "tracker_sched.demo.report",
    "tracker_sched.folders": "tracker_sched.util.folders",
    "tracker_sched.following": "tracker_sched.advising.following",
    "tracker_sched.forecast": "tracker_sched.model.forecast",
    "tracker_sched.planner": "tracker_sched.planning.generative",
    "tracker_sched.plots": "tracker_sched.fit.plots",
    "tracker_sched.preflight": "tracker_sched.data.preflight",
    "tracker_sched.redact": "tracker_sched.util.redact",
    "tracker_sched.remote": "tracker_sched.advising.remote",
    "tracker_sched.report": "tracker_sched.fit.report",
    "tracker_sched.scheduler": "tracker_sched.integrations.pytorch.scheduler",
    "tracker_sched.serving": "tracker_sched.advising.serving",
    "tracker_sched.suggest": "tracker_sched.design.suggest",
    "tracker_sched.summary": "tracker_sched.data.summary",
    "tracker_sched.term": "tracker_sched.util.term",
    "tracker_sched.validation": "tracker_sched.data.validation",
    "tracker_sched.workers": "tracker_sched.util.workers",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path as its new module (the same object, under both names)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module: ModuleType) -> None:
        # The import system returns what sys.modules holds under the name after this call.
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


def install() -> None:
    """Add the import hook for :data:`MOVED` (once; appended, so real modules win)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())


def moved_attr(package: str, name: str, *old_modules: str) -> Any:
    """A name of the 0.1 module ``package`` (now a package), read from where it went.

    Args:
        package: the package's name (its ``__name__``).
        name: the attribute asked for.
        old_modules: the modules that now hold what the 0.1 module of that name held,
            searched in order.

    Returns:
        The attribute of the first of ``old_modules`` that has it.

    Raises:
        AttributeError: none has it (so that ``from package import submodule`` goes on to
            import the submodule).
    """
    if not name.startswith("__"):
        for module in old_modules:
            value = getattr(importlib.import_module(module), name, _MISSING)
            if value is not _MISSING:
                return value
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


_MISSING = object()
