"""Write-back to one MLflow run, shared by every callback that advises through MLflow.

What a run gets (the names say which lr is which):

====================================  ===================================================
``tracker_sched.lr_recommended``      metric: the lr the advisor recommends, at the step
                                      (both lr metrics to 5 significant digits)
``tracker_sched.lr_applied``          metric: the lr the optimizer really used (read back
                                      from the framework), where a callback can read it
``tracker_sched.predicted_final``     metric: the plan's predicted final validation
                                      metric, at each new plan
``tracker_sched.plan``                metric: a marker at each new plan's step (0 warm-up,
                                      1 planned, 2 fallback)
``tracker_sched/plan-step<N>.json``   artifact: the plan, summary first (for programs)
``tracker_sched/plan-step<N>.md``     artifact: the same plan for a person: the summary and
                                      the schedule at a dozen steps, as tables (MLflow's
                                      artifact viewer re-indents ``.json``, one number a
                                      line, and renders ``.md``)
``tracker_sched.status`` ...          tags: status, reason, bundle, bundle version, the
                                      registered model's name and version number, and
                                      at the end what the advisor did (plans, fallbacks,
                                      steps applied)
====================================  ===================================================

Runs written before 0.2 carry ``tracker_sched.lr`` (:data:`LR_METRIC_V0`) for the
recommended lr. Training never waits on the tracker: metrics go through MLflow's
asynchronous queue, plans and tags through one background thread with a bounded
queue (a write that does not fit is dropped and counted); a failed write is
caught, logged once and counted in ``tracker_errors``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracker_sched._optional import require
from tracker_sched.schema import Recommendation
from tracker_sched.util.redact import redact_text

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("tracker_sched.integrations.mlflow")

LR_RECOMMENDED = "tracker_sched.lr_recommended"
LR_APPLIED = "tracker_sched.lr_applied"
LR_METRIC_V0 = "tracker_sched.lr"  # the recommended lr's name before 0.2
PREDICTED_FINAL = "tracker_sched.predicted_final"
PLAN_MARKER = "tracker_sched.plan"
PLAN_CODES: dict[str, int] = {"warmup": 0, "planned": 1, "fallback": 2}
TAG_BUNDLE = "tracker_sched.bundle"
TAG_BUNDLE_VERSION = "tracker_sched.bundle_version"
TAG_STATUS = "tracker_sched.status"
TAG_REASON = "tracker_sched.reason"
PLAN_ARTIFACT = "tracker_sched/plan-step{step}.json"
PLAN_SUMMARY = "tracker_sched/plan-step{step}.md"
PLAN_ROWS = 12  # schedule points the markdown summary shows
TAG_MAX_CHARS = 5000  # MLflow's tag value limit is 8,000 on recent servers, 5,000 on older
SIGNIFICANT = 6  # digits kept for floats in plan JSON
LR_DIGITS = 5  # significant digits of the lr metrics (relative error at most 5e-5)


def require_mlflow() -> Any:
    """``import mlflow``, or :class:`MissingDependencyError` naming the extra."""
    return require("mlflow")


def _round(value: float) -> float:
    if not math.isfinite(value) or value == 0:
        return value
    return float(f"{value:.{SIGNIFICANT}g}")


def _shown(key: str, value: float) -> float:
    """Our lr metrics rounded to ``LR_DIGITS`` significant digits, so that the runs table
    shows them whole (``9.8885e-07``, not ``9.88846518...`` with the exponent cut off)."""
    if key in (LR_RECOMMENDED, LR_APPLIED) and math.isfinite(value) and value != 0:
        return float(f"{value:.{LR_DIGITS}g}")
    return value


def plan_json(rec: Recommendation) -> str:
    """The plan artifact: the summary first, the schedule's arrays one per line, floats
    rounded to 6 significant digits, the reason redacted. Still a ``Recommendation``'s JSON.
    """
    data = rec.model_dump(mode="json")
    schedule = data.pop("schedule")
    data["reason"] = redact_text(rec.reason)
    order = ["status", "step", "lr_now", "predicted_final", "predicted_spread", "reason",
             "model_version", "samples_accepted", "samples_drawn"]
    head = {k: data.pop(k) for k in order if k in data}
    head.update(data)  # fields added to Recommendation later still appear
    lines = [f"  {json.dumps(k)}: {json.dumps(_round(v) if isinstance(v, float) else v)}"
             for k, v in head.items()]
    steps = json.dumps(schedule["step"], separators=(",", ":"))
    lrs = json.dumps([_round(float(v)) for v in schedule["lr"]], separators=(",", ":"))
    lines.append(f'  "schedule": {{\n    "step": {steps},\n    "lr": {lrs}\n  }}')
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{_round(value):.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def plan_markdown(rec: Recommendation) -> str:
    """The plan for a person (``plan-step<N>.md``): the summary as a table, then the
    schedule at :data:`PLAN_ROWS` evenly spaced points (the first and the last among them);
    the whole schedule is in the JSON beside it. The reason is redacted."""
    rows: list[tuple[str, object]] = [("status", rec.status), ("step", rec.step),
                                      ("lr now", rec.lr_now)]
    if rec.predicted_final is not None:
        spread = (f" ± {_cell(rec.predicted_spread)}" if rec.predicted_spread is not None
                  else "")
        rows.append(("predicted final", f"{_cell(rec.predicted_final)}{spread}"))
    rows.append(("reason", redact_text(rec.reason) or "-"))
    if rec.samples_drawn:
        rows.append(("candidates", f"{rec.samples_accepted} accepted of {rec.samples_drawn}"))
    rows.append(("bundle created", rec.model_version or "-"))
    steps, lrs = rec.schedule.step, rec.schedule.lr
    n = len(steps)
    picks = sorted({round(i * (n - 1) / (PLAN_ROWS - 1)) for i in range(PLAN_ROWS)}) if n else []
    lines = [f"# tracker-sched plan at step {rec.step}: {rec.status}", "", "| plan | |",
             "|---|---|",
             *(f"| {key} | {_cell(value)} |" for key, value in rows), "",
             f"## Schedule: the lr from step {steps[0] if n else '-'} to the end "
             f"({len(picks)} of {n} points)", "", "| step | lr |", "|---:|---:|",
             *(f"| {steps[i]} | {float(lrs[i]):.4g} |" for i in picks), "",
             f"Every point, for programs: `{PLAN_ARTIFACT.format(step=rec.step).split('/')[-1]}`"
             " (a `Recommendation` as JSON).", ""]
    return "\n".join(lines)


def recommendation_tags(rec: Recommendation) -> dict[str, str]:
    """Status and reason tags. The reason may quote a server URL: credentials are masked."""
    return {TAG_STATUS: rec.status,
            TAG_REASON: (redact_text(rec.reason) or "-")[:TAG_MAX_CHARS]}


def plan_metrics(rec: Recommendation) -> dict[str, float]:
    """The metrics logged at a new plan's step: its marker and its prediction."""
    out = {PLAN_MARKER: float(PLAN_CODES.get(rec.status, -1))}
    if rec.predicted_final is not None and math.isfinite(rec.predicted_final):
        out[PREDICTED_FINAL] = float(rec.predicted_final)
    return out


