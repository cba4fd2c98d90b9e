"""Choosing the ``--mode auto`` rule across tasks, leave one task out.

    python -m benchmarks.suite.auto_rule [--suite benchmarks/results/suite.json]
                                         [--block design] [--refresh-suite]

Reads the suite's design block (``blocks.<block>.tasks.<task>``: each task's per-seed test
results of the arms a (the sweep's best), g (generative), c (control) and the task's
``evidence``, all computed from the task's sweep alone) and

1. enumerates a small family of rules (:class:`tracker_sched.planning.auto.AutoRule`):
   control trusted when its checks pass and its counterfactual ranking mean (and worst)
   clear a threshold, generative trusted when its forecasts win a share of the
   comparisons with the baselines, which one wins when both pass; "best" otherwise;
2. scores a rule on a set of tasks by the mean, over tasks, of the standardised gain of the
   arm it picks over (a): the paired mean gain divided by the paired gains' sd (scale-free:
   accuracy points and the regression task's percent are not one unit). The arm (a) scores
   0. A rule that picks a planner anywhere must beat "always best" by ``MARGIN``: "best"
   is the default, a planner must earn its trust;
3. leave one task out: chooses the rule on the other tasks, applies it to the held-out
   task's evidence, reports the held-out task's gain of the picked arm (per task and
   pooled over tasks);
4. chooses the rule on all tasks, and ships it only if the choosing itself is validated:
   its leave-one-task-out results (mean held-out standardised gain) must beat "always
   best" (0). Otherwise a rule chosen this way does not carry over to a task it did not
   see, and the shipped rule is "always best". What ships is
   ``tracker_sched.planning.auto.DEFAULT_RULE``; ``auto_rule.json`` records it under
   ``selected`` and ``tests/planning/test_auto.py`` checks the two agree. Rerun this
   command whenever ``suite.json`` gains a task.

Writes ``benchmarks/results/auto_rule.json`` and prints the table. ``--refresh-suite``
also rewrites the block's "auto" arm and pooled rows in ``suite.json``
(:func:`benchmarks.suite.report.with_auto`, no training).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.suite import stats
from tracker_sched.planning.auto import DEFAULT_RULE, AutoEvidence, AutoRule, decide

ARM_OF_MODE = {"best": "a", "generative": "g", "control": "c"}
MARGIN = 0.1  # standardised gain a planner-picking rule must add over "always best"

CONTROL_MEAN = (None, 0.0, 0.3, 0.5, 0.7, 0.9)
CONTROL_WORST = (None, 0.0, 0.4)
GENERATIVE_SKILL = (None, 0.5, 0.625, 0.75, 0.875, 1.0)


def family() -> list[AutoRule]:
    """The candidate rules, without duplicates (a planner switched off ignores its other
    thresholds); "always best" first."""
    out: dict[str, AutoRule] = {}
    for cm, cw, gs, prefer in itertools.product(CONTROL_MEAN, CONTROL_WORST, GENERATIVE_SKILL,
                                                ("control", "generative")):
        if cm is None and cw is not None:
            continue
        if (cm is None or gs is None) and prefer == "generative":
            continue  # order matters only when both planners can pass
        rule = AutoRule(control_min_ranking_mean=cm, control_min_ranking_worst=cw,
                        generative_min_skill=gs, prefer=prefer)
        out.setdefault(rule.label(), rule)
    return sorted(out.values(), key=_caution)


def _caution(rule: AutoRule) -> tuple[int, float, float]:
    """Sort key: rules that trust fewer planners, on stronger evidence, come first."""
    on = (rule.control_min_ranking_mean is not None) + (rule.generative_min_skill is not None)
    return (on, -(rule.control_min_ranking_mean if rule.control_min_ranking_mean is not None
                  else 9.0), -(rule.generative_min_skill or 9.0))


def arm_gains(task: dict[str, Any], arm: str) -> list[float]:
    """Per-seed gain of ``arm`` over (a) in the task's unit (0 for (a) itself)."""
    return stats.gains(task["arms"][arm]["test"], task["arms"]["a"]["test"], task["direction"])


def standardised(gains: list[float]) -> float:
    """Mean over sd of paired gains (0 when every gain is 0; a constant gain counts as its
    sign times 10, a large effect)."""
    if not any(gains):
        return 0.0
    mean = statistics.fmean(gains)
    sd = statistics.stdev(gains) if len(gains) > 1 else math.nan
    if not sd > 0:
        return math.copysign(10.0, mean)
    return mean / sd


def pick(rule: AutoRule, task: dict[str, Any]) -> tuple[str, str]:
    """(arm, reason) the rule picks on the task's evidence."""
    mode, reason = decide(AutoEvidence.from_record(task["evidence"]), rule)
    return ARM_OF_MODE[mode], reason


def score(rule: AutoRule, tasks: dict[str, dict[str, Any]]) -> float:
    """Mean standardised gain over ``tasks`` of the arms ``rule`` picks."""
    return statistics.fmean(standardised(arm_gains(t, pick(rule, t)[0])) for t in tasks.values())


def choose(tasks: dict[str, dict[str, Any]], rules: list[AutoRule]) -> tuple[AutoRule, float]:
    """The rule with the best score on ``tasks``; ties, and gains under ``MARGIN`` over
    always-best, go to the most cautious rule (the family's order)."""
    base = rules[0]  # always best
    best, best_s = base, score(base, tasks)
    for rule in rules[1:]:
        s = score(rule, tasks)
        if s > best_s + 1e-12 and s >= score(base, tasks) + MARGIN:
            best, best_s = rule, s
    return best, best_s


