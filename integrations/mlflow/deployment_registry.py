"""The local state of the ``tracker-sched`` deployments target: names, the registry, bundle copies.

A deployment's name, model URI and a downloaded copy of its bundle are recorded in
``$TRACKER_SCHED_HOME/deployments.json`` (default ``~/.tracker_sched``), the copies under
``$TRACKER_SCHED_HOME/deployments/NAME``. Everything here guards that state: a name can only
name a folder under the home, the registry is written atomically, and a bundle is recorded
only once it loads. :mod:`tracker_sched.integrations.mlflow.deployments` is MLflow's side
(the client class, ``predict``); it imports this module, never the other way.

Like that module, this one imports mlflow (and click) only inside functions: MLflow imports
its plugins while importing itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from tracker_sched.errors import InputError, TrackerSchedError

TARGET = "tracker-sched"
FLAVOR = "tracker_sched"
_FLAVORS = (None, "", FLAVOR, TARGET, "python_function", "pyfunc")
REGISTRY_FILE = "deployments.json"
ENV_HOME = "TRACKER_SCHED_HOME"


def home() -> Path:
    """Where local state lives: ``$TRACKER_SCHED_HOME``, else ``~/.tracker_sched``."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".tracker_sched")


@functools.cache
def error_class() -> type[InputError]:
    import click

    class DeploymentError(InputError, click.ClickException):
        """A tracker-sched deployment error; the ``mlflow`` CLI prints it as one line."""

        def __init__(self, message: str) -> None:
            InputError.__init__(self, message)
            click.ClickException.__init__(self, message)

    DeploymentError.__module__ = __name__
    return DeploymentError


def fail(message: str) -> NoReturn:
    raise error_class()(message)


# ---------------------------------------------------------------------------- names and paths
# A name becomes a folder under the home: letters, digits, '.', '_' and '-', starting with a
# letter or digit, no '..'. Nothing else can reach outside (no '/', '\\', NUL, '..', '-rf').
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        fail(f"deployment name {name!r} is not allowed: use 1-100 letters, digits, '.', '_' "
             "or '-', starting with a letter or digit (it names a folder under "
             f"{home() / 'deployments'})")
    return name


def deployments_root() -> Path:
    return home() / "deployments"


def inside_home(path: str | Path, name: str) -> Path:
    """A recorded bundle folder, refused unless it lies under the home's deployments folder
    (the registry is a JSON file anyone can edit: delete must never follow it elsewhere)."""
    resolved = Path(path).resolve()
    root = deployments_root().resolve()
    if root not in resolved.parents:
        fail(f"deployment {name!r} records its bundle at {path}, outside {root}; the "
             f"registry {registry_path()} was edited by hand: fix or remove that entry")
    return resolved


# ---------------------------------------------------------------------------- the registry
def registry_path() -> Path:
    return home() / REGISTRY_FILE


def read_registry() -> dict[str, dict[str, Any]]:
    path = registry_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"cannot read the deployments registry {path}: {exc}; delete it to start afresh")
    if not isinstance(data, dict):
        fail(f"the deployments registry {path} is not a JSON object; delete it to start afresh")
    return data


def write_registry(data: Mapping[str, Mapping[str, Any]]) -> None:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".deployments-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # a full disk leaves no half-written file behind
        raise


def registry_entry(name: str) -> dict[str, Any]:
    registry = read_registry()
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        fail(f"no tracker-sched deployment named {name!r} (known: {known}); create it with "
             f"`mlflow deployments create -t {TARGET} --name {name} -m models:/MODEL@ALIAS`")
    return registry[name]


@contextlib.contextmanager
def _tracking_uri(uri: str | None) -> Iterator[None]:
    if not uri:
        yield
        return
    # MLflow's own helper restores the unset state too (set_tracking_uri would pin a value).
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield


def cache_bundle(name: str, model_uri: str, tracking_uri: str | None) -> dict[str, Any]:
    """Download (or copy) the bundle into the deployment's own folder; return its record."""
    from tracker_sched.bundle.folder import Bundle
    from tracker_sched.stores import bundle_path

    if not model_uri:
        fail("a model URI is required: -m models:/NAME@ALIAS (or runs:/, or a bundle folder)")
    # MLflow's own URI forms go to the MLflow store; anything else is any bundle URI.
    is_mlflow = model_uri.split(":", 1)[0] in ("models", "runs")
    uri = "mlflow:" + model_uri if is_mlflow else model_uri
    folder = deployments_root() / check_name(name)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=_ensure(deployments_root())))
    try:
        with _tracking_uri(tracking_uri):
            local = bundle_path(uri, dst=staging / "download")
        manifest = Bundle.load(local).manifest  # never record a bundle that does not load
        shutil.copytree(local, staging / "bundle")
        if folder.exists() or folder.is_symlink():
            shutil.rmtree(inside_home(folder, name))  # a link out of the home is refused
        (staging / "bundle").rename(folder)
    except TrackerSchedError as exc:
        fail(f"cannot deploy {model_uri}: {exc}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"name": name, "model_uri": model_uri, "flavor": FLAVOR,
            "bundle_path": str(folder), "bundle_version": manifest.created_at,
            "tracking_uri": tracking_uri}


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_flavor(flavor: str | None) -> None:
    if flavor not in _FLAVORS:
        fail(f"flavor {flavor!r} is not served by the {TARGET} target; leave it out "
             f"(or use {FLAVOR!r})")
