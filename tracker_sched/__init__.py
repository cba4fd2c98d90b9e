"""tracker-sched: learn learning-rate schedules from the sweeps in your experiment tracker.

The public surface: read a sweep, fit it, load the bundle, advise a live run::

    from tracker_sched import Advisor, AdvisorLR, FitConfig, fit_sweep, load_bundle, read_sweep

    sweep = read_sweep("sweep.jsonl")
    fit_sweep(sweep.runs, FitConfig()).bundle.save("bundle/")
    advisor = Advisor(load_bundle("bundle/"), total_steps=840)
    scheduler = AdvisorLR(optimizer, advisor)   # or advisor.lr(step) in any loop

Everything else lives in the subpackage of its stage (``tracker_sched.fit``,
``tracker_sched.planning``, ...; the README's Architecture section lists them).
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
    "BundleError": "tracker_sched.errors",
    "FitConfig": "tracker_sched.fit.config",
    "FitError": "tracker_sched.errors",
    "InputError": "tracker_sched.errors",
    "MetricMap": "tracker_sched.schema",
    "MissingDependencyError": "tracker_sched.errors",
    "Recommendation": "tracker_sched.schema",
    "RemoteAdvisor": "tracker_sched.advising.remote",
    "RunRecord": "tracker_sched.schema",
    "SourceError": "tracker_sched.errors",
    "TrackerSchedError": "tracker_sched.errors",
    "fit_sweep": "tracker_sched.fit.generative",
    "load_bundle": "tracker_sched.stores",
    "read_sweep": "tracker_sched.sources.files",
}

# compat: remove in 0.3. Top-level names of 0.1 that left the public surface; they still
# resolve, but are not in __all__ (import them from their stage's subpackage).
_FORMER = {
    "BundleManifest": "tracker_sched.bundle.manifest",
    "FitReport": "tracker_sched.bundle.manifest",
    "FitResult": "tracker_sched.fit.generative",
    "GenerativePlanner": "tracker_sched.planning.generative",
    "LiveHistory": "tracker_sched.planning.history",
    "ModelConfig": "tracker_sched.model.latent",
    "PlannerConfig": "tracker_sched.planning.generative",
    "RunIssue": "tracker_sched.schema",
    "Schedule": "tracker_sched.schema",
    "Series": "tracker_sched.schema",
    "confounding": "tracker_sched.design.confounding",
    "suggest_runs": "tracker_sched.design.suggest",
    "validate_sweep": "tracker_sched.data.validation",
    "write_sweep": "tracker_sched.sources.files",
}

if TYPE_CHECKING:
    from tracker_sched.advising.advisor import Advisor
    from tracker_sched.advising.remote import RemoteAdvisor
    from tracker_sched.bundle.folder import Bundle
    from tracker_sched.errors import (
        BundleError,
        FitError,
        InputError,
        MissingDependencyError,
        SourceError,
        TrackerSchedError,
    )
    from tracker_sched.fit.config import FitConfig
    from tracker_sched.fit.generative import fit_sweep
    from tracker_sched.integrations.pytorch.scheduler import AdvisorLR
    from tracker_sched.schema import MetricMap, Recommendation, RunRecord
    from tracker_sched.sources.files import read_sweep
    from tracker_sched.stores import load_bundle


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name) or _FORMER.get(name)
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
    "FitConfig",
    "FitError",
    "InputError",
    "MetricMap",
    "MissingDependencyError",
    "Recommendation",
    "RemoteAdvisor",
    "RunRecord",
    "SourceError",
    "TrackerSchedError",
    "__version__",
    "fit_sweep",
    "load_bundle",
    "read_sweep",
]
