"""``python -m benchmarks.suite``: see ``benchmarks.suite.cli``."""

import sys

from benchmarks.suite.cli import main

sys.exit(main())
