"""Small real training tasks that ``tracker-sched demo`` runs end to end.

Task modules import their optional dependencies (``mnist1d``) only when they
train; a missing one raises ``MissingDependencyError`` naming the extra.
"""
