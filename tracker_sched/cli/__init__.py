"""``tracker-sched``: a thin command line over the library (the entry point is :func:`main`).

Errors print one line (``tracker-sched: error: ...``) and exit with status 1;
bad usage exits with 2 (argparse).
"""

from tracker_sched.cli.commands import read_history
from tracker_sched.cli.main import main
from tracker_sched.cli.parser import build_parser

__all__ = ["build_parser", "main", "read_history"]
