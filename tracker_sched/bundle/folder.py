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
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from pydantic import ValidationError

from tracker_sched import limits
from tracker_sched.bundle import MANIFEST as MANIFEST  # re-exported: its 0.1 home
from tracker_sched.bundle.manifest import (
    SCHEMA_VERSION,
    BundleManifest,
)
from tracker_sched.errors import BundleError
from tracker_sched.model.control import KIND as CONTROL_KIND
from tracker_sched.model.forecast import Forecaster
from tracker_sched.model.kinds import MODEL_CLASSES
from tracker_sched.model.latent import LatentODE, ModelConfig
from tracker_sched.util.folders import check_target, install, staging_dir
from tracker_sched.util.redact import redact_config

WEIGHTS = "weights.pt"
CONTROL_PREFIX = "control_member_"  # an auto bundle's control members in weights.pt
REPORT = "report.json"
PLOT = "forecast.png"
# The files a bundle folder is made of, in the order a save puts them in place: the manifest,
# which names the weights by their digest, last. Nothing else in the folder is ours.
OWNED = (WEIGHTS, PLOT, REPORT, MANIFEST)


class Bundle:
    """A fitted model: its manifest and its ensemble of members.

    Args:
        manifest: what the members are and how they were fitted
            (:class:`~tracker_sched.bundle.manifest.BundleManifest`).
        models: the members, ``manifest.members`` of them, of the class of
            ``manifest.kind``. Each maps a context window ``(batch, time, 7)`` to a
            forecast ``(batch, K, 3)`` of the train loss, log lr and validation metric.

    Raises:
        BundleError: the number of members does not match the manifest.
    """

    def __init__(self, manifest: BundleManifest, models: list[LatentODE],
                 control_models: list[LatentODE] | None = None) -> None:
        if len(models) != manifest.members:
            raise BundleError(f"manifest says {manifest.members} members, got {len(models)}")
        part = manifest.planner.control if manifest.planner is not None else None
        want = part.members if part is not None else 0
        if len(control_models or []) != want:
            raise BundleError(f"manifest says {want} control members, got "
                              f"{len(control_models or [])}")
        self.manifest = manifest
        self.models = models
        #: an auto bundle's control ensemble (``manifest.planner.control``), else empty
        self.control_models = list(control_models or [])

    def control_view(self) -> Bundle | None:
        """An auto bundle's control ensemble as a control-mode bundle (what
        :class:`~tracker_sched.planning.control.ControlPlanner` reads); None without one."""
        m = self.manifest
        part = m.planner.control if m.planner is not None else None
        if part is None:
            return None
        view = m.model_copy(update={
            "kind": CONTROL_KIND, "members": part.members, "model": part.model,
            "fit": part.fit, "window": part.window, "normalisation": part.normalisation,
            "control": part.checks, "planner": None,
        })
        return Bundle(view, self.control_models)

    @property
    def forecaster(self) -> Forecaster:
        return Forecaster(self.models)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bundle folder. See the module docstring for the rules.

        Args:
            path: the folder: new, empty, or a bundle to replace (other files in it are kept).

        Returns:
            The folder's path.

        Raises:
            BundleError: (nothing changed at ``path``) the target would lose data, the
                bundle would not load back, or the disk refuses the write.
        """
        dest = check_target(path, marker=MANIFEST)
        staged = None
        try:
            staged = staging_dir(dest)
            manifest = stored_manifest(self.manifest)
            buf = io.BytesIO()
            state = {f"member_{i}": m.state_dict() for i, m in enumerate(self.models)}
            state.update({f"{CONTROL_PREFIX}{i}": m.state_dict()
                          for i, m in enumerate(self.control_models)})
            torch.save(state, buf)
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
        """Load a bundle folder (any bundle URI: :func:`tracker_sched.load_bundle`).

        Args:
            path: the folder ``save`` wrote (bundles written by 0.1 load too).

        Returns:
            The bundle, its members in eval mode on the CPU.

        Raises:
            BundleError: a missing or corrupt file, a newer schema version, sizes beyond
                :mod:`tracker_sched.limits`, weights that do not fit the config, or
                statistics a planner cannot use: never an untrained or unusable model.
        """
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
        models = [_member(state, f"member_{i}", f"member {i}", MODEL_CLASSES[manifest.kind],
                          manifest.model, wpath, mpath) for i in range(manifest.members)]
        part = manifest.planner.control if manifest.planner is not None else None
        control = [] if part is None else [
            _member(state, f"{CONTROL_PREFIX}{i}", f"control member {i}",
                    MODEL_CLASSES[CONTROL_KIND], part.model, wpath, mpath)
            for i in range(part.members)]
        # Last, so that weights that do not load say why: these load, but are another save's.
        if manifest.weights_sha256 not in (None, hashlib.sha256(weights).hexdigest()):
            raise BundleError(f"{wpath} is not the weights {mpath} was saved with (a save was "
                              "interrupted, or a file was replaced); save the bundle again")
        return cls(manifest, models, control)


def _member(state: dict[str, object], key: str, what: str, cls: type[LatentODE],
            config: ModelConfig, wpath: Path, mpath: Path) -> LatentODE:
    """One member rebuilt from ``state[key]``, its weights checked finite; BundleError if not."""
    sd = state.get(key)
    if not isinstance(sd, dict):
        raise BundleError(f"{wpath} has no weights for {what}; the bundle is corrupt")
    for name, tensor in sd.items():
        if (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
                and not bool(torch.isfinite(tensor).all())):
            raise BundleError(f"{wpath}: {what}'s {name} holds NaN or infinite weights; the "
                              "bundle is corrupt")
    model = cls(config)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"weights of {what} do not fit the model config in {mpath}: {exc}"
                          ) from exc
    model.eval()
    return model


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
