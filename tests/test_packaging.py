"""The wheel holds the whole package: every module of tracker_sched/ and integrations/ is in
it, and every subpackage imports from it (a subpackage missing from ``pyproject.toml``'s
package list would ship a package that cannot import)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_modules() -> set[str]:
    """Every .py file the package installs, as its path inside the wheel."""
    out = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tracker_sched").rglob("*.py")}
    out |= {"tracker_sched/integrations/" + p.relative_to(ROOT / "integrations").as_posix()
            for p in (ROOT / "integrations").rglob("*.py")}
    return {p for p in out if "__pycache__" not in p}


def test_the_wheel_holds_and_imports_every_subpackage(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves a build/ folder beside the sources, and a stale
    # one would hand the wheel the modules the package list forgot.
    src = tmp_path / "src"
    for name in ("tracker_sched", "integrations"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("tracker_sched-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert source_modules() <= names, sorted(source_modules() - names)
    assert "tracker_sched/py.typed" in names

    packages = sorted(p.removesuffix("/__init__.py").replace("/", ".")
                      for p in source_modules() if p.endswith("/__init__.py"))
    # -S: no site-packages processing, so no editable install can answer for the wheel;
    # the dependencies come from this environment's site-packages, named explicitly.
    code = ("import importlib, sys\n"
            f"for name in {packages!r}:\n"
            "    m = importlib.import_module(name)\n"
            "    assert m.__file__.startswith(sys.argv[1]), (name, m.__file__)\n"
            "print(len(sys.modules))")
    path = os.pathsep.join([str(tmp_path / "site"), sysconfig.get_paths()["purelib"]])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-S", "-c", code, str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
