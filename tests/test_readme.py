"""CI must prove the README: .ci/run runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = _bash_blocks(readme)
    test_cmd = next(b for b in blocks if "pytest" in b and b.startswith("python3 -m venv"))
    ci_lines = [
        line for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci_lines == [test_cmd]
    assert "mkdocs build --strict" in test_cmd  # the docs site is built, warnings fail it


def test_readme_main_command_runs_the_demo() -> None:
    from tracker_sched.cli import build_parser

    blocks = _bash_blocks((ROOT / "README.md").read_text())
    main_cmd = next(b for b in blocks if b.endswith("tracker-sched demo"))
    assert main_cmd.startswith("python3 -m venv .venv")
    assert '-e ".[demo]"' in main_cmd
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib before Python 3.11
    demo = re.search(r"^demo = \[(.*)\]$", pyproject, flags=re.M)
    assert demo is not None, "pyproject.toml has no demo extra"
    assert all(dep in demo.group(1) for dep in ("mnist1d", "mlflow", "plots"))
    assert '"tracker_sched.tasks"' in pyproject
    assert build_parser().parse_args(["demo"]).command == "demo"
