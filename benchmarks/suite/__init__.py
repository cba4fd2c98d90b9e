"""The multi-task benchmark suite (issue 11): ``python -m benchmarks.suite``.

Each task (``benchmarks.suite.tasks.TASKS``) trains a small model on data made
locally or shipped inside a package, in seconds on one CPU thread. Per task the
suite trains a sweep of the shape users run (schedule families x half-decade
peak lrs x 2 seeds), logs it to a real tracker (an MLflow sqlite store, or W&B
offline files), reads it back through tracker_sched's sources, fits both
bundles, and trains the arms paired on new seeds of one block (``design`` or
``confirm``, disjoint). Everything is cached under ``runs/suite/<task>/`` so a
run resumes where it stopped. The protocol is in ``docs/benchmarks.md``.
"""
