"""The W&B store: a bundle folder as a W&B Artifact, and back.

``tracker-sched fit ... --register NAME [--alias A] --store wandb`` calls
:func:`log_bundle_artifact`; ``wandb:ENTITY/PROJECT/NAME:ALIAS`` URIs (see
:mod:`tracker_sched.stores`) load through :func:`download_bundle`.

The artifact has its own type, ``tracker-sched-bundle``, so W&B lists bundles
apart from datasets and checkpoints, and metadata that says what it is without
downloading it: the fit's forecast RMSE and rank correlations, the runs used,
the package versions and the bundle schema version.

In offline mode (``WANDB_MODE=offline``) nothing is uploaded: the artifact is
staged (its record in the run's ``.wandb`` file, its files under
``WANDB_DATA_DIR/artifacts/staging``) and uploads when the run is synced with
``wandb sync``. It cannot be downloaded until then.

wandb is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracker_sched._optional import require
from tracker_sched.errors import BundleError, InputError

if TYPE_CHECKING:
    from tracker_sched.bundle.manifest import FitReport

log = logging.getLogger(__name__)

ARTIFACT_TYPE = "tracker-sched-bundle"
FIT_JOB_TYPE = "tracker-sched-fit"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_ALIAS = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _wandb() -> Any:
    return require("wandb")


def bundle_metadata(bundle_dir: Path, report: FitReport | None) -> dict[str, Any]:
    """What the artifact says about itself: schema version, versions, runs, fit quality.

    ``report`` is a :class:`~tracker_sched.fit.report.FitReport`; without one, the
    bundle's own manifest (``bundle.json``) supplies it.
    """
    from tracker_sched.bundle.folder import MANIFEST
    from tracker_sched.bundle.manifest import SCHEMA_VERSION, package_versions
    from tracker_sched.bundle.manifest import FitReport as Report

    try:
        manifest = json.loads((bundle_dir / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {bundle_dir / MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{bundle_dir / MANIFEST} is not a bundle manifest")
    if report is None and isinstance(manifest.get("report"), dict):
        report = Report.model_validate(manifest["report"])
    meta: dict[str, Any] = {
        "bundle_schema_version": manifest.get("schema_version", SCHEMA_VERSION),
        "kind": manifest.get("kind", "latent_ode"),
        "versions": manifest.get("versions") or package_versions(),
    }
    if report is None:
        return meta
    meta.update(runs_total=report.runs_total, runs_used=report.runs_used,
                runs_fit=report.runs_fit, runs_holdout=report.runs_holdout,
                scheme=report.scheme, val_key=report.val_key, direction=report.direction,
                run_issues=len(report.issues), fit_wall_s=report.wall_s)
    if report.holdout is not None:
        rmse: dict[str, float] = {}
        for row in report.holdout.forecast:
            rmse[f"{row.method}.{row.channel}.tau{row.tau:.2f}"] = row.rmse_pooled
        spearman: dict[str, float | None] = {}
        for rank in report.holdout.ranking:
            spearman[f"{rank.method}.tau{rank.tau:.2f}"] = rank.spearman
        meta["forecast_rmse"] = rmse
        meta["rank_spearman"] = spearman
    return meta


def _check_names(name: str, aliases: Sequence[str]) -> list[str]:
    if not _NAME.fullmatch(name):
        raise InputError(f"W&B artifact name {name!r} must be 1-128 letters, digits, '-', '_' "
                         "or '.'")
    bad = [a for a in aliases if not _ALIAS.fullmatch(a)]
    if bad:
        raise InputError(f"W&B artifact aliases {bad} must be letters, digits, '-', '_' or '.' "
                         "(no '/' or ':')")
    return list(dict.fromkeys(aliases))


def log_bundle_artifact(
    bundle_dir: str | Path,
    *,
    name: str,
    aliases: Sequence[str] = (),
    report: FitReport | None = None,
    project: str | None = None,
    entity: str | None = None,
    run: object | None = None,
) -> str:
    """Log a bundle folder as a W&B Artifact; return the URI to load it by.

    Args:
        bundle_dir: a folder written by ``Bundle.save`` (holds ``bundle.json``). Only the
            bundle's own files are logged, secrets in its configs redacted.
        name: the artifact name (letters, digits, ``-``, ``_``, ``.``).
        aliases: e.g. ``["champion"]``; W&B adds ``latest`` itself.
        report: the fit report whose metrics go into the metadata; None reads
            the one in the bundle's manifest.
        project: ``PROJECT`` or ``ENTITY/PROJECT`` of the run started when no
            run is active and ``run`` is None; else ``WANDB_PROJECT``.
        entity: the entity of that run (default: ``WANDB_ENTITY``, else the
            API key's default entity).
        run: log from this ``wandb`` run; None uses the active run
            (``wandb.run``), else starts one (job type ``tracker-sched-fit``)
            and finishes it.

    Returns:
        ``"wandb:ENTITY/PROJECT/NAME:ALIAS"`` with the first alias (else
        ``latest``).

    In offline mode the artifact is only staged: it uploads when the run is
    synced (``wandb sync DIR``), and a warning says so. Until then the URI does
    not resolve.
    """
    folder = Path(bundle_dir)
    from tracker_sched.bundle.folder import MANIFEST

    if not (folder / MANIFEST).is_file():
        raise BundleError(f"{folder} is not a bundle folder (no {MANIFEST}); pass the "
                          "folder that `tracker-sched fit --out` wrote")
    alias_list = _check_names(name, aliases)
    wandb = _wandb()
    active = run if run is not None else wandb.run
    own_run = active is None
    if own_run:
        active = _start_run(wandb, project, entity)
    try:
        from tracker_sched.bundle.folder import upload_copy

        with upload_copy(folder) as staged:  # the bundle's own files, secrets redacted
            artifact = wandb.Artifact(name, type=ARTIFACT_TYPE,
                                      description="tracker-sched bundle (latent-ODE sweep model)",
                                      metadata=bundle_metadata(staged, report))
            artifact.add_dir(str(staged))  # copied to wandb's staging area here
            active.log_artifact(artifact, aliases=alias_list)  # type: ignore[union-attr]
        uri_entity = (getattr(active, "entity", "") or entity
                      or os.environ.get("WANDB_ENTITY", ""))
        uri_project = getattr(active, "project", "") or (project or "").split("/")[-1]
        if getattr(active, "offline", False):
            log.warning(
                "W&B is offline: artifact %r is staged in the run's folder and uploads when "
                "the run is synced (`wandb sync %s`); until then it cannot be downloaded",
                name, getattr(getattr(active, "settings", None), "sync_dir", "<run dir>"))
    finally:
        if own_run:
            active.finish()  # type: ignore[union-attr]
    where = f"{uri_entity}/{uri_project}" if uri_entity else uri_project
    return f"wandb:{where}/{name}:{alias_list[0] if alias_list else 'latest'}"


def _start_run(wandb: Any, project: str | None, entity: str | None) -> Any:
    target = project or os.environ.get("WANDB_PROJECT")
    if not target:
        raise InputError("no W&B project to log the bundle to: pass --project ENTITY/PROJECT "
                         "(or project=) or set WANDB_PROJECT")
    if "/" in target:
        entity_part, target = target.split("/", 1)
        entity = entity or entity_part
    return wandb.init(project=target, entity=entity or None, job_type=FIT_JOB_TYPE,
                      settings=wandb.Settings(silent=True))


def download_bundle(ref: str, dst: str | Path | None = None) -> Path:
    """Download the bundle artifact ``ENTITY/PROJECT/NAME:ALIAS``; return its local folder.

    Inside a live run this is ``wandb.run.use_artifact(ref)``, so the run's
    lineage shows which bundle advised it; outside one, ``wandb.Api().artifact``.
    ``dst`` defaults to a new temporary folder. Any failure (unknown artifact,
    no server, offline mode, no ``bundle.json`` inside) is a BundleError naming
    ``ref``.
    """
    from tracker_sched.bundle.folder import MANIFEST

    ref = ref.strip()
    if ref.count("/") > 2 or ":" not in ref.rsplit("/", 1)[-1]:
        raise BundleError(f"W&B bundle reference {ref!r} must be ENTITY/PROJECT/NAME:ALIAS "
                          "(e.g. my-team/cnn/lr-model:champion)")
    wandb = _wandb()
    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="tracker-sched-"))
    target.mkdir(parents=True, exist_ok=True)
    try:
        if wandb.run is not None:
            artifact = wandb.run.use_artifact(ref, type=ARTIFACT_TYPE)
        else:
            artifact = wandb.Api().artifact(ref, type=ARTIFACT_TYPE)
        local = Path(artifact.download(root=str(target)))
    except Exception as exc:  # wandb raises CommError, ValueError, UsageError...
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise BundleError(f"cannot download W&B bundle {ref!r}: {msg}") from exc
    if not (local / MANIFEST).is_file():
        raise BundleError(f"W&B artifact {ref!r} holds no tracker-sched bundle (no {MANIFEST})")
    return local
