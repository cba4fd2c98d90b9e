"""Every size limit in one place, so that docs/reliability.md can quote them and a change is
made once.

Each bound sits far above what a real run or sweep needs, and far below what would exhaust a
machine: a bad or hostile input (a bundle edited to ``hidden=1e6``, a 10^6-row request, a budget
of 1e21 steps) is refused with a clear error before any work is done on it.
"""

from __future__ import annotations

# Training budgets and steps. A trillion steps is thousands of times the longest runs trained
# today; a larger number is a unit error or garbage, and float64 arithmetic on tau stays exact
# to well below one step up to here.
MAX_STEPS = 10**12

# A recommendation request (the served model, the deployments target, ``recommend``).
MAX_ROWS = 100_000  # logged steps in one request; the planner uses a window of ~100 grid points
MAX_CURRENT_CHARS = 2_000_000  # the JSON of the schedule a run follows now (~40k points)
MAX_SCHEDULE_POINTS = 100_000  # points of that schedule

# What RemoteAdvisor keeps and sends: older rows are thinned (every other one) past this, so a
# long run that logs every step never outgrows a request.
CLIENT_MAX_ROWS = MAX_ROWS // 2

# Bundles, at save and at load: checked before anything is allocated.
MAX_MEMBERS = 64  # ensemble members
MAX_GRID_POINTS = 10_000  # points on the progress grid
MAX_WIDTH = 4_096  # latent_dim, ode_dim, hidden, encoder_hidden
MAX_MANIFEST_BYTES = 64 * 2**20  # bundle.json
MAX_WEIGHTS_BYTES = 2 * 2**30  # weights.pt
