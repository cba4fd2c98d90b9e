"""tracker-sched: learn learning-rate schedules from the sweeps in your experiment tracker.

The public surface::

    from tracker_sched import FitConfig, fit_sweep, read_sweep, Bundle

    sweep = read_sweep("sweep.jsonl")
    result = fit_sweep(sweep.runs, FitConfig())
    result.bundle.save("bundle/")
    bundle = Bundle.load("bundle/")
"""

from tracker_sched.advisor import Advisor
from tracker_sched.bundle import Bundle, BundleManifest
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
from tracker_sched.report import FitReport
from tracker_sched.scheduler import AdvisorLR
from tracker_sched.schema import MetricMap, Recommendation, RunIssue, RunRecord, Schedule, Series
from tracker_sched.sources.files import read_sweep, write_sweep
from tracker_sched.validation import validate_sweep

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
    "RunIssue",
    "RunRecord",
    "Schedule",
    "Series",
    "SourceError",
    "TrackerSchedError",
    "__version__",
    "fit_sweep",
    "read_sweep",
    "validate_sweep",
    "write_sweep",
]
