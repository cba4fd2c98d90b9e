"""``python -m tracker_sched.cli``."""

import sys

from tracker_sched.cli.main import main

sys.exit(main())
