"""The suite's outputs: ``suite.json`` (one section per block), a table, a plot per task.

Running some tasks of a block replaces those tasks' sections and keeps the
others, so tasks can run one after another; the pooled figures are recomputed
over every task the block holds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.suite import stats

GAIN_ARMS = ("a'", "q", "sf", "o", "g", "c", "auto")
REFINED = "a'"
AUTO_ARMS = {"best": "a", "generative": "g", "control": "c"}


def auto_arm(t: dict[str, Any]) -> dict[str, Any]:
    """The "auto" arm of a task: per seed, the result of the arm the shipped rule
    (``tracker_sched.planning.auto.DEFAULT_RULE``) picks from the task's evidence. No extra
    runs: it is (a), (g) or (c). The rule was chosen on the design block's tasks
    (``benchmarks/suite/auto_rule.py``): on that block it is in-sample; the held-out figures
    are in ``auto_rule.json``."""
    from tracker_sched.planning.auto import DEFAULT_RULE, AutoEvidence, decide

    mode, reason = decide(AutoEvidence.from_record(t["evidence"]), DEFAULT_RULE)
    src = t["arms"][AUTO_ARMS[mode]]
    out = {"name": "auto", "picks": AUTO_ARMS[mode], "reason": reason,
           "rule": DEFAULT_RULE.label(), "test": list(src["test"]),
           "test_mean": src["test_mean"], "diverged": src.get("diverged", 0)}
    out["gain"] = stats.paired(stats.gains(out["test"], t["arms"]["a"]["test"], t["direction"]))
    o = t["arms"]["o"]["gain"]["mean"]
    out["headroom_share"] = stats.headroom_share(out["gain"]["mean"], o)
    return out


def with_auto(tasks: dict[str, Any]) -> dict[str, Any]:
    """Every task with its "auto" arm (re)computed."""
    return {name: {**t, "arms": {**t["arms"], "auto": auto_arm(t)}} for name, t in tasks.items()}


def refresh(path: Path) -> None:
    """Recompute every block's "auto" arm and pooled rows in ``path`` (no training)."""
    doc = json.loads(path.read_text())
    for block in doc.get("blocks", {}).values():
        block["tasks"] = with_auto(block["tasks"])
        block["pooled"] = pooled(block["tasks"])
    path.write_text(json.dumps(doc, indent=1, default=_json_default, allow_nan=True))


def pooled(tasks: dict[str, Any]) -> dict[str, Any]:
    """Per arm: every task's per-seed gains over (a) pooled, over all tasks and over the
    accuracy tasks alone (one unit: points), and the oracle headroom each arm captured."""
    out: dict[str, Any] = {}
    for arm in GAIN_ARMS:  # a task measured before an arm existed is left out of its rows
        per = {name: stats.gains(t["arms"][arm]["test"], t["arms"]["a"]["test"], t["direction"])
               for name, t in tasks.items() if arm in t["arms"]}
        acc = {k: v for k, v in per.items() if tasks[k]["direction"] == "max"}
        out[arm] = {"all_tasks": stats.pooled(per) if per else None,
                    "accuracy_tasks": stats.pooled(acc) if acc else None,
                    "tasks": sorted(per)}
    shares = {}
    for arm in ("a'", "q", "sf", "g", "c", "auto"):
        shares[arm] = {name: t["arms"][arm].get("headroom_share") for name, t in tasks.items()
                       if arm in t["arms"]}
    out["headroom_share"] = shares
    return out


def merge(path: Path, block: str, section: dict[str, Any], tasks: dict[str, Any]) -> dict[str, Any]:
    """Write ``tasks`` into ``path``'s ``block`` section (other tasks kept); return the block."""
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    doc.setdefault("blocks", {})
    old = doc["blocks"].get(block, {})
    merged_tasks = with_auto({**old.get("tasks", {}), **tasks})
    out = {**old, **section, "tasks": merged_tasks, "pooled": pooled(merged_tasks)}
    doc["blocks"][block] = out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=_json_default, allow_nan=True))
    return out


