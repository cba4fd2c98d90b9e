"""Reading and checking runs: validation, preflight, the progress grid, the sweep summary."""
