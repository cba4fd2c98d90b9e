"""The remote advisor: the local :class:`~tracker_sched.advising.advisor.Advisor`, over HTTP.

The bundle stays on a server (``mlflow models serve -m models:/NAME@ALIAS
--env-manager local``); the training job needs only ``requests``:

>>> # advisor = RemoteAdvisor("http://127.0.0.1:5000", total_steps=840, initial_lr=0.05)
>>> # for step in ...:
>>> #     advisor.observe(step, train_loss=loss, val_metric=acc, lr=current_lr)
>>> #     lr = advisor.lr(step)

A failure of the server never reaches the training loop, and neither does its slowness:
requests run on a background thread. The run follows the plan it has until an answer
arrives; ``observe`` and ``lr`` never wait on the network. A failing server leaves the plan
in place, recorded as a fallback with the reason (logged once per distinct reason), and is
asked again ``replan_every`` observations later.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from typing import Any

import requests

from tracker_sched.advising.following import PlanFollower
from tracker_sched.advising.serving import CHANNELS
from tracker_sched.advising.transport import ServedModel, ServerError
from tracker_sched.errors import InputError
from tracker_sched.limits import CLIENT_MAX_ROWS
from tracker_sched.model.stop_odds import StopDecision, StopRequest, StopRule
from tracker_sched.schema import Recommendation, Schedule
from tracker_sched.util.redact import redact_text

log = logging.getLogger("tracker_sched.remote")

__all__ = ["RemoteAdvisor", "ServerError"]


class RemoteAdvisor(PlanFollower):
    """Observe metrics, get the lr to use now, from a served tracker-sched model.

    Args:
        url: the server's base URL (``/invocations`` is appended). Credentials in it
            (``https://user:token@host``) are used, and never shown: logs, reasons and tags
            get :attr:`url_shown`.
        total_steps: the run's planned budget.
        timeout: seconds per HTTP request (connect and read each).
        retries: extra attempts after a timeout, a connection error or a 5xx answer,
            with backoff (0.2 s, 0.4 s, ...). A 4xx answer (bad input) is not retried.
        replan_every: observations between plans, as in the local advisor; also how
            many observations a failing server is left alone before it is asked again.
        max_replans: plans asked for once the window is ready (1: one open-loop plan;
            None: every ``replan_every`` observations for the whole run).
        session: a ``requests.Session`` to reuse (auth, proxies, keep-alive).
        initial_lr: the lr to run at until the server answers (e.g. the optimizer's
            starting lr); the lr the run passes to :meth:`observe` wins.

    Without ``initial_lr`` the constructor asks the server for the warm-up plan (the sweep's
    best run's schedule) before returning, and raises :class:`ServerError` if it cannot: there
    is no lr to run at. With ``initial_lr`` it returns at once and asks in the background.

    Requests run on one background thread, at most one at a time: a due replan while one is
    in flight waits for it (the queue holds one request), so a slow server costs requests, not
    training time. :meth:`wait` blocks until the server has answered what was asked (tests,
    the end of a run); :meth:`close` stops the thread (also ``with RemoteAdvisor(...)``).
    :meth:`stop_decision` does not wait either: it returns the server's latest decision and
    asks for a fresh one, which arrives with a later call.

    Raises:
        ServerError: (a :class:`~tracker_sched.errors.TrackerSchedError`) without
            ``initial_lr``, the server gave no warm-up plan.
        InputError: ``total_steps`` or another argument is unusable.
    """

    _error_label = "remote advisor"

    def __init__(
        self,
        url: str,
        total_steps: int,
        *,
        timeout: float = 2.0,
        retries: int = 2,
        replan_every: int = 10,
        max_replans: int | None = 1,
        session: requests.Session | None = None,
        initial_lr: float | None = None,
    ) -> None:
        super().__init__(log, total_steps, replan_every=replan_every, max_replans=max_replans)
        if initial_lr is not None and not (math.isfinite(initial_lr) and initial_lr > 0):
            raise InputError(f"initial_lr must be a positive number, got {initial_lr}")
        self.server = ServedModel(url, timeout=timeout, retries=retries, session=session)
        self._rows: dict[int, dict[str, float]] = {}
        self._last: dict[str, int] = {}
        self._run_lr = initial_lr
        self._since_plan = 0
        self._since_try = 0
        self._failing = False
        self._ready_step: int | None = None
        self._mode_reason: str | None = None
        self._stop_ask: StopRequest | None = None
        self._stop = StopDecision(reason="no stop decision asked for yet")
        # The request thread and the training thread share the counters and the plan: every
        # change to them holds this lock, and none holds it across a request.
        self._lock = threading.Lock()
        self._jobs: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1)
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._closed = False
        if initial_lr is None:
            try:
                first = self._request(self._payload(0))
            except ServerError as exc:
                raise ServerError(f"{exc}; start the server, or pass initial_lr=... to run "
                                  "at that lr until the server answers") from exc
            self._plan = first
            return
        self._plan = Recommendation(
            status="warmup", reason="waiting for the server's first answer; running at the "
            "run's own lr", step=0, lr_now=initial_lr, schedule=Schedule(step=[], lr=[]))
        self._submit(0)

    @property
    def url_shown(self) -> str:
        """The server's ``/invocations`` URL with any credentials masked (logs, reasons)."""
        return self.server.url_shown

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent so far, retries included."""
        return self.server.requests_sent

    # ------------------------------------------------------------------ the follower's hooks
    def _take(self, at: int, values: dict[str, float]) -> None:
        """Record the observation and ask the server when due; never waits on the network."""
        with self._lock:
            self._record(at, **values)
            self._since_plan += 1
            self._since_try += 1
            due = self._due(at)
        if due:
            self._submit(at)

    @property
    def mode(self) -> str | None:
        """The planner mode the served bundle follows, as its latest answer names it (auto
        bundles: their fit-time decision); None before an answer or from an older server."""
        return self._plan.mode

    @property
    def mode_reason(self) -> str | None:
        """Why the served bundle follows :attr:`mode`, in one sentence (what the local
        :attr:`Advisor.mode_reason <tracker_sched.advising.advisor.Advisor.mode_reason>`
        says), as the server's latest answer says it; None before an answer or from an
        older server (whose answers carry no ``mode_reason``)."""
        return self._mode_reason

    def _observe_failed(self, step: Any, reason: str) -> None:
        with self._lock:
            self._fallback(self._safe_step(step), reason)

    def _unplanned_lr(self) -> float:
        # No schedule from the server yet: the run's own lr.
        return self._run_lr if self._run_lr is not None else self._plan.lr_now

    def _decide_stop(self, incumbent: float | None, rule: StopRule | None) -> StopDecision:
        """The server's latest decision; a fresh one is asked for in the background (its
        answer arrives with a later call: :meth:`wait` first to have it now), and every plan
        request asks too once a stop has been asked for. A failing server: "do not stop"."""
        with self._lock:
            self._stop_ask = StopRequest(incumbent=incumbent, rule=rule or StopRule(),
                                         below=self._stop.below)
            step = max(self._rows) if self._rows else 0
            free = self._idle.is_set() and not self._closed
        if free:
            self._submit(step, stop_only=True)
        return self._stop

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no request is queued or in flight; False if ``timeout`` s passed first."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 1.0) -> None:
        """Stop asking: the request thread ends after the request in flight (waited for up to
        ``timeout`` s; it is a daemon, so it never holds the process). The advisor keeps
        answering :meth:`lr` from its last plan."""
        self._closed = True
        if self._thread is None:
            return
        while True:
            try:
                self._jobs.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._jobs.get_nowait()  # the queued request is dropped: we are closing
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.server.close()

    def __enter__(self) -> RemoteAdvisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _record(self, step: int, **values: float | None) -> None:
        row = self._rows.setdefault(step, {})
        for key in CHANNELS:
            raw = values.get(key)
            if raw is None:
                continue
            value = float(raw)
            if not math.isfinite(value):
                continue  # a diverged step: missing to the planner, and not valid JSON
            if key in self._last and step <= self._last[key]:
                continue  # repeated or out-of-order step: ignore, keep the series clean
            self._last[key] = step
            row[key] = value
            if key == "lr" and value > 0:
                self._run_lr = value
        if not row:
            del self._rows[step]
        elif len(self._rows) > CLIENT_MAX_ROWS:
            # A long run that logs every step: thin the older half (every other row), so that
            # a request stays within the server's row limit and this dict stays bounded.
            old = sorted(self._rows)[: len(self._rows) // 2]
            for s in old[1::2]:
                del self._rows[s]

    def _due(self, step: int) -> bool:
        if self._closed or not self._idle.is_set():
            return False  # one request at a time; a due point while one is out waits for it
        if self._failing:
            return self._since_try >= self.replan_every  # leave a failing server alone a while
        if self.max_replans is not None and self.replans >= self.max_replans:
            return False
        ready = self._ready_step is None or step >= self._ready_step
        return ready and self._since_plan >= self.replan_every

    def _payload(self, step: int) -> dict[str, Any]:
        """What is asked, frozen now: later observations do not change a request in flight."""
        rows = [{"step": s, **row} for s, row in sorted(self._rows.items())] or [{"step": step}]
        current = self._plan.schedule.model_dump_json() if self._sched_steps.size else ""
        params: dict[str, Any] = {"total_steps": self.total_steps, "step": int(step),
                                  "current": current}
        if self._stop_ask is not None:
            params["stop"] = self._stop_ask.model_dump_json()
        return {"dataframe_records": rows, "params": params}

    def _submit(self, step: int, *, stop_only: bool = False) -> None:
        with self._lock:
            self._since_try = 0
            payload = self._payload(step)
            payload["_stop_only"] = stop_only  # ours: taken off before the request is sent
            self._idle.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="tracker-sched-remote",
                                             daemon=True)
            self._thread.start()
        with contextlib.suppress(queue.Full):  # _due holds it to one at a time; never block
            self._jobs.put_nowait(payload)

    def _work(self) -> None:
        while True:
            payload = self._jobs.get()
            if payload is None:
                return
            step = int(payload["params"]["step"])
            stop_only = bool(payload.pop("_stop_only", False))
            try:
                rec: Recommendation | ServerError = self._request(payload)
            except ServerError as exc:
                rec = exc
            except Exception as exc:  # a bug of ours must not kill the thread silently
                rec = ServerError(f"{type(exc).__name__}: {exc}")
            with self._lock:
                if not self._closed:
                    if stop_only and isinstance(rec, ServerError):
                        self._stop = StopDecision(reason=f"server: {redact_text(str(rec))}; "
                                                  "not stopping")
                    elif not stop_only:
                        self._apply(step, rec)
                self._idle.set()

    def _apply(self, step: int, answer: Recommendation | ServerError) -> None:
        if isinstance(answer, ServerError):
            self._failing = True
            self._fallback(step, f"server: {answer}; keeping the current plan")
            return
        rec = answer
        self._failing = False
        if rec.status != "warmup":
            self.replans += 1
            self._since_plan = 0
        if rec.status == "fallback":
            self._warn_once(rec.reason)
            # The planner declined. Its answer already follows a planned schedule (sent as
            # `current`); a warm-up one is kept as is, as the local advisor does.
            if self._sched_steps.size and self._plan.status != "planned":
                rec = rec.model_copy(update={"schedule": self._plan.schedule,
                                             "lr_now": self.lr(step)})
        self._plan = rec

    def _request(self, payload: dict[str, Any]) -> Recommendation:
        answer = self.server.ask(payload)
        if answer.ready_step is not None:
            self._ready_step = answer.ready_step
        if answer.mode_reason is not None:
            self._mode_reason = redact_text(answer.mode_reason)
        if answer.stop is not None:
            self._stop = answer.stop
        return answer.recommendation

    def _fallback(self, step: int, reason: str) -> None:
        """Keep the plan we follow, marked as a fallback with the reason."""
        reason = redact_text(reason)
        self._warn_once(reason)
        self._plan = self._plan.model_copy(update={"status": "fallback", "reason": reason,
                                                   "step": int(step), "lr_now": self.lr(step)})
