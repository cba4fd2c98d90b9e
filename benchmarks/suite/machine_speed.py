"""How fast the machine trained, now against an earlier run: the same plain runs, side by side.

    python -m benchmarks.suite.machine_speed OLD_RUNS_DIR NEW_RUNS_DIR

Two suite runs (two ``--runs-dir``) train many identical jobs: the same task, schedule,
peak and seed give the same cache key and the same computation (training is
deterministic). Their ``wall_s`` ratio, new over old, is the machine's speed between the
two runs, measured on the suite's own work; it says how much of a change in a whole run's
time came from the machine rather than from the code. Prints JSON: per task and over all,
and under ``same_results`` whether the two runs' results agree (:func:`same_results`): a
change that only moves work around (pools, a pipeline) must leave them all equal.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.suite.jobs import Cache
from benchmarks.suite.tasks import TASKS


def compare(old: Path, new: Path) -> dict[str, Any]:
    """Per task and over all: runs matched, median ratio, summed wall times and their ratio."""
    out: dict[str, Any] = {}
    ratios: list[float] = []
    old_s = new_s = 0.0
    for task in TASKS:
        a, b = Cache(old / task / "jobs.jsonl").done, Cache(new / task / "jobs.jsonl").done
        keys = [k for k in b if k in a and b[k]["kind"] == "run" and a[k]["wall_s"] > 0]
        if not keys:
            continue
        r = [b[k]["wall_s"] / a[k]["wall_s"] for k in keys]
        sa, sb = sum(a[k]["wall_s"] for k in keys), sum(b[k]["wall_s"] for k in keys)
        out[task] = {"runs": len(keys), "median_ratio": round(statistics.median(r), 3),
                     "sum_s_before": round(sa, 1), "sum_s_now": round(sb, 1)}
        ratios += r
        old_s, new_s = old_s + sa, new_s + sb
    if not ratios:
        raise SystemExit(f"no run of {new} matches one of {old}")
    out["all"] = {"runs": len(ratios), "median_ratio": round(statistics.median(ratios), 3),
                  "sum_ratio": round(new_s / old_s, 3)}
    return out


def _outcome(row: dict[str, Any]) -> str:
    return json.dumps([row.get("val"), row.get("test"), row.get("state")])


def same_results(old: Path, new: Path) -> dict[str, Any]:
    """How many of the new run's results equal the earlier run's.

    Plain runs are matched by cache key; advised runs by task, kind and seed (their key
    holds their bundle's creation time); bundles (where both runs have one) by every
    member's weights, bit for bit. Counts, and which ones differ.
    """
    import torch

    from tracker_sched.bundle.folder import Bundle

    out: dict[str, Any] = {"plain_runs": 0, "advised_runs": 0, "bundles": 0, "differ": []}
    for task in TASKS:
        a, b = Cache(old / task / "jobs.jsonl").done, Cache(new / task / "jobs.jsonl").done
        for k, row in b.items():
            if row["kind"] == "run" and k in a:
                out["plain_runs"] += 1
                if _outcome(row) != _outcome(a[k]):
                    out["differ"].append(f"{task} {k}")
        advised_a = {(r["kind"], r["seed"]): r for r in a.values() if r["kind"] != "run"}
        for r in b.values():
            if r["kind"] != "run" and (r["kind"], r["seed"]) in advised_a:
                out["advised_runs"] += 1
                if _outcome(r) != _outcome(advised_a[(r["kind"], r["seed"])]):
                    out["differ"].append(f"{task} {r['kind']} seed {r['seed']}")
        for kind in ("generative", "control"):
            fa, fb = old / task / f"bundle_{kind}", new / task / f"bundle_{kind}"
            if not ((fa / "bundle.json").exists() and (fb / "bundle.json").exists()):
                continue
            out["bundles"] += 1
            ma, mb = Bundle.load(fa).models, Bundle.load(fb).models
            same = len(ma) == len(mb) and all(
                x.state_dict().keys() == y.state_dict().keys()
                and all(torch.equal(x.state_dict()[k], y.state_dict()[k])
                        for k in x.state_dict())
                for x, y in zip(ma, mb, strict=False))
            if not same:
                out["differ"].append(f"{task} bundle_{kind}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite.machine_speed",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("old", type=Path, help="the earlier run's --runs-dir")
    ap.add_argument("new", type=Path, help="the later run's --runs-dir")
    args = ap.parse_args(argv)
    print(json.dumps({**compare(args.old, args.new),
                      "same_results": same_results(args.old, args.new)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
