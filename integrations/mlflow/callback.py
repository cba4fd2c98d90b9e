"""The live MLflow callback: the advisor inside a run, its recommendations written back.

::

    import mlflow
    from tracker_sched.integrations.mlflow import MlflowAdvisorCallback

    with mlflow.start_run():
        with MlflowAdvisorCallback("mlflow:models:/cnn-sched@champion", total_steps=840,
                                   optimizer=opt) as cb:
            for step in range(840):
                loss = train_step()
                cb.log_metrics({"train_loss": loss, "val_acc": acc}, step)  # logs and advises

What goes back to the run, so that MLflow's UI shows it:

- metric ``tracker_sched.lr``: the recommended lr at each step (MLflow's
  asynchronous logging, ``synchronous=False``);
- artifact ``tracker_sched/plan-step<N>.json``: each new plan (a
  :class:`~tracker_sched.schema.Recommendation` as JSON);
- tags ``tracker_sched.bundle_version``, ``tracker_sched.status``,
  ``tracker_sched.reason`` (updated when they change);
- with the opt-in stop (``stop=StopRule(...)``): once the odds of beating the incumbent stay
  low, :attr:`MlflowAdvisorCallback.should_stop` turns True (the loop checks it and ends)
  and the run is tagged ``tracker_sched.stopped=true`` with the odds
  (``tracker_sched.stop_p_beat``, ``.stop_step``, ``.stop_incumbent``, ``.stop_reason``).
  Nothing logged is removed: the run simply ends early.

Training never waits on the tracker: plans and tags go through one background
thread with a bounded queue (a write that does not fit is dropped and counted),
and a tracker error is caught, logged once and counted in ``tracker_errors``;
the lr keeps coming from the advisor. mlflow is imported only when used.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tracker_sched._optional import require
from tracker_sched.advising.following import AdvisorLike
from tracker_sched.bundle.folder import Bundle
from tracker_sched.errors import InputError
from tracker_sched.model.stop_odds import Incumbent, StopDecision, StopRule, StopWatch
from tracker_sched.schema import ROLES, MetricMap, Recommendation
from tracker_sched.util.redact import redact_text

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from torch.optim import Optimizer

log = logging.getLogger(__name__)

LR_METRIC = "tracker_sched.lr"
TAG_BUNDLE = "tracker_sched.bundle"
TAG_BUNDLE_VERSION = "tracker_sched.bundle_version"
TAG_STATUS = "tracker_sched.status"
TAG_REASON = "tracker_sched.reason"
PLAN_ARTIFACT = "tracker_sched/plan-step{step}.json"
TAG_STOPPED = "tracker_sched.stopped"
TAG_MAX_CHARS = 5000  # MLflow's tag value limit is 8,000 on recent servers, 5,000 on older


def require_mlflow() -> Any:
    return require("mlflow")


def role_keys(bundle: Bundle | None) -> dict[str, str]:
    """The metric keys the bundle's sweep used per role (the first choice when mapping)."""
    if bundle is None:
        return {}
    roles = bundle.manifest.metrics
    out = {"val_metric": roles.val_metric}
    if roles.train_loss:
        out["train_loss"] = roles.train_loss
    if roles.lr:
        out["lr"] = roles.lr
    return out


def map_roles(keys: list[str], preferred: Mapping[str, str],
              metric_map: MetricMap) -> dict[str, str]:
    """role -> key among ``keys``: the bundle's own key if logged, else the map's choice.

    Our own write-back keys (``tracker_sched.*``) never play a role.
    """
    keys = [k for k in keys if not k.startswith("tracker_sched.")]
    out: dict[str, str] = {}
    for role in ROLES:
        key = preferred.get(role)
        if key is None or key not in keys:
            key = metric_map.key_for(role, keys)
        if key is not None:
            out[role] = key
    return out


def plan_json(rec: Recommendation) -> str:
    """The plan artifact; its reason redacted (tracker_sched.util.redact) like the tag's."""
    return json.dumps({**rec.model_dump(mode="json"), "reason": redact_text(rec.reason)},
                      indent=2)


def recommendation_tags(rec: Recommendation) -> dict[str, str]:
    """Status and reason tags. The reason may quote a server URL: credentials are masked."""
    return {TAG_STATUS: rec.status,
            TAG_REASON: (redact_text(rec.reason) or "-")[:TAG_MAX_CHARS]}


def log_recommendation(client: MlflowClient, run_id: str, rec: Recommendation, *,
                       bundle_version: str | None = None) -> None:
    """Write one recommendation back to a run, synchronously (metric, plan artifact, tags).

    The same write-back as the callback's, for one-off callers such as the
    deployments target's ``log_back``. Raises what MLflow raises.
    """
    client.log_metric(run_id, LR_METRIC, rec.lr_now, step=rec.step)
    client.log_text(run_id, plan_json(rec), PLAN_ARTIFACT.format(step=rec.step))
    tags = recommendation_tags(rec)
    if bundle_version:
        tags[TAG_BUNDLE_VERSION] = bundle_version
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def stop_tags(decision: StopDecision, step: int) -> dict[str, str]:
    """The tags that mark a run stopped by tracker-sched, with its odds."""
    return {TAG_STOPPED: "true", "tracker_sched.stop_step": str(step),
            "tracker_sched.stop_p_beat": _num(decision.p_beat),
            "tracker_sched.stop_incumbent": _num(decision.incumbent),
            "tracker_sched.stop_reason": redact_text(decision.reason)[:TAG_MAX_CHARS]}


