"""``tracker-sched``: parse, dispatch to the subcommand, turn an error into one line.

Errors print one line (``tracker-sched: error: ...``) and exit with status 1;
bad usage exits with 2 (argparse).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from tracker_sched.cli.commands import (
    cmd_demo,
    cmd_export,
    cmd_inspect,
    cmd_recommend,
    cmd_suggest_runs,
    cmd_validate,
)
from tracker_sched.cli.common import print
from tracker_sched.cli.fit import cmd_fit
from tracker_sched.cli.parser import build_parser
from tracker_sched.errors import TrackerSchedError
from tracker_sched.util.term import EscapingFilter, escape


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from tracker_sched import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    last = logging.lastResort  # where library warnings go when nobody configured logging
    if last is not None and not any(isinstance(f, EscapingFilter) for f in last.filters):
        last.addFilter(EscapingFilter())
    handlers = {"fit": cmd_fit, "validate": cmd_validate, "export": cmd_export,
                "inspect": cmd_inspect, "recommend": cmd_recommend, "demo": cmd_demo,
                "suggest-runs": cmd_suggest_runs}
    try:
        return handlers[args.command](args)
    except TrackerSchedError as exc:
        # lines=True: a pre-training error lists every run on its own line; the run ids and
        # reasons in it were escaped field by field (preflight.issue_table).
        print(f"tracker-sched: error: {escape(exc, lines=True)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tracker-sched: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
