"""The top-level surface: a short sorted list of names, each documented (Args, Returns,
Raises), importable without torch until a torch name is used; the 0.1 names that left it
still resolve."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from pydantic import BaseModel

import tracker_sched
from tracker_sched import _compat

PUBLIC = [n for n in tracker_sched.__all__ if not n.startswith("__")]


def test_the_surface_is_short_and_sorted() -> None:
    assert tracker_sched.__all__ == sorted(tracker_sched.__all__)
    assert 12 <= len(PUBLIC) <= 20
    assert set(PUBLIC) <= set(dir(tracker_sched))
    assert not set(PUBLIC) & set(tracker_sched._FORMER)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_is_documented(name: str) -> None:
    obj = getattr(tracker_sched, name)
    doc = inspect.getdoc(obj) or ""
    if inspect.isfunction(obj):
        assert all(part in doc for part in ("Args:", "Returns:", "Raises:")), name
    elif not (issubclass(obj, Exception) and "__init__" not in vars(obj)):
        # The constructor's arguments; a pydantic model's are its fields, documented as
        # "Attributes:" (an "Args:" section there breaks the docs site's --strict build).
        section = "Attributes:" if issubclass(obj, BaseModel) else "Args:"
        assert section in doc, name
    for method in ("observe", "lr", "save", "load"):
        fn = getattr(obj, method, None)
        if inspect.isfunction(fn) or inspect.ismethod(fn):
            mdoc = inspect.getdoc(fn) or ""
            assert "Args:" in mdoc and "Returns:" in mdoc, f"{name}.{method}"


@pytest.mark.parametrize("name", sorted(tracker_sched._FORMER))
def test_a_0_1_top_level_name_still_resolves(name: str) -> None:
    module = __import__(tracker_sched._FORMER[name], fromlist=[name])
    got = getattr(tracker_sched, name)
    if f"tracker_sched.{name}" in _compat.MOVED:
        # `confounding` was a function and a module of that name in 0.1 too: once the old
        # module path is imported, the package attribute is the module (as it was in 0.1).
        assert got in (getattr(module, name), module)
    else:
        assert got is getattr(module, name)


def test_the_package_and_the_remote_client_import_without_torch() -> None:
    code = ("import sys, tracker_sched\n"
            "from tracker_sched import RemoteAdvisor, Recommendation, MetricMap\n"
            "import tracker_sched.advising.serving\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
