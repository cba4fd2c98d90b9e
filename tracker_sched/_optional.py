"""Optional dependencies: imported where they are used, and a missing one names its extra.

Every optional import in tracker-sched goes through :func:`require`, so the
message a user sees (``pip install "tracker-sched[EXTRA]"``) is written once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from tracker_sched.errors import MissingDependencyError

# The extra that installs each optional package (pyproject.toml's optional-dependencies).
EXTRAS = {
    "matplotlib": "plots",
    "mlflow": "mlflow",
    "mnist1d": "demo",
    "schedulefree": "bench",
    "wandb": "wandb",
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import an optional module, or say which extra installs it.

    Args:
        module: a dotted module name, e.g. ``"mlflow"`` or ``"wandb.proto.wandb_internal_pb2"``.
        extra: the tracker-sched extra that installs it; by default the one :data:`EXTRAS`
            gives its top-level package.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: the module cannot be imported (an ``ImportError`` too), with
            the message ``pip install "tracker-sched[EXTRA]"``.
    """
    package = module.partition(".")[0]
    parts = module.split(".")
    try:
        # Parent by parent, as ``from a.b import c`` does: a blocked parent (None in
        # sys.modules) fails even when the submodule itself was imported before.
        for end in range(1, len(parts) + 1):
            found = importlib.import_module(".".join(parts[:end]))
    except ImportError as exc:
        raise MissingDependencyError(package, extra or EXTRAS[package]) from exc
    return found


def lazy_exports(package: str, module: str, names: Sequence[str], *, extra: str,
                 roots: Sequence[str]) -> Callable[[str], Any]:
    """A package's PEP 562 ``__getattr__``: ``names`` are read from ``module`` on first use,
    so importing the package imports no framework.

    Args:
        package: the package's ``__name__``.
        module: the module that defines the names, relative to ``package`` (``".callback"``).
        names: the names it exports (its ``__all__``).
        extra: the tracker-sched extra that installs the framework.
        roots: the top-level packages whose absence means "install the extra".

    Returns:
        The ``__getattr__`` to assign in the package.

    Raises:
        MissingDependencyError: (from the returned function) a name was asked for and one
            of ``roots`` is not installed.
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            found = importlib.import_module(module, package)
        except ImportError as exc:
            if exc.name is not None and exc.name.split(".")[0] in roots:
                raise MissingDependencyError(exc.name, extra) from exc
            raise
        return getattr(found, name)

    return __getattr__
