"""Every check that can end a fit, in one stage that runs before any training.

``tracker-sched validate``, the first stage of ``fit``
(:func:`tracker_sched.fit.generative.prepare`) and the control fit all call
:func:`preflight`, so a sweep that cannot be fitted fails in seconds with every
reason listed, never after minutes of training. A sweep cannot be fitted when:

* fewer than :data:`MIN_RUNS` runs are usable (each excluded run says why:
  no lr, no validation metric, too few points, a budget in another unit than
  its step axis...);
* its runs log different validation metrics, or the metric's direction
  cannot be told from its name;
* no run finished and reached the end of its budget, so nothing can be named
  the sweep's best (each partial run says why);
* all usable runs are one configuration (:mod:`tracker_sched.identity`), so
  the sweep varies nothing a schedule could be learned from.

Nothing here imports torch: ``validate`` answers in about a second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tracker_sched.budget import BudgetSpec
from tracker_sched.data.validation import CleanRun, ValidatedSweep, validate_sweep
from tracker_sched.errors import FitError, InputError
from tracker_sched.identity import Configurations
from tracker_sched.schema import Direction, MetricMap, RunIssue, RunRecord, infer_direction
from tracker_sched.util.term import escape

MIN_RUNS = 4


@dataclass(frozen=True)
class Problem:
    """One reason a sweep cannot be fitted; ``kind`` picks the error class raised."""

    kind: Literal["input", "fit"]
    text: str


@dataclass
class Preflight:
    """A checked sweep: its usable runs, every run's issues, and what stops a fit."""

    records: list[RunRecord]
    validated: ValidatedSweep
    source_issues: list[RunIssue]
    val_key: str
    direction: Direction | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def runs(self) -> list[CleanRun]:
        return self.validated.runs

    @property
    def issues(self) -> list[RunIssue]:
        """The source's issues (runs it could not read) and validation's, in that order."""
        return [*self.source_issues, *self.validated.issues]

    @property
    def configurations(self) -> Configurations:
        assert self.validated.configurations is not None
        return self.validated.configurations

    @property
    def runs_read(self) -> int:
        """Runs the source read, and runs it could not read (each counted once)."""
        unread = {i.run_id for i in self.source_issues if i.action == "excluded"}
        return len(self.records) + len(unread - {r.run_id for r in self.records})

    def runs_by_state(self) -> dict[str, int]:
        return dict(sorted(Counter(r.record.state for r in self.runs).items()))

    def describe(self) -> list[str]:
        """What ``validate`` prints and ``fit`` prints before training."""
        states = ", ".join(f"{n} {s}" for s, n in self.runs_by_state().items()) or "none"
        complete = sum(1 for r in self.runs if r.complete)
        eligible = sum(1 for r in self.runs if r.eligible)
        lines = [f"{len(self.runs)} usable runs of {self.runs_read} ({states}); {complete} "
                 f"reached the end of their budget; {eligible} can be the sweep's best"]
        if self.runs:
            conf = self.configurations
            hp = ", ".join(conf.hyperparameters) or "none"
            line = f"{conf.describe()} (hyperparameters: {hp}"
            if conf.dropped:
                left = ", ".join(f"{k} ({why})" for k, why in sorted(conf.dropped.items()))
                line += f"; left out: {left}"
            lines.append(line + ")")
            budgets = Counter((r.total_steps, r.budget_source) for r in self.runs)
            (steps, source), n = budgets.most_common(1)[0]
            more = f"; {len(budgets) - 1} other budget(s), see the runs" if len(budgets) > 1 else ""
            lines.append(f"budget: {steps} steps from {source} ({n} runs){more}")
            lines.append(f"validation metric: {self.val_key} ({self.direction or 'unknown'})")
        return lines

    def error(self) -> InputError | FitError:
        """The error that lists every problem and every run's issue."""
        text = "this sweep cannot be fitted:\n" + "\n".join(f"  - {p.text}" for p in self.problems)
        if self.issues:
            text += "\nruns:\n" + issue_table(self.issues)
        if all(p.kind == "input" for p in self.problems):
            return InputError(text)
        return FitError(text)

    def raise_for_problems(self) -> None:
        if self.problems:
            raise self.error()


def issue_table(issues: Sequence[RunIssue]) -> str:
    """One line per issue, whatever a run id holds (its control characters escaped)."""
    return "\n".join(f"  {i.action:<9} {escape(i.run_id)}: {escape(i.reason)}" for i in issues)


def _val_keys(records: Sequence[RunRecord], metric_map: MetricMap) -> tuple[str, list[str]]:
    keys = sorted({k for r in records if (k := r.metric_keys.get("val_metric")) is not None})
    if len(keys) == 1:
        return keys[0], keys
    return (keys[0] if keys else metric_map.val_metric or "val_metric"), keys


def preflight(
    records: Sequence[RunRecord],
    *,
    metric_map: MetricMap | None = None,
    budget: BudgetSpec | None = None,
    ignore_config_keys: Sequence[str] = (),
    source_issues: Sequence[RunIssue] = (),
    min_runs: int = MIN_RUNS,
) -> Preflight:
    """Validate a sweep and find every reason it cannot be fitted (none: it can)."""
    metric_map = metric_map or MetricMap()
    validated = validate_sweep(records, budget=budget, ignore_config_keys=ignore_config_keys)
    val_key, keys = _val_keys([r.record for r in validated.runs], metric_map)
    direction = metric_map.val_direction or infer_direction(val_key)
    checked = Preflight(records=list(records), validated=validated,
                        source_issues=list(source_issues), val_key=val_key, direction=direction)
    problems = checked.problems
    runs = validated.runs
    if len(runs) < min_runs:
        problems.append(Problem("fit", f"{len(runs)} usable runs of {checked.runs_read} "
                                       f"(need >= {min_runs}); each run's reason is below"))
    if len(keys) > 1:
        problems.append(Problem("input", f"runs log different validation metrics "
                                         f"({', '.join(keys)}); a sweep must be fitted on one "
                                         "metric: choose it with --val-key"))
    elif runs and direction is None:
        problems.append(Problem("input", f"cannot tell whether {val_key!r} is maximised or "
                                         "minimised; pass --val-direction max|min"))
    if runs and not any(r.eligible for r in runs):
        problems.append(Problem("fit", (
            "no finished run reached the end of its budget (within one logging interval): "
            "nothing can be named the sweep's best; each run's reason is below. If the budgets "
            "are wrong, set them with --total-steps N or --total-steps-key KEY")))
    if len(runs) >= 2 and checked.configurations.count() == 1:
        dropped = ", ".join(sorted(checked.configurations.dropped)) or "nothing"
        problems.append(Problem("fit", (
            f"all {len(runs)} usable runs are one configuration (they differ in {dropped}): "
            "a sweep that varies nothing cannot teach a schedule. If the runs differ in "
            "settings their config does not hold, log those settings (as params or config); "
            "if a key was left out wrongly, see docs/sweep-format.md#configurations")))
    return checked
