"""Tracker and framework integrations, installed as ``tracker_sched.integrations``.

Each subpackage imports its tracker lazily (MLflow skips a plugin whose module
imports mlflow at its top level: a circular import at MLflow start-up).
"""
