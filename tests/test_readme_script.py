"""The README's "From Python" example runs as a plain script and from standard input (issue 15,
item 10).

Pasted into a script without ``if __name__ == "__main__":``, the fit's worker processes used to
fail to bootstrap ("safe importing of main module") and leak semaphores; the same from standard
input. The example is taken from the README itself, with only the sizes made tiny, the sweep
pointed at the fixture, the MLflow URI replaced by the saved folder, and the names the snippet
assumes (an optimizer, a step, its metrics) defined. The fit keeps its default worker processes
(two members: two processes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import FIXTURE

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240

PRELUDE = f'''\
import torch
from tracker_sched.model.latent import ModelConfig
TINY = dict(max_iterations=3, eval_every=3, batch_size=8, grid_points=40, window=10,
            model=ModelConfig(latent_dim=4, ode_dim=8, hidden=16, encoder_hidden=16))
optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
step, loss, val_acc, current_lr = 10, 1.0, 0.5, 0.1
SWEEP = {str(FIXTURE)!r}
'''


def readme_script() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### 2. A PyTorch loop", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:2]
    code = "\n".join(blocks)
    for old, new in (('FitConfig(ensemble=2)', 'FitConfig(ensemble=2, **TINY)'),
                     ('read_sweep("sweep.jsonl")', "read_sweep(SWEEP)"),
                     ('load_bundle("mlflow:models:/cnn-sched@champion")',
                      'load_bundle("bundle/")')):
        assert old in code, f"the README's example changed: {old!r} is gone"
        code = code.replace(old, new)
    return PRELUDE + code + '\nprint("OK", advisor.lr(step), scheduler.get_last_lr())\n'


@pytest.mark.slow
@pytest.mark.parametrize("how", ["script", "stdin"])
def test_item10_the_readme_example_runs_unguarded(how: str, tmp_path: Path) -> None:
    code = readme_script()
    assert "__main__" not in code
    (tmp_path / "example.py").write_text(code)
    argv = [sys.executable, "example.py"] if how == "script" else [sys.executable, "-"]
    # Its own session, so that a hung pool (the bug: workers respawned for ever) is stopped
    # whole, by the group of the process this test started.
    proc = subprocess.Popen(argv, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(code if how == "stdin" else None, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the README example did not finish in {TIMEOUT_S} s")
    assert proc.returncode == 0, err[-3000:]
    assert out.startswith("OK "), out
    assert "leaked semaphore" not in err and "bootstrapping" not in err
    assert (tmp_path / "bundle" / "bundle.json").is_file()
