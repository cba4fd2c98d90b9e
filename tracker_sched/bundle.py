"""A fitted model as a self-describing, versioned folder.

::

    BUNDLE_DIR/
      bundle.json   # BundleManifest: schema version, configs, normalisation,
                    # metric map, sweep summary, fit report, package versions
      weights.pt    # {"member_0": state_dict, ...}, loaded with weights_only=True

Loading fails loudly (:class:`~tracker_sched.errors.BundleError`) on a missing
or corrupt file, a newer schema version, or weights that do not fit the
config: it never returns an untrained model.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tracker_sched.dataset import Normalisation
from tracker_sched.errors import BundleError
from tracker_sched.forecast import Forecaster
from tracker_sched.model import LatentODE, ModelConfig
from tracker_sched.report import FitReport

SCHEMA_VERSION = 1
MANIFEST = "bundle.json"
WEIGHTS = "weights.pt"


class RunTrace(BaseModel):
    """A sweep run on the progress grid (transformed units; None where unobserved)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    config: dict[str, Any] = Field(default_factory=dict)
    config_id: str | None = Field(default=None, description="its configuration "
                                  "(tracker_sched.identity); None in bundles before 0.2")
    total_steps: int
    final_val: float | None
    train_loss: list[float | None]
    log_lr: list[float | None]
    val_metric: list[float | None]


class SweepSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    runs_used: int
    best_run_id: str
    best_config: dict[str, Any]
    best_config_mean_final_val: float
    best_config_runs: int
    lr_min: float
    lr_max: float
    best_peak_lr: float
    warmup_tau: list[float] = Field(description="tau grid of the warm-up plan")
    warmup_lr: list[float] = Field(description="the best run's lr on that grid")
    top_runs: list[RunTrace] = Field(description="best runs first, for planners")
    configurations: int | None = Field(default=None, description="configurations among the "
                                       "runs used (seeds and run identity aside)")
    hyperparameters: list[str] = Field(default_factory=list, description="config keys that "
                                       "tell the sweep's configurations apart")
    best_hyperparameters: dict[str, Any] = Field(default_factory=dict, description="the best "
                                                 "configuration's values of those keys")
    runs_by_state: dict[str, int] = Field(default_factory=dict, description="runs used, by "
                                          "tracker state; only finished runs can be the best")
    runs_complete: int | None = Field(default=None, description="runs used that reached the "
                                      "end of their budget")
    budgets: list[int] = Field(default_factory=list, description="the distinct budgets "
                               "(total steps) of the runs used")


class MetricRoles(BaseModel):
    model_config = ConfigDict(frozen=True)

    train_loss: str | None = None
    lr: str | None = None
    val_metric: str
    direction: Literal["max", "min"]


class BundleManifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: int
    kind: Literal["latent_ode", "control_ode"] = Field(
        default="latent_ode",
        description="latent_ode: the lr is decoded (generative mode); control_ode: the lr "
        "is an input of the dynamics (control mode, tracker_sched.control). Bundles written "
        "before the field existed are latent_ode.",
    )
    created_at: str
    members: int = Field(ge=1)
    model: ModelConfig
    fit: dict[str, Any]
    grid_points: int
    window: int
    normalisation: Normalisation
    metrics: MetricRoles
    sweep: SweepSummary
    report: FitReport
    versions: dict[str, str]
    control: dict[str, Any] | None = Field(
        default=None,
        description="control_ode only: the fit's lr-response and counterfactual-ranking "
        "checks (tracker_sched.control.ControlChecks as JSON), read by the control planner",
    )


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("tracker-sched", "torch", "torchdiffeq", "pydantic", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Bundle:
    """A manifest and its fitted ensemble."""

    def __init__(self, manifest: BundleManifest, models: list[LatentODE]) -> None:
        if len(models) != manifest.members:
            raise BundleError(f"manifest says {manifest.members} members, got {len(models)}")
        self.manifest = manifest
        self.models = models

    @property
    def forecaster(self) -> Forecaster:
        return Forecaster(self.models)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bundle folder atomically (a temp folder renamed into place)."""
        dest = Path(path)
        if dest.exists() and not dest.is_dir():
            raise BundleError(f"{dest} exists and is a file; give a folder path for the bundle")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=dest.parent))
        try:
            (tmp / MANIFEST).write_text(self.manifest.model_dump_json(indent=2))
            torch.save({f"member_{i}": m.state_dict() for i, m in enumerate(self.models)},
                       tmp / WEIGHTS)
            if dest.exists():
                if not (dest / MANIFEST).exists() and any(dest.iterdir()):
                    raise BundleError(
                        f"{dest} exists and is not a bundle; refusing to overwrite it"
                    )
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return dest

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Bundle:
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"no bundle at {root}: not a folder")
        mpath, wpath = root / MANIFEST, root / WEIGHTS
        for p in (mpath, wpath):
            if not p.is_file():
                raise BundleError(f"bundle {root} is incomplete: {p.name} is missing")
        try:
            raw = json.loads(mpath.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{mpath} is not valid JSON ({exc}); the bundle is corrupt") from exc
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if not isinstance(version, int):
            raise BundleError(f"{mpath} has no integer schema_version; the bundle is corrupt")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"bundle schema version {version} is newer than this tracker-sched supports "
                f"({SCHEMA_VERSION}); upgrade tracker-sched to load it"
            )
        try:
            manifest = BundleManifest.model_validate(raw)
        except ValidationError as exc:
            raise BundleError(f"{mpath} does not match the bundle schema: {exc}") from exc
        try:
            state = torch.load(wpath, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BundleError(
                f"{wpath} cannot be read as weights ({exc}); the bundle is corrupt"
            ) from exc
        if not isinstance(state, dict):
            raise BundleError(f"{wpath} does not hold a state dict; the bundle is corrupt")
        models = []
        for i in range(manifest.members):
            sd = state.get(f"member_{i}")
            if not isinstance(sd, dict):
                raise BundleError(f"{wpath} has no weights for member {i}; the bundle is corrupt")
            model = _model_class(manifest.kind)(manifest.model)
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise BundleError(
                    f"weights of member {i} do not fit the model config in {mpath}: {exc}"
                ) from exc
            model.eval()
            models.append(model)
        return cls(manifest, models)


def _model_class(kind: str) -> type[LatentODE]:
    """The module class of a bundle kind (imported lazily: control builds on this module)."""
    if kind == "control_ode":
        from tracker_sched.control import ControlODE

        return ControlODE
    return LatentODE
