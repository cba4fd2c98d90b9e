"""The early-stopping benchmark: replayed sweeps, tracker-sched against Optuna's and W&B's
rules, compute against regret (``python -m benchmarks.early_stopping``; see
docs/early-stopping.md)."""
