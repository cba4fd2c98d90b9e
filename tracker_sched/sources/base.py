"""The one protocol every tracker adapter implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tracker_sched.schema import RunIssue, RunRecord


@dataclass
class SourceResult:
    """Runs read from a source, and the runs it could not read (with the reason)."""

    runs: list[RunRecord]
    issues: list[RunIssue] = field(default_factory=list)


@runtime_checkable
class Source(Protocol):
    name: str

    def read(self) -> SourceResult:
        """Read every run of the sweep. Unreadable runs become issues, not exceptions."""
        ...
