"""Run ids and names from a tracker cannot drive the terminal (issue 15, item 9).

A run id holding an escape sequence or a right-to-left override used to be printed raw. Every
CLI output path that shows tracker text is run here on such a sweep, in-process and once as a
real subprocess, and must show the characters escaped.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import FIXTURE
from tracker_sched.cli import main
from tracker_sched.fit.generative import FitResult

EVIL = ["\x1b[2J\x1b[31mred", "txt\u202egpj.exe", "a\rb", "bell\x07\x9b31m", "nl\nfake line"]
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e"
                    "\u2060-\u2069\ufeff]")


def _clean(text: str) -> None:
    bad = sorted({hex(ord(c)) for c in UNSAFE.findall(text)})
    assert not bad, f"raw control characters {bad} in {text!r}"


@pytest.fixture(scope="module")
def evil_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture sweep with hostile run ids: one usable run and one excluded per id."""
    lines = FIXTURE.read_text().splitlines()
    out = []
    for i, name in enumerate(EVIL):
        good = json.loads(lines[i])
        good["run_id"] = good["name"] = name
        out.append(json.dumps(good))
        excluded = json.loads(lines[10 + i])
        excluded["run_id"] = excluded["name"] = "x-" + name
        excluded.pop("lr")  # excluded: no learning rate
        out.append(json.dumps(excluded))
    out += lines[20:]
    path = tmp_path_factory.mktemp("evil") / "sweep.jsonl"
    path.write_text("\n".join(out) + "\n")
    return path


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_escape_shows_what_it_replaced() -> None:
    from tracker_sched.util.term import escape

    assert escape("\x1b[31mx") == "\\x1b[31mx"
    assert escape("a\u202eb") == "a\\u202eb"
    assert escape("a\nb") == "a\\nb"
    assert escape("a\nb\tc", lines=True) == "a\nb\tc"
    assert escape("plain ascii, ümlaut, 中文") == "plain ascii, ümlaut, 中文"


def test_item9_validate_and_export_escape_run_ids(evil_sweep: Path, tmp_path: Path) -> None:
    rc, out, err = run("validate", "--path", str(evil_sweep))
    assert rc == 0
    _clean(out + err)
    assert "x-\\x1b[2J\\x1b[31mred" in out and "x-txt\\u202egpj.exe" in out
    rc, out, err = run("export", "--path", str(evil_sweep), "--out", str(tmp_path / "e.jsonl"))
    assert rc == 0
    _clean(out + err)


def test_item9_fit_and_inspect_escape_run_ids(evil_sweep: Path, tmp_path: Path,
                                              tiny_fit: FitResult) -> None:
    rc, out, err = run("fit", "--path", str(evil_sweep), "--out", str(tmp_path / "b"),
                       "--iterations", "2", "--ensemble", "1", "--grid-points", "40",
                       "--window", "10", "--no-plots", "--no-progress", "--workers", "1")
    assert rc == 0, err
    _clean(out + err)
    # inspect a bundle whose best run id is hostile
    m = tiny_fit.bundle.manifest
    sweep = m.sweep.model_copy(update={"best_run_id": EVIL[0]})
    from tracker_sched.bundle.folder import Bundle

    dest = Bundle(m.model_copy(update={"sweep": sweep}), tiny_fit.bundle.models).save(
        tmp_path / "evil-best")
    for args in (["inspect", str(dest)], ["inspect", "--json", str(dest)]):
        rc, out, err = run(*args)
        assert rc == 0
        _clean(out + err)


def test_item9_error_lines_escape_what_they_quote(tmp_path: Path) -> None:
    rc, out, err = run("validate", "--path", str(tmp_path / "no\x1b[31msuch.jsonl"))
    assert rc == 1
    _clean(out + err)
    assert "\\x1b[31m" in err


def test_item9_a_real_terminal_session_sees_no_raw_escape(evil_sweep: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tracker_sched.cli", "validate", "--path",
                           str(evil_sweep)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _clean(proc.stdout + proc.stderr)
    assert "\\u202e" in proc.stdout



def test_item9_warnings_the_cli_lets_through_are_escaped(evil_sweep: Path) -> None:
    """Library warnings reach the terminal through logging's last-resort handler."""
    code = ("import logging, sys\n"
            "from tracker_sched.cli import main\n"
            "assert main(['validate', '--path', sys.argv[1]]) == 0\n"
            "logging.getLogger('tracker_sched.x').warning('run %s diverged', sys.argv[2])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(evil_sweep), EVIL[1]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _clean(proc.stderr)
    assert "txt\\u202egpj.exe diverged" in proc.stderr
