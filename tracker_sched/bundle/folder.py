"""A fitted model as a self-describing, versioned folder.

::

    BUNDLE_DIR/
      bundle.json   # BundleManifest: schema version, configs, normalisation,
                    # metric map, sweep summary, fit report, package versions
      weights.pt    # {"member_0": state_dict, ...}, loaded with weights_only=True

Loading fails loudly (:class:`~tracker_sched.errors.BundleError`) on a missing
or corrupt file, a newer schema version, weights that do not fit the config, sizes beyond
:mod:`tracker_sched.limits` (checked before anything is allocated) or statistics a planner
cannot use (a zero or non-finite std, a non-positive warm-up lr, NaN weights): it never
returns an untrained or unusable model.

Saving never loses data (:mod:`tracker_sched.util.folders`): the new bundle is written beside the
target, loaded back (a bundle that cannot load is never written), then moved in file by file
with the old files kept until the new ones are in place; other files in the folder are never
touched. Config secrets are redacted on the way (:mod:`tracker_sched.util.redact`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import itertools
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tracker_sched import limits
from tracker_sched.data.grid import Normalisation
from tracker_sched.errors import BundleError
from tracker_sched.fit.report import FitReport
from tracker_sched.model.forecast import Forecaster
from tracker_sched.model.latent import LatentODE, ModelConfig
from tracker_sched.util.folders import check_target, install, staging_dir
from tracker_sched.util.redact import redact_config

SCHEMA_VERSION = 1
MANIFEST = "bundle.json"
WEIGHTS = "weights.pt"
REPORT = "report.json"
PLOT = "forecast.png"
# The files a bundle folder is made of, in the order a save puts them in place: the manifest,
# which names the weights by their digest, last. Nothing else in the folder is ours.
OWNED = (WEIGHTS, PLOT, REPORT, MANIFEST)


def _finite(x: float) -> bool:
    return math.isfinite(x)


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

    @model_validator(mode="after")
    def _finite_values(self) -> RunTrace:
        for name in ("train_loss", "log_lr", "val_metric"):
            if any(v is not None and not _finite(v) for v in getattr(self, name)):
                raise ValueError(f"top run {self.run_id}: {name} holds a non-finite value")
        if self.final_val is not None and not _finite(self.final_val):
            raise ValueError(f"top run {self.run_id}: final_val is not finite")
        return self


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

    @model_validator(mode="after")
    def _usable(self) -> SweepSummary:
        for name in ("lr_min", "lr_max", "best_peak_lr"):
            value = getattr(self, name)
            if not (_finite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not _finite(self.best_config_mean_final_val):
            raise ValueError("best_config_mean_final_val is not finite")
        tau, lr = self.warmup_tau, self.warmup_lr
        if len(tau) < 2 or len(tau) != len(lr):
            raise ValueError(f"the warm-up plan needs as many (>= 2) tau as lr values, got "
                             f"{len(tau)} and {len(lr)}")
        if any(not (_finite(t) and 0 <= t <= 1) for t in tau) or any(
                b < a for a, b in itertools.pairwise(tau)):
            raise ValueError("warmup_tau must rise from 0 to 1")
        if any(not (_finite(x) and x > 0) for x in lr):
            raise ValueError("warmup_lr must hold positive, finite learning rates")
        return self


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
        "is an input of the dynamics (control mode, tracker_sched.fit.control). Bundles written "
        "before the field existed are latent_ode.",
    )
    created_at: str
    members: int = Field(ge=1, le=limits.MAX_MEMBERS)
    model: ModelConfig
    fit: dict[str, Any]
    grid_points: int = Field(ge=10, le=limits.MAX_GRID_POINTS)
    window: int = Field(ge=2)
    normalisation: Normalisation
    metrics: MetricRoles
    sweep: SweepSummary
    report: FitReport
    versions: dict[str, str]
    control: dict[str, Any] | None = Field(
        default=None,
        description="control_ode only: the fit's lr-response and counterfactual-ranking "
        "checks (tracker_sched.fit.control.ControlChecks as JSON), read by the control planner",
    )
    redacted: list[str] = Field(
        default_factory=list,
        description="config keys whose values were redacted before saving (names only; the "
        "rule is in tracker_sched.util.redact)",
    )
    weights_sha256: str | None = Field(
        default=None,
        description="digest of weights.pt: a folder caught between two saves cannot pair one "
        "bundle's manifest with another's weights (None: written before the field existed)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> BundleManifest:
        g = self.grid_points
        if self.window > g:
            raise ValueError(f"window {self.window} is longer than the grid ({g} points)")
        if len(self.sweep.warmup_tau) != g:
            raise ValueError(f"the warm-up plan has {len(self.sweep.warmup_tau)} points, the "
                             f"grid {g}")
        for run in self.sweep.top_runs:
            if {len(run.train_loss), len(run.log_lr), len(run.val_metric)} != {g}:
                raise ValueError(f"top run {run.run_id} is not on the {g}-point grid")
        return self


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
        """Write the bundle folder; return its path. See the module docstring for the rules.

        Raises :class:`BundleError` (nothing changed at ``path``) if the target would lose
        data, the bundle would not load back, or the disk refuses the write.
        """
        dest = check_target(path, marker=MANIFEST)
        staged = None
        try:
            staged = staging_dir(dest)
            manifest = stored_manifest(self.manifest)
            buf = io.BytesIO()
            torch.save({f"member_{i}": m.state_dict() for i, m in enumerate(self.models)}, buf)
            weights = buf.getvalue()
            manifest = manifest.model_copy(
                update={"weights_sha256": hashlib.sha256(weights).hexdigest()})
            (staged / WEIGHTS).write_bytes(weights)
            (staged / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            try:
                Bundle.load(staged)  # never report a bundle that cannot be loaded as written
            except BundleError as exc:
                raise BundleError(f"the bundle would not load back, so it was not written to "
                                  f"{dest}: {exc}") from exc
            install(staged, dest, OWNED)
            # The bundle in memory now names its weights as the saved one does (its configs
            # keep their values: only what is stored is redacted).
            self.manifest = self.manifest.model_copy(
                update={"weights_sha256": manifest.weights_sha256})
        except OSError as exc:
            raise BundleError(f"cannot write the bundle to {dest}: {exc}; the folder is as it "
                              "was") from exc
        finally:
            if staged is not None and staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
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
        manifest = _read_manifest(mpath)
        weights = _read_bounded(wpath, limits.MAX_WEIGHTS_BYTES)
        try:
            state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
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
            for name, tensor in sd.items():
                if (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
                        and not bool(torch.isfinite(tensor).all())):
                    raise BundleError(f"{wpath}: member {i}'s {name} holds NaN or infinite "
                                      "weights; the bundle is corrupt")
            model = _model_class(manifest.kind)(manifest.model)
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise BundleError(
                    f"weights of member {i} do not fit the model config in {mpath}: {exc}"
                ) from exc
            model.eval()
            models.append(model)
        # Last, so that weights that do not load say why: these load, but are another save's.
        if manifest.weights_sha256 not in (None, hashlib.sha256(weights).hexdigest()):
            raise BundleError(f"{wpath} is not the weights {mpath} was saved with (a save was "
                              "interrupted, or a file was replaced); save the bundle again")
        return cls(manifest, models)


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise BundleError(f"{path} is {size / 2**20:.0f} MiB, more than a bundle may hold "
                              f"({limit / 2**20:.0f} MiB); it is not a tracker-sched bundle")
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc


def _read_manifest(mpath: Path) -> BundleManifest:
    """The manifest, with every size and statistic checked before anything is built from it."""
    try:
        raw = json.loads(_read_bounded(mpath, limits.MAX_MANIFEST_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
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
        return BundleManifest.model_validate(raw)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                           for e in exc.errors()[:5])
        raise BundleError(f"{mpath} does not match the bundle schema ({errors}); the bundle is "
                          "corrupt") from exc


def stored_manifest(manifest: BundleManifest) -> BundleManifest:
    """The manifest as it may be stored: run configs redacted, the redacted keys listed."""
    sweep = manifest.sweep
    names = set(manifest.redacted)
    best, found = redact_config(sweep.best_config)
    names.update(found)
    best_hp, found = redact_config(sweep.best_hyperparameters)
    names.update(found)
    top = []
    for run in sweep.top_runs:
        config, found = redact_config(run.config)
        names.update(found)
        top.append(run.model_copy(update={"config": config}))
    sweep = sweep.model_copy(update={"best_config": best, "best_hyperparameters": best_hp,
                                     "top_runs": top})
    return manifest.model_copy(update={"sweep": sweep, "redacted": sorted(names)})


@contextlib.contextmanager
def upload_copy(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary copy of a bundle folder fit to upload to a tracker; removed afterwards.

    It holds the bundle's own files only (never a user's file that lies in the folder), the
    manifest re-checked and re-redacted (a bundle saved by an older version may hold a
    secret), with its report and plot. Raises :class:`BundleError` if the folder does not load.
    """
    src = Path(folder)
    bundle = Bundle.load(src)
    with tempfile.TemporaryDirectory(prefix="tracker-sched-upload-") as tmp:
        out = bundle.save(Path(tmp) / "bundle")
        for name in (REPORT, PLOT):
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
        yield out


def _model_class(kind: str) -> type[LatentODE]:
    """The module class of a bundle kind (imported lazily: control builds on this module)."""
    if kind == "control_ode":
        from tracker_sched.fit.control import ControlODE

        return ControlODE
    return LatentODE