def loto(tasks: dict[str, dict[str, Any]], rules: list[AutoRule]) -> dict[str, Any]:
    """Leave one task out: the rule chosen without the task, applied to it."""
    per: dict[str, Any] = {}
    gains: dict[str, list[float]] = {}
    for name, task in tasks.items():
        others = {k: v for k, v in tasks.items() if k != name}
        rule, s = choose(others, rules)
        arm, reason = pick(rule, task)
        g = arm_gains(task, arm)
        gains[name] = g
        per[name] = {"rule": rule.label(), "rule_fields": rule.model_dump(mode="json"),
                     "score_on_others": s, "arm": arm, "reason": reason, "unit": task["unit"],
                     "gain": stats.paired(g), "standardised": standardised(g),
                     "oracle_gain": task["arms"]["o"]["gain"]["mean"]}
    return {"per_task": per, "pooled": stats.pooled(gains)}


def fixed(tasks: dict[str, dict[str, Any]], arm: str) -> dict[str, Any]:
    """A fixed arm on every task, for comparison."""
    per = {n: arm_gains(t, arm) for n, t in tasks.items()}
    return {"per_task": {n: stats.paired(g) for n, g in per.items()},
            "pooled": stats.pooled(per)}


def run(suite: Path, block: str) -> dict[str, Any]:
    """Everything ``auto_rule.json`` holds (see the module docstring)."""
    doc = json.loads(suite.read_text())
    tasks = doc["blocks"][block]["tasks"]
    rules = family()
    chosen, s = choose(tasks, rules)
    held_out = loto(tasks, rules)
    validated = statistics.fmean(r["standardised"] for r in held_out["per_task"].values())
    selected = chosen if validated > 0 else rules[0]
    shipped = DEFAULT_RULE
    return {
        "about": "the --mode auto rule, chosen across tasks leave-one-task-out "
                 "(benchmarks/suite/auto_rule.py)",
        "suite": str(suite), "block": block, "tasks": list(tasks),
        "family": {"control_min_ranking_mean": list(CONTROL_MEAN),
                   "control_min_ranking_worst": list(CONTROL_WORST),
                   "generative_min_skill": list(GENERATIVE_SKILL),
                   "prefer": ["control", "generative"], "rules": len(rules),
                   "score": "mean over tasks of the picked arm's paired mean gain / sd over "
                            "(a)", "margin_over_always_best": MARGIN},
        "evidence": {n: AutoEvidence.from_record(t["evidence"]).model_dump(mode="json")
                     | {"forecast_skill": AutoEvidence.from_record(t["evidence"]).forecast_skill}
                     for n, t in tasks.items()},
        "loto": held_out,
        "loto_mean_standardised": validated,
        "all_tasks": {"rule": chosen.label(), "rule_fields": chosen.model_dump(mode="json"),
                      "score": s, "picks": {n: pick(chosen, t)[0] for n, t in tasks.items()}},
        "selected": {"rule": selected.label(), "rule_fields": selected.model_dump(mode="json"),
                     "why": ("the all-task choice: choosing is validated leave one task out "
                             f"(held-out mean standardised gain {validated:+.2f} > 0)"
                             if validated > 0 else
                             "always best: a rule chosen on the other tasks lost on the held-"
                             f"out ones (mean standardised gain {validated:+.2f} <= 0), so the "
                             "all-task choice is not trusted"),
                     "picks": {n: pick(selected, t)[0] for n, t in tasks.items()}},
        "shipped": {"rule": shipped.label(), "matches_selected": shipped == selected},
        "always": {arm: fixed(tasks, arm) for arm in ("g", "c")},
    }


def table(out: dict[str, Any]) -> str:
    def ci(g: dict[str, Any]) -> str:
        lo = g["lo"]
        return (f"{g['mean']:+.2f}" if math.isnan(lo) else
                f"{g['mean']:+.2f} [{lo:+.2f}, {g['hi']:+.2f}] {g['wins']}/{g['losses']}")

    lines = [f"auto rule, leave one task out ({out['family']['rules']} candidate rules; "
             f"{out['block']} block)",
             "task | unit | rule chosen on the other tasks | picks | auto - (a) | "
             "always g | always c | oracle"]
    lo = out["loto"]["per_task"]
    for name, r in lo.items():
        lines.append(" | ".join([
            name, r["unit"], r["rule"], r["arm"], ci(r["gain"]),
            ci(out["always"]["g"]["per_task"][name]), ci(out["always"]["c"]["per_task"][name]),
            f"{r['oracle_gain']:+.2f}"]))
    p = out["loto"]["pooled"]
    lines.append(f"pooled (mixed units): auto {ci(p)}, always g "
                 f"{ci(out['always']['g']['pooled'])}, always c "
                 f"{ci(out['always']['c']['pooled'])}")
    a = out["all_tasks"]
    lines.append(f"chosen on all tasks: {a['rule']} (score {a['score']:+.2f}); picks {a['picks']}")
    sel = out["selected"]
    lines.append(f"selected: {sel['rule']}: {sel['why']}")
    lines.append(f"shipped DEFAULT_RULE: {out['shipped']['rule']}; matches the selection: "
                 f"{out['shipped']['matches_selected']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite.auto_rule",
                                 description="choose the --mode auto rule across tasks")
    ap.add_argument("--suite", type=Path, default=Path("benchmarks/results/suite.json"))
    ap.add_argument("--block", default="design")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/auto_rule.json"))
    ap.add_argument("--refresh-suite", action="store_true",
                    help="also rewrite the block's auto arm and pooled rows in --suite")
    ns = ap.parse_args(argv)
    out = run(ns.suite, ns.block)
    ns.out.write_text(json.dumps(out, indent=1, allow_nan=True))
    print(table(out))
    print(f"wrote {ns.out}")
    if ns.refresh_suite:
        from benchmarks.suite.report import refresh

        refresh(ns.suite)
        print(f"refreshed the auto arm in {ns.suite}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
