"""Thin a sweep's series for a small test fixture.

    python -m benchmarks.thin_sweep runs/cnn_sweep.jsonl tests/fixtures/cnn_sweep_small.jsonl

Keeps every ``--every``-th log point of each run, plus the first and last
points and any point where a series is non-finite (a divergence must survive
thinning). The kept steps are the same for all of a run's series.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from tracker_sched.schema import ROLES, RunRecord, Series


def thin_record(record: RunRecord, every: int = 3) -> RunRecord:
    """``record`` with each series reduced to the kept steps (see module doc)."""
    if every < 1:
        raise ValueError("every must be >= 1")
    present = [s for s in (record.series(role) for role in ROLES) if s is not None and len(s)]
    keep: set[int] = set()
    for s in present:
        keep.update(s.step[i] for i in range(0, len(s), every))
        keep.update((s.step[0], s.step[-1]))
        keep.update(st for st, v in zip(s.step, s.value, strict=True) if not math.isfinite(v))

    def thin(s: Series | None) -> Series | None:
        if s is None:
            return None
        pairs = [(st, v) for st, v in zip(s.step, s.value, strict=True) if st in keep]
        return Series(step=[p[0] for p in pairs], value=[p[1] for p in pairs])

    return record.model_copy(update={role: thin(record.series(role)) for role in ROLES})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="thin a sweep JSONL for a test fixture")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--every", type=int, default=3)
    ns = parser.parse_args(argv)
    lines = [ln for ln in ns.src.read_text(encoding="utf-8").splitlines() if ln.strip()]
    records = [thin_record(RunRecord.model_validate_json(ln), ns.every) for ln in lines]
    ns.dst.parent.mkdir(parents=True, exist_ok=True)
    ns.dst.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")
    print(f"wrote {ns.dst}: {len(records)} runs, {ns.dst.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
