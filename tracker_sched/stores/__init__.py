"""Where bundles live: one URI form across the CLI and the API.

=================================  ==========================================
``PATH`` or ``file:PATH``          a bundle folder
``mlflow:models:/NAME@ALIAS``      a registered MLflow model (also ``/VERSION``)
``mlflow:runs:/RUN_ID/bundle``     the bundle logged by an MLflow fit run
``wandb:ENTITY/PROJECT/NAME:ALIAS`` a W&B artifact (``:v3`` or an alias)
=================================  ==========================================

Tracker stores import their tracker lazily: ``load_bundle("dir/")`` needs
neither mlflow nor wandb.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracker_sched.bundle.folder import Bundle


def bundle_path(uri: str | Path, *, dst: str | Path | None = None) -> Path:
    """Resolve a bundle URI to a local folder, downloading from a tracker if needed."""
    s = str(uri)
    if s.startswith("mlflow:"):
        from tracker_sched.stores.mlflow_store import download_bundle

        return download_bundle(s[len("mlflow:"):], dst=dst)
    if s.startswith("wandb:"):
        from tracker_sched.stores.wandb_store import download_bundle as wandb_download

        return wandb_download(s[len("wandb:"):], dst=dst)
    if s.startswith("file:"):
        s = s[len("file:"):]
        if s.startswith("//"):
            s = s[2:]
    return Path(s)


def load_bundle(uri: str | Path) -> Bundle:
    """Load a bundle from any store (see the module docstring). Fails loudly, never guesses.

    A tracker's bundle is downloaded into a temporary folder that is removed once the bundle
    is in memory: repeated loads (a callback per run, a server per request) leave nothing
    behind.

    Args:
        uri: a bundle folder, ``mlflow:models:/NAME@ALIAS`` (or ``/VERSION``),
            ``mlflow:runs:/RUN_ID/PATH``, or ``wandb:ENTITY/PROJECT/NAME:ALIAS``.

    Returns:
        The :class:`~tracker_sched.bundle.folder.Bundle`, its members ready to plan.

    Raises:
        BundleError: nothing loadable is there (a missing or corrupt file, a newer schema,
            a missing model, alias or version), with what was missing.
        MissingDependencyError: the URI's tracker is not installed.
    """
    from tracker_sched.bundle.folder import Bundle

    if str(uri).startswith(("mlflow:", "wandb:")):
        with tempfile.TemporaryDirectory(prefix="tracker-sched-") as tmp:
            return Bundle.load(bundle_path(uri, dst=Path(tmp) / "download"))
    return Bundle.load(bundle_path(uri))