def _json_default(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _ci(g: dict[str, Any] | None) -> str:
    if g is None:
        return "-"
    lo, hi = g["lo"], g["hi"]
    if math.isnan(lo):
        return f"{g['mean']:+.2f}"
    return f"{g['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] {g['wins']}/{g['losses']}"


def table(block_report: dict[str, Any], block: str) -> str:
    """The block's per-task table (gains over (a), 95% t intervals, wins/losses), the
    pooled rows, and each task's evidence in one line."""
    tasks = block_report["tasks"]
    head = ["task", "unit", "n", "(a) mean", *[f"({a})-(a)" for a in GAIN_ARMS]]
    lines = [f"== {block} block: test metric, paired gains over the sweep's best (a)",
             " | ".join(head), "|".join("---" for _ in head)]
    for name, t in tasks.items():
        arms = t["arms"]
        scale = 100.0 if t["direction"] == "max" else 1.0
        cells = [name, t["unit"], str(len(t["seeds"])), f"{scale * arms['a']['test_mean']:.3f}",
                 *[_ci(arms[a]["gain"] if a in arms else None) for a in GAIN_ARMS]]
        lines.append(" | ".join(cells))
    p = pooled(tasks)  # recomputed: a block written before an arm existed has no row for it
    lines.append(" | ".join(["pooled, all tasks", "mixed", "", "",
                             *[_ci(p[a]["all_tasks"]) for a in GAIN_ARMS]]))
    if any(p[a]["accuracy_tasks"] for a in GAIN_ARMS):
        lines.append(" | ".join(["pooled, accuracy tasks", "points", "", "",
                                 *[_ci(p[a]["accuracy_tasks"]) for a in GAIN_ARMS]]))
    lines.append("")
    for name, t in tasks.items():
        ev = t["evidence"]
        fc = ev["forecast"].get("taus", {}).get("0.5", {})
        beats = fc.get("model_beats", {})
        ctl = ev["control"]
        rank = ctl["ranking_mean"]
        ch = t["choices"]
        lines.append(
            f"{name}: choices a={_cfg(ch['a'])} a'={_cfg(ch[REFINED])}"
            f" q={_cfg(ch['q'])} sf={_sf(ch)} o={_cfg(ch['o'])}; "
            f"forecast tau 0.5 beats "
            f"nearest/last (median RMSE) {beats.get('nearest_median_rmse')}/"
            f"{beats.get('last_median_rmse')}, spearman model "
            f"{_num(fc.get('model', {}).get('spearman'))} nearest "
            f"{_num(fc.get('nearest', {}).get('spearman'))}; control flags {ctl['flags']} "
            f"ranking {_num(rank)}; confounding learnable {ev['confounding']['learnable']}; "
            f"g status {t['arms']['g']['status']}, c status {t['arms']['c']['status']}")
    return "\n".join(lines)


def _cfg(c: dict[str, Any]) -> str:
    return f"{c['schedule']}@{c['peak_lr']:.3g}"


def _sf(choices: dict[str, Any]) -> str:
    sf = choices.get("sf")
    if sf is None:
        return "-"
    return _cfg(sf) + (" (at the sweep's edge)" if sf.get("at_edge") else "")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def plot(path: Path, name: str, t: dict[str, Any], block: str) -> None:
    """Arms' gains over (a) with 95% intervals, the oracle's as the ceiling; the advised
    runs' lr next to (a)'s schedule."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed")
        return
    from benchmarks.suite.loop import schedule

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    arms = [a for a in ("a'", "q", "sf", "g", "c", "auto") if a in t["arms"]]
    for i, arm in enumerate(arms):
        g = t["arms"][arm]["gain"]
        err = 0.0 if math.isnan(g["lo"]) else g["mean"] - g["lo"]
        ax.errorbar([i], [g["mean"]], yerr=[[err], [err]], fmt="o", capsize=5,
                    color=f"C{i}")
        ax.scatter([i] * len(t["arms"][arm]["test"]),
                   stats.gains(t["arms"][arm]["test"], t["arms"]["a"]["test"], t["direction"]),
                   s=8, alpha=0.35, color=f"C{i}")
    o = t["arms"]["o"]["gain"]
    ax.axhline(o["mean"], ls="--", color="k", lw=1, label=f"oracle {o['mean']:+.2f}")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(arms)), [f"({a}) {t['arms'][a]['name']}" for a in arms],
                  rotation=15, fontsize=8)
    ax.set(ylabel=f"gain over (a), {t['unit']}",
           title=f"{name}, {block} block ({len(t['seeds'])} seeds)")
    ax.legend(fontsize=8)
    steps = t["steps"]
    a = t["choices"]["a"]
    lr_a = schedule(a["schedule"], steps, a["peak_lr"])
    ax2.plot(range(steps), [lr_a(k) for k in range(steps)], color="k", lw=2,
             label=f"(a) {_cfg(a)}")
    for arm, colour in (("g", "C2"), ("c", "C3")):
        for j, seed in enumerate(t["seeds"][:4]):
            row = t["arms"][arm].get("lr_curves", {}).get(str(seed))
            if row:
                ax2.plot(row[0], row[1], color=colour, alpha=0.6, lw=1,
                         label=f"({arm}) advised" if j == 0 else None)
    ax2.set_yscale("log")
    ax2.set(xlabel="step", ylabel="lr", title="schedules (first 4 seeds)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
