"""Bundles in MLflow: a registered pyfunc model with an alias, and its way back.

``register_bundle`` logs the bundle folder inside a fit run as an MLflow
pyfunc model (:mod:`tracker_sched.stores.mlflow_pyfunc`, so ``mlflow models
serve`` and the deployments target answer recommendations), with the fit's
headline metrics (``fit.*``), the full report as ``report.json`` and ``report.md``
and plots, registers it under a name and sets an alias. ``download_bundle`` takes
``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/PATH`` back to a
local bundle folder; anything it cannot find is a :class:`~tracker_sched.errors.BundleError`
that names it.

Both follow MLflow's own tracking URI resolution (``MLFLOW_TRACKING_URI``,
else the embedded ``sqlite:///<cwd>/mlflow.db``); ``register_bundle`` takes an
explicit ``tracking_uri`` for the duration of the call only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tracker_sched._optional import require
from tracker_sched.bundle.folder import MANIFEST, Bundle, upload_copy
from tracker_sched.bundle.manifest import BundleManifest, FitReport
from tracker_sched.errors import BundleError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("tracker_sched.stores.mlflow")

DEFAULT_EXPERIMENT_ID = "0"  # every MLflow store's "Default" experiment
MODEL_NAME = "bundle"  # the logged model's name: runs:/RUN_ID/bundle addresses it
_MODELS_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_MODELS_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")
_RUNS = re.compile(r"^runs:/(?P<run>[^/]+)(?:/(?P<path>.*))?$")


def _mlflow() -> ModuleType:
    return require("mlflow")


@contextlib.contextmanager
def _tracking_uri(uri: str | None) -> Iterator[None]:
    """Use ``uri`` for the block only, then restore MLflow's own resolution unchanged."""
    if uri is None:
        yield
        return
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield


def _pip_requirements() -> list[str]:
    # Explicit, so MLflow does not load the model in a subprocess to infer them (seconds).
    reqs = []
    for pkg in ("tracker-sched", "mlflow", "torch", "torchdiffeq", "pydantic", "numpy",
                "pandas"):
        try:
            reqs.append(f"{pkg}=={metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _experiment_id(client: MlflowClient, experiment: str | None) -> str | None:
    if experiment is None:
        mlflow = _mlflow()
        if mlflow.active_run() is not None:
            return None  # nested in the caller's run, in its experiment
        # MLflow's active experiment is process-global and outlives a change of tracking
        # URI: an id set against another store would fail here. Use it only if this
        # store has it, else the store's default experiment.
        from mlflow.exceptions import MlflowException
        from mlflow.tracking.fluent import _get_experiment_id

        try:
            # Inside the try: MLFLOW_EXPERIMENT_ID naming an id this store lacks raises here.
            active = _get_experiment_id()
            if active is not None and client.get_experiment(active) is not None:
                return None
        except MlflowException as exc:
            log.warning("MLflow's active experiment is not in %s (%s); using its default "
                        "experiment", mlflow.get_tracking_uri(), exc)
        return DEFAULT_EXPERIMENT_ID
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(experiment))


def register_bundle(
    bundle_dir: str | Path,
    *,
    name: str,
    alias: str | None = None,
    report: FitReport | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    plots: Sequence[Path] = (),
) -> str:
    """Log a bundle as a registered pyfunc model in a new fit run; return its URI.

    Args:
        bundle_dir: a saved bundle folder (loaded first: a broken bundle is never registered).
            Only the bundle's own files are stored, secrets in its configs redacted: never
            another file that lies in the folder.
        name: the registered model's name.
        alias: set on the new version (e.g. ``champion``); without it the URI names the version.
        report: the fit report to log (default: the one in the bundle's manifest).
        experiment: the fit run's experiment (created if missing); default: MLflow's active one.
        tracking_uri: for this call only; default: MLflow's own resolution.
        plots: image files to log under ``plots/`` (``bundle_dir/forecast.png`` is added
            when present).

    Returns:
        ``"mlflow:models:/NAME@ALIAS"``, or ``"mlflow:models:/NAME/VERSION"`` without alias.
    """
    _mlflow()
    root = Path(bundle_dir)
    manifest = Bundle.load(root).manifest
    report = report or manifest.report
    with upload_copy(root) as staged:  # the bundle's own files, secrets redacted
        return _register(staged, root, manifest, name=name, alias=alias, report=report,
                         experiment=experiment, tracking_uri=tracking_uri, plots=plots)


