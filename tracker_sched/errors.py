"""One exception family. Every message says what was wrong and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pydantic only for the type: every layer may import this module
    from pydantic import ValidationError


class TrackerSchedError(Exception):
    """Base class of every error tracker-sched raises on purpose."""


class InputError(TrackerSchedError, ValueError):
    """Input data (a sweep, a file, a metric window) is unusable as given."""


class SourceError(TrackerSchedError):
    """A source could not read runs (missing path, unknown project, unreadable file)."""


class BundleError(TrackerSchedError):
    """A bundle could not be saved or loaded. A failed load never yields an untrained model."""


class FitError(TrackerSchedError):
    """The sweep cannot be fitted (too few usable runs, nothing left after validation)."""


class MissingDependencyError(TrackerSchedError, ImportError):
    """An optional dependency is not installed; the message names the extra to install.

    Args:
        package: the missing package (``mlflow``).
        extra: the tracker-sched extra that installs it (``pip install "tracker-sched[mlflow]"``).
    """

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install \"tracker-sched[{extra}]\""
        )
        self.package = package
        self.extra = extra


def invalid(exc: ValidationError, what: str) -> InputError:
    """A pydantic validation failure as one line, each bad field by its path.

    Args:
        exc: the validation error.
        what: what was being read (``"bad recommendation request"``).

    Returns:
        ``InputError("WHAT: a.b: message; c: message")``, to raise ``from exc``.
    """
    errors = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
    return InputError(f"{what}: {errors}")