class MlflowAdvisorCallback:
    """Advise a live MLflow run and write each recommendation back to it.

    Args:
        source: a bundle (a :class:`~tracker_sched.bundle.folder.Bundle`, a folder, or
            any bundle URI such as ``mlflow:models:/NAME@ALIAS``) or a ready
            advisor (anything with ``observe``/``lr``/``plan``, e.g. a remote one).
        total_steps: the run's planned budget (needed with a bundle).
        run_id: the run to write to; default the active run (``mlflow.start_run``).
        tracking_uri: default MLflow's own resolution (the active run's store).
        optimizer: when given, every param group's lr is set after each step,
            keeping the groups' ratios to the first group.
        metric_map: how the script's metric names map to roles, when the
            bundle's own names and the defaults do not fit.
        queue_size: plan and tag writes waiting for the tracker at most; more are dropped.
        flush_timeout_s: how long ``close()`` waits for the tracker.
        fallback_dir: where plans that could not be written to the tracker are
            saved instead (``plan-step<N>.json``), so that a tracker outage loses nothing.
        stop: opt in to stop decisions with this rule (default None: never stops).
        incumbent: the validation metric to beat (as logged), or a function returning it
            (e.g. the best finished run of the sweep so far); None never stops.
        advisor_options: passed to :class:`~tracker_sched.advising.advisor.Advisor`
            (``replan_every``, ``max_replans``, ``config``) when built from a bundle.
    """

    def __init__(
        self,
        source: Bundle | AdvisorLike | str | os.PathLike[str],
        total_steps: int | None = None,
        *,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        optimizer: Optimizer | None = None,
        metric_map: MetricMap | None = None,
        queue_size: int = 64,
        flush_timeout_s: float = 10.0,
        fallback_dir: str | os.PathLike[str] | None = None,
        stop: StopRule | None = None,
        incumbent: Incumbent = None,
        **advisor_options: Any,
    ) -> None:
        from tracker_sched.advising.advisor import Advisor
        from tracker_sched.integrations.mlflow import context

        bundle_uri: str | None = None
        if isinstance(source, str | os.PathLike):
            from tracker_sched.stores import load_bundle

            bundle_uri = str(source)
            source = load_bundle(Path(source) if isinstance(source, os.PathLike) else source)
        if isinstance(source, Bundle):
            if total_steps is None:
                raise InputError("total_steps is required with a bundle: the run's planned "
                                 "number of steps, as for a cosine schedule")
            self.advisor: AdvisorLike = Advisor(source, total_steps, **advisor_options)
        elif isinstance(source, AdvisorLike):
            self.advisor = source
        else:
            raise InputError(f"expected a bundle, a bundle URI or an advisor, got "
                             f"{type(source).__name__}")
        self.bundle: Bundle | None = getattr(self.advisor, "bundle", None)
        self.bundle_version = self.bundle.manifest.created_at if self.bundle else None

        mlflow = require_mlflow()
        from mlflow.tracking import MlflowClient

        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise InputError("no active MLflow run: call mlflow.start_run() first "
                                 "or pass run_id=")
            run_id = str(active.info.run_id)
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.optimizer = optimizer
        self._ratios = self._group_ratios(optimizer)
        self._preferred = role_keys(self.bundle)
        self._metric_map = metric_map or MetricMap()
        self._roles_for: dict[frozenset[str], dict[str, str]] = {}
        self.flush_timeout_s = flush_timeout_s
        self.fallback_dir = Path(fallback_dir) if fallback_dir is not None else None

        self.tracker_errors = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.last_lr: float | None = None
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
        self.stop_watch = StopWatch(stop, incumbent) if stop is not None else None

        first = {TAG_BUNDLE_VERSION: self.bundle_version or "", TAG_BUNDLE: bundle_uri or ""}
        self._set_tags({k: v for k, v in first.items() if v})
        self._publish(self.advisor.plan)
        context.register_callback(self, self.bundle_version)

    # ------------------------------------------------------------------ the training side
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> float:
        """Log the script's metrics to the run (asynchronously) and advise on them.

        Names are mapped to roles by the bundle's own metric keys, else the
        defaults (``train_loss``/``loss``, ``val_acc``/``eval_loss``...,
        ``lr``/``learning_rate``). Returns the lr to use from now on. Never raises:
        a value that is not a number is skipped with a warning.
        """
        values: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                values[str(key)] = float(value)
            except (TypeError, ValueError):  # skipped, not raised: training goes on
                self._warn_once(f"metric {key}", f"metric {key!r}={value!r} is not a number; "
                                                  "not logged")
        if values:
            self._log_async(values, step)
        roles = self._roles(values)
        return self.on_step(step, **{role: values[key] for role, key in roles.items()})

    def on_step(self, step: int, *, train_loss: float | None = None,
                val_metric: float | None = None, lr: float | None = None) -> float:
        """Feed the advisor what the script logged itself; returns (and applies) the lr.

        ``lr`` defaults to the optimizer's current lr. Never raises.
        """
        if lr is None and self.optimizer is not None:
            lr = float(self.optimizer.param_groups[0]["lr"])
        try:
            rec = self.advisor.observe(step, train_loss=train_loss, val_metric=val_metric, lr=lr)
            new_lr = float(self.advisor.lr(step))
        except Exception as exc:  # an advisor of ours never raises; a foreign one might
            self._warn_once("advisor", f"advisor failed, keeping the lr: {exc}")
            return self.last_lr if self.last_lr is not None else (lr or 0.0)
        self.last_lr = new_lr
        self._apply(new_lr)
        self._log_async({LR_METRIC: new_lr}, step)
        self._publish(rec)
        if self.stop_watch is not None and val_metric is not None:
            decision = self.stop_watch.check(self.advisor, step)
            if decision is not None:
                self._set_tags(stop_tags(decision, step))
        return new_lr

    @property
    def plan(self) -> Recommendation:
        return self.advisor.plan

    @property
    def should_stop(self) -> bool:
        """True once the opt-in stop decided the run should end (the loop checks it)."""
        return self.stop_watch is not None and self.stop_watch.should_stop

    # ------------------------------------------------------------------ closing
    def close(self, timeout_s: float | None = None) -> bool:
        """Flush plan/tag writes and asynchronous metrics, waiting at most ``timeout_s``.

        Returns True when everything reached the tracker (or failed and was
        counted) in time. Never raises.
        """
        from tracker_sched.integrations.mlflow import context

        context.unregister_callback(self)
        deadline = time.monotonic() + (self.flush_timeout_s if timeout_s is None else timeout_s)
        self._closed = True  # no new writes; calling close again waits again
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

    def __enter__(self) -> MlflowAdvisorCallback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _group_ratios(optimizer: Optimizer | None) -> list[float]:
        if optimizer is None:
            return []
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        base = lrs[0] or 1.0
        return [lr / base for lr in lrs]

    def _apply(self, lr: float) -> None:
        if self.optimizer is None:
            return
        for group, ratio in zip(self.optimizer.param_groups, self._ratios, strict=False):
            group["lr"] = lr * ratio

    def _roles(self, values: Mapping[str, float]) -> dict[str, str]:
        names = frozenset(values)
        roles = self._roles_for.get(names)
        if roles is None:
            roles = map_roles(sorted(names), self._preferred, self._metric_map)
            self._roles_for[names] = roles
        return roles

    def _log_async(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        try:
            ops = self.client.log_batch(
                self.run_id, metrics=[Metric(k, v, stamp, int(step)) for k, v in values.items()],
                synchronous=False)
        except Exception as exc:
            self._tracker_error("metrics", exc)
            return
        # RunOperations offers only a blocking wait(); its futures let close() wait with a
        # timeout and count failures without blocking training.
        for fut in getattr(ops, "_operation_futures", None) or []:
            with self._lock:
                self._pending.add(fut)
            fut.add_done_callback(self._metric_done)

    def _metric_done(self, fut: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(fut)
        exc = fut.exception()  # MLflow's async queue sets the failed batch's error here
        if exc is not None:
            self._tracker_error("metrics", exc)

    def _publish(self, rec: Recommendation) -> None:
        last = self._last_plan
        if last is not None and (rec is last or rec == last):
            return
        self._last_plan = rec
        # A new plan (or a change of status) is a new artifact; a repeated fallback is not.
        if last is None or rec.schedule != last.schedule or rec.status != last.status:
            text, name = plan_json(rec), PLAN_ARTIFACT.format(step=rec.step)
            self._submit("plan", lambda: self._write_plan(text, name))
        self._set_tags(recommendation_tags(rec))

    def _write_plan(self, text: str, name: str) -> None:
        try:
            self.client.log_text(self.run_id, text, name)
        except Exception:
            if self.fallback_dir is not None:
                path = self.fallback_dir / Path(name).name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            raise

    def _set_tags(self, tags: Mapping[str, str]) -> None:
        changed = {k: v for k, v in tags.items() if self._tags.get(k) != v}
        if not changed:
            return
        self._tags.update(changed)

        def write() -> None:
            for key, value in changed.items():
                self.client.set_tag(self.run_id, key, value)

        self._submit("tags", write)

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
        self._warn_once(what, f"MLflow write failed ({what}); training continues, errors "
                              f"are counted in tracker_errors: {exc}")

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning("tracker-sched: %s", message)
