"""Sweep design: how confounded a sweep is, and the runs that would break the tie."""
