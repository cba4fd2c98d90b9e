"""tracker-sched: learn learning-rate schedules from the sweeps in your experiment tracker.

The public surface::

    from tracker_sched import FitConfig, fit_sweep, read_sweep, Bundle

    sweep = read_sweep("sweep.jsonl")
    result = fit_sweep(sweep.runs, FitConfig())
    result.bundle.save("bundle/")
    bundle = Bundle.load("bundle/")
"""

from typing import TYPE_CHECKING, Any

from tracker_sched import _compat

_compat.install()  # compat: remove in 0.3 (the flat module paths of 0.1)

# Names are imported on first use (PEP 562): MLflow imports our run context provider
# while it imports itself, and a thin client (RemoteAdvisor) should not pay for torch.
_EXPORTS = {
    "Advisor": "tracker_sched.advising.advisor",
    "AdvisorLR": "tracker_sched.integrations.pytorch.scheduler",
    "Bundle": "tracker_sched.bundle.folder",
    "BundleManifest": "tracker_sched.bundle.manifest",
    "BundleError": "tracker_sched.errors",
    "FitError": "tracker_sched.errors",
    "InputError": "tracker_sched.errors",
    "MissingDependencyError": "tracker_sched.errors",
    "SourceError": "tracker_sched.errors",
    "TrackerSchedError": "tracker_sched.errors",
    "FitConfig": "tracker_sched.fit.config",
    "FitResult": "tracker_sched.fit.generative",
    "fit_sweep": "tracker_sched.fit.generative",
    "ModelConfig": "tracker_sched.model.latent",
    "GenerativePlanner": "tracker_sched.planning.generative",
    "LiveHistory": "tracker_sched.planning.history",
    "PlannerConfig": "tracker_sched.planning.generative",
    "FitReport": "tracker_sched.bundle.manifest",
    "MetricMap": "tracker_sched.schema",
    "Recommendation": "tracker_sched.schema",
    "RunIssue": "tracker_sched.schema",
    "RunRecord": "tracker_sched.schema",
    "Schedule": "tracker_sched.schema",
    "Series": "tracker_sched.schema",
    "read_sweep": "tracker_sched.sources.files",
    "write_sweep": "tracker_sched.sources.files",
    "validate_sweep": "tracker_sched.data.validation",
    "RemoteAdvisor": "tracker_sched.advising.remote",
    "load_bundle": "tracker_sched.stores",
    "confounding": "tracker_sched.design.confounding",
    "suggest_runs": "tracker_sched.design.suggest",
}

if TYPE_CHECKING:
    from tracker_sched.advising.advisor import Advisor
    from tracker_sched.advising.remote import RemoteAdvisor
    from tracker_sched.bundle.folder import Bundle
    from tracker_sched.bundle.manifest import BundleManifest, FitReport
    from tracker_sched.data.validation import validate_sweep
    from tracker_sched.design.confounding import confounding
    from tracker_sched.design.suggest import suggest_runs
    from tracker_sched.errors import (
        BundleError,
        FitError,
        InputError,
        MissingDependencyError,
        SourceError,
        TrackerSchedError,
    )
    from tracker_sched.fit.config import FitConfig
    from tracker_sched.fit.generative import FitResult, fit_sweep
    from tracker_sched.integrations.pytorch.scheduler import AdvisorLR
    from tracker_sched.model.latent import ModelConfig
    from tracker_sched.planning.generative import GenerativePlanner, PlannerConfig
    from tracker_sched.planning.history import LiveHistory
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
