"""Advising a live run: the plan follower, the local and remote advisors, the wire format.

Importing this package imports nothing else: the remote advisor must not need torch.
"""