def _register(staged: Path, root: Path, manifest: BundleManifest, *, name: str,
              alias: str | None, report: FitReport, experiment: str | None,
              tracking_uri: str | None, plots: Sequence[Path]) -> str:
    import mlflow
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tracker_sched.stores.mlflow_describe import (
        describe_registration,
        fit_params,
        headline_metrics,
        report_markdown,
    )
    from tracker_sched.stores.mlflow_pyfunc import (
        BUNDLE_ARTIFACT,
        TrackerSchedModel,
        input_example,
        model_signature,
    )

    images = [Path(p) for p in plots]
    if (root / "forecast.png").is_file() and root / "forecast.png" not in images:
        images.append(root / "forecast.png")
    try:
        with _tracking_uri(tracking_uri):
            client = MlflowClient()
            with mlflow.start_run(
                experiment_id=_experiment_id(client, experiment),
                run_name=f"tracker-sched fit {name}",
                nested=mlflow.active_run() is not None,
                tags={"tracker_sched.kind": "fit", "tracker_sched.model": name},
            ):
                mlflow.log_params({
                    "grid_points": manifest.grid_points, "window": manifest.window,
                    "members": manifest.members, "val_key": manifest.metrics.val_metric,
                    "direction": manifest.metrics.direction,
                    "best_run_id": manifest.sweep.best_run_id,
                    **fit_params(manifest, report),
                })
                mlflow.log_metrics(headline_metrics(report))
                active = mlflow.active_run()
                run_id = str(active.info.run_id) if active is not None else None
                mlflow.log_dict(report.model_dump(mode="json"), "report.json")
                mlflow.log_text(report_markdown(manifest, report), "report.md")
                for image in images:
                    mlflow.log_artifact(str(image), "plots")
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME, python_model=TrackerSchedModel(),
                    artifacts={BUNDLE_ARTIFACT: str(staged)}, signature=model_signature(),
                    input_example=input_example(),
                    registered_model_name=name, pip_requirements=_pip_requirements(),
                )
            version = str(info.registered_model_version)
            client.set_model_version_tag(name, version, "tracker_sched.created_at",
                                         manifest.created_at)
            if run_id is not None:
                describe_registration(client, name, version, run_id, manifest, report)
            if alias:
                client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        raise BundleError(f"could not register the bundle as MLflow model {name!r}: "
                          f"{exc.message}") from exc
    uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    log.info("registered %s (version %s)", uri, version)
    return "mlflow:" + uri


def _check_exists(client: MlflowClient, ref: str) -> None:
    """Ask for the named thing first, so that a miss says what is missing."""
    from mlflow.exceptions import MlflowException

    where = f"in the MLflow store {_mlflow().get_tracking_uri()}"
    try:
        if m := _MODELS_ALIAS.match(ref):
            name, alias = m["name"], m["alias"]
            model = _registered_model(client, name, where)
            try:
                client.get_model_version_by_alias(name, alias)
            except MlflowException as exc:
                have = ", ".join(sorted(model.aliases)) or "none"
                raise BundleError(f"registered model {name!r} has no alias {alias!r} "
                                  f"(its aliases: {have}) {where}") from exc
        elif m := _MODELS_VERSION.match(ref):
            name, version = m["name"], m["version"]
            _registered_model(client, name, where)
            try:
                client.get_model_version(name, version)
            except MlflowException as exc:
                raise BundleError(f"registered model {name!r} has no version {version} "
                                  f"{where}") from exc
        elif m := _RUNS.match(ref):
            try:
                client.get_run(m["run"])
            except MlflowException as exc:
                raise BundleError(f"no MLflow run {m['run']!r} {where}") from exc
        else:
            raise BundleError(
                f"not an MLflow bundle reference: {ref!r}; use models:/NAME@ALIAS, "
                "models:/NAME/VERSION or runs:/RUN_ID/PATH"
            )
    except MlflowException as exc:  # the store itself is unreachable or refuses
        raise BundleError(f"cannot look up {ref} {where}: {exc.message}") from exc


def _registered_model(client: MlflowClient, name: str, where: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        raise BundleError(f"no registered model {name!r} {where}") from exc


def _bundle_in(path: Path, ref: str) -> Path:
    """The bundle folder inside what was downloaded: the folder itself, or a pyfunc's artifact."""
    if (path / MANIFEST).is_file():
        return path
    mlmodel = path / "MLmodel"
    if mlmodel.is_file():
        import yaml

        conf = yaml.safe_load(mlmodel.read_text()) or {}
        artifacts = conf.get("flavors", {}).get("python_function", {}).get("artifacts", {})
        rel = artifacts.get("bundle", {}).get("path") if isinstance(artifacts, dict) else None
        if isinstance(rel, str) and (path / rel / MANIFEST).is_file():
            return path / rel
    raise BundleError(f"{ref} holds neither a tracker-sched bundle nor a model logged by "
                      "register_bundle (no bundle.json, no 'bundle' artifact)")


def download_bundle(ref: str, dst: str | Path | None = None) -> Path:
    """Download a bundle from MLflow; return the local bundle folder.

    ``ref`` is ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or
    ``runs:/RUN_ID/PATH`` (``runs:/RUN_ID/bundle`` is the model a fit run
    logged; a plain bundle folder logged as run artifacts works too). ``dst``
    defaults to a new temporary folder. Raises BundleError naming what is missing.
    """
    _mlflow()
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ref = ref.strip()
    _check_exists(MlflowClient(), ref)
    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="tracker-sched-"))
    target.mkdir(parents=True, exist_ok=True)
    try:
        local = download_artifacts(artifact_uri=ref, dst_path=str(target))
    except MlflowException as exc:
        raise BundleError(f"cannot download {ref}: {exc.message}") from exc
    except OSError as exc:
        raise BundleError(f"cannot download {ref}: {exc}") from exc
    return _bundle_in(Path(local), ref)
