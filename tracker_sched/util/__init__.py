"""Helpers with no tracker-sched types: terminal escaping, secret redaction, safe folder
writes, spawned worker pools."""
