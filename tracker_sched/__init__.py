"""tracker-sched: learn learning-rate schedules from the sweeps in your experiment tracker.

The public surface::

    from tracker_sched import FitConfig, fit_sweep, read_sweep, Bundle

    sweep = read_sweep("sweep.jsonl")
    result = fit_sweep(sweep.runs, FitConfig())
    result.bundle.save("bundle/")
    bundle = Bundle.load("bundle/")
"""

from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562): MLflow imports our run context provider
# while it imports itself, and a thin client (RemoteAdvisor) should not pay for torch.
_EXPORTS = {
    "Advisor": "tracker_sched.advisor",
    "AdvisorLR": "tracker_sched.scheduler",
    "Bundle": "tracker_sched.bundle",
    "BundleManifest": "tracker_sched.bundle",
    "BundleError": "tracker_sched.errors",
    "FitError": "tracker_sched.errors",
    "InputError": "tracker_sched.errors",
    "MissingDependencyError": "tracker_sched.errors",
    "SourceError": "tracker_sched.errors",
    "TrackerSchedError": "tracker_sched.errors",
    "FitConfig": "tracker_sched.fit",
    "FitResult": "tracker_sched.fit",
    "fit_sweep": "tracker_sched.fit",
    "ModelConfig": "tracker_sched.model",
    "GenerativePlanner": "tracker_sched.planner",
    "LiveHistory": "tracker_sched.planner",
    "PlannerConfig": "tracker_sched.planner",
    "FitReport": "tracker_sched.report",
    "MetricMap": "tracker_sched.schema",
    "Recommendation": "tracker_sched.schema",
    "RunIssue": "tracker_sched.schema",
    "RunRecord": "tracker_sched.schema",
    "Schedule": "tracker_sched.schema",
    "Series": "tracker_sched.schema",
    "read_sweep": "tracker_sched.sources.files",
    "write_sweep": "tracker_sched.sources.files",
    "validate_sweep": "tracker_sched.validation",
    "RemoteAdvisor": "tracker_sched.remote",
    "load_bundle": "tracker_sched.stores",
    "confounding": "tracker_sched.confounding",
    "suggest_runs": "tracker_sched.suggest",
}

if TYPE_CHECKING:
    from tracker_sched.advisor import Advisor
    from tracker_sched.bundle import Bundle, BundleManifest
    from tracker_sched.confounding import confounding
    from tracker_sched.errors import (
        BundleError,
        FitError,
        InputError,
        MissingDependencyError,
        SourceError,
        TrackerSchedError,
    )
    from tracker_sched.fit import FitConfig, FitResult, fit_sweep
    from tracker_sched.model import ModelConfig
    from tracker_sched.planner import GenerativePlanner, LiveHistory, PlannerConfig
    from tracker_sched.remote import RemoteAdvisor
    from tracker_sched.report import FitReport
    from tracker_sched.scheduler import AdvisorLR
    from tracker_sched.schema import (
        MetricMap,
        Recommendation,
        RunIssue,
        RunRecord,
        Schedule,
        Series,
    )
    from tracker_sched.sources.files import read_sweep, write_sweep
    from tracker_sched.stores import load_bundle
    from tracker_sched.suggest import suggest_runs
    from tracker_sched.validation import validate_sweep


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tracker_sched' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = [
    "Advisor",
    "AdvisorLR",
    "Bundle",
    "BundleError",
    "BundleManifest",
    "FitConfig",
    "FitError",
    "FitReport",
    "FitResult",
    "GenerativePlanner",
    "InputError",
    "LiveHistory",
    "MetricMap",
    "MissingDependencyError",
    "ModelConfig",
    "PlannerConfig",
    "Recommendation",
    "RemoteAdvisor",
    "RunIssue",
    "RunRecord",
    "Schedule",
    "Series",
    "SourceError",
    "TrackerSchedError",
    "__version__",
    "confounding",
    "fit_sweep",
    "load_bundle",
    "read_sweep",
    "suggest_runs",
    "validate_sweep",
    "write_sweep",
]