def log_recommendation(client: MlflowClient, run_id: str, rec: Recommendation, *,
                       bundle_version: str | None = None) -> None:
    """Write one recommendation back to a run, synchronously (metrics, plan artifact, tags).

    For one-off callers such as the deployments target's ``log_back``.

    Args:
        client: the MLflow client of the run's store.
        run_id: the run.
        rec: the recommendation.
        bundle_version: tagged as ``tracker_sched.bundle_version`` when given.

    Raises:
        Exception: whatever MLflow raises.
    """
    client.log_metric(run_id, LR_RECOMMENDED, rec.lr_now, step=rec.step)
    for key, value in plan_metrics(rec).items():
        client.log_metric(run_id, key, value, step=rec.step)
    client.log_text(run_id, plan_json(rec), PLAN_ARTIFACT.format(step=rec.step))
    client.log_text(run_id, plan_markdown(rec), PLAN_SUMMARY.format(step=rec.step))
    tags = recommendation_tags(rec)
    if bundle_version:
        tags[TAG_BUNDLE_VERSION] = bundle_version
    for key, text in tags.items():
        client.set_tag(run_id, key, text)


class MlflowWriter:
    """Writes an advised run's recommendations to one MLflow run without blocking training.

    Args:
        client: an ``MlflowClient`` of the run's store.
        run_id: the run to write to.
        queue_size: plan and tag writes waiting for the tracker at most; more are dropped.
        flush_timeout_s: how long :meth:`close` waits for the tracker.
        fallback_dir: where plans that could not be written are saved instead.

    Nothing here raises: failures are counted in ``tracker_errors`` (``last_error``
    says what) and logged once per kind.
    """

    def __init__(self, client: MlflowClient, run_id: str, *, queue_size: int = 64,
                 flush_timeout_s: float = 10.0,
                 fallback_dir: str | os.PathLike[str] | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_timeout_s = flush_timeout_s
        self.fallback_dir = Path(fallback_dir) if fallback_dir is not None else None
        self.tracker_errors = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._jobs: queue.Queue[tuple[str, Callable[[], None]] | None] = queue.Queue(
            max(1, queue_size))
        self._worker = threading.Thread(target=self._work, name="tracker-sched-mlflow",
                                        daemon=True)
        self._worker.start()
        self._closed = False
        self._stop_sent = False
        self._tags: dict[str, str] = {}
        self._last_plan: Recommendation | None = None

    # ------------------------------------------------------------------ writes
    def metrics(self, values: Mapping[str, float], step: int) -> None:
        """Log metrics at ``step`` through MLflow's asynchronous queue. Never raises."""
        if self._closed or not values:
            return
        try:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            ops = self.client.log_batch(
                self.run_id, metrics=[Metric(k, _shown(k, float(v)), stamp, int(step))
                                      for k, v in values.items()], synchronous=False)
        except Exception as exc:
            self._tracker_error("metrics", exc)
            return
        # RunOperations offers only a blocking wait(); its futures let close() wait with a
        # timeout and count failures without blocking training.
        for fut in getattr(ops, "_operation_futures", None) or []:
            with self._lock:
                self._pending.add(fut)
            fut.add_done_callback(self._metric_done)

    def publish(self, rec: Recommendation) -> None:
        """A plan: its artifact (when new), marker and prediction metrics, status tags.

        A repeated fallback with the same schedule writes no new artifact. Never raises.
        """
        last = self._last_plan
        if last is not None and (rec is last or rec == last):
            return
        self._last_plan = rec
        if last is None or rec.schedule != last.schedule or rec.status != last.status:
            files = [(plan_json(rec), PLAN_ARTIFACT.format(step=rec.step)),
                     (plan_markdown(rec), PLAN_SUMMARY.format(step=rec.step))]
            self._submit("plan", lambda: self._write_plan(files))
            self.metrics(plan_metrics(rec), rec.step)
        self.set_tags(recommendation_tags(rec))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set the tags that changed since the last call (in the background). Never raises."""
        changed = {k: v for k, v in tags.items() if self._tags.get(k) != v}
        if not changed:
            return
        self._tags.update(changed)

        def write() -> None:
            for key, value in changed.items():
                self.client.set_tag(self.run_id, key, value)

        self._submit("tags", write)

    def bundle_tags(self, bundle_uri: str | None, created_at: str | None,
                    extra: Mapping[str, str] | None = None) -> None:
        """Tag which bundle advises the run: its URI, its ``created_at``, and for a
        ``mlflow:models:/`` URI the registered model's name and version number (an alias
        is resolved in the background). Never raises."""
        tags = {TAG_BUNDLE: redact_text(bundle_uri or ""), TAG_BUNDLE_VERSION: created_at or "",
                **(extra or {})}
        self.set_tags({k: v for k, v in tags.items() if v})
        if bundle_uri and "models:/" in bundle_uri:
            from tracker_sched.stores.mlflow_describe import registered_version

            def resolve() -> None:
                found = registered_version(self.client, bundle_uri)
                for key, value in found.items():
                    self.client.set_tag(self.run_id, key, value)

            self._submit("registered version", resolve)

    def summary(self, values: Mapping[str, object]) -> None:
        """What the advisor did, as tags ``tracker_sched.<key>`` (numbers and short text)."""
        self.set_tags({f"tracker_sched.{k}": str(v)[:TAG_MAX_CHARS] for k, v in values.items()
                       if v is not None and k not in ("status", "reason", "bundle",
                                                      "model_version")})

    # ------------------------------------------------------------------ closing
    def close(self, timeout_s: float | None = None) -> bool:
        """Flush plan/tag writes and asynchronous metrics, waiting at most ``timeout_s``.

        Returns True when everything reached the tracker (or failed and was
        counted) in time. Calling it again waits again. Never raises.
        """
        deadline = time.monotonic() + (self.flush_timeout_s if timeout_s is None else timeout_s)
        self._closed = True
        if not self._stop_sent:
            with contextlib.suppress(queue.Full):  # still full: the join below times out
                self._jobs.put(None, timeout=max(0.0, deadline - time.monotonic()))
                self._stop_sent = True
        self._worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            pending = list(self._pending)
        _, not_done = concurrent.futures.wait(pending,
                                              timeout=max(0.0, deadline - time.monotonic()))
        done = not self._worker.is_alive() and not not_done
        if not done:
            log.warning("tracker-sched: MLflow did not take every write within the timeout; "
                        "%d metric batches still pending", len(not_done))
        return done

    # ------------------------------------------------------------------ internals
    def _metric_done(self, fut: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(fut)
        exc = fut.exception()  # MLflow's async queue sets the failed batch's error here
        if exc is not None:
            self._tracker_error("metrics", exc)

    def _write_plan(self, files: list[tuple[str, str]]) -> None:
        """The plan's files (the JSON first); where one fails, every file not yet written is
        saved to ``fallback_dir`` instead."""
        for i, (text, name) in enumerate(files):
            try:
                self.client.log_text(self.run_id, text, name)
            except Exception:
                if self.fallback_dir is not None:
                    for rest, rest_name in files[i:]:
                        path = self.fallback_dir / Path(rest_name).name
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text(rest)
                raise

    def _submit(self, what: str, job: Callable[[], None]) -> None:
        if self._closed:
            return
        try:
            self._jobs.put_nowait((what, job))
        except queue.Full:
            with self._lock:
                self.dropped += 1
                dropped = self.dropped
            if dropped == 1 or dropped % 100 == 0:
                log.warning("tracker-sched: MLflow is behind; dropped %d plan/tag writes so far",
                            dropped)

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            what, job = item
            try:
                job()
            except Exception as exc:
                self._tracker_error(what, exc)

    def _tracker_error(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self.tracker_errors += 1
            self.last_error = f"{what}: {type(exc).__name__}: {exc}"[:500]
        self.warn_once(what, f"MLflow write failed ({what}); training continues, errors "
                             f"are counted in tracker_errors: {exc}")

    def warn_once(self, key: str, message: str) -> None:
        """One warning per kind on the ``tracker_sched`` logger."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning("tracker-sched: %s", message)
