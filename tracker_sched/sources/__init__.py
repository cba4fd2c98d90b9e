"""Sources read a sweep out of a tracker into :class:`~tracker_sched.schema.RunRecord` objects.

Each tracker has its own module; heavy tracker SDKs are imported only there.
"""

from tracker_sched.sources.base import Source, SourceResult
from tracker_sched.sources.files import FilesSource, read_sweep, write_sweep

__all__ = ["FilesSource", "Source", "SourceResult", "read_sweep", "write_sweep"]
