"""The remote advisor: the same client as :class:`~tracker_sched.advisor.Advisor`, over HTTP.

The bundle stays on a server (``mlflow models serve -m models:/NAME@ALIAS
--env-manager local``); the training job needs only ``requests``:

>>> # advisor = RemoteAdvisor("http://127.0.0.1:5000", total_steps=840, initial_lr=0.05)
>>> # for step in ...:
>>> #     advisor.observe(step, train_loss=loss, val_metric=acc, lr=current_lr)
>>> #     lr = advisor.lr(step)

A failure of the server never reaches the training loop: the advisor keeps
the plan it has, records a fallback recommendation with the reason (logged
once per distinct reason) and asks again ``replan_every`` observations later.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import requests

from tracker_sched.errors import TrackerSchedError
from tracker_sched.following import PlanFollower
from tracker_sched.schema import Recommendation, Schedule
from tracker_sched.serving import CHANNELS, recommendation_from_row

log = logging.getLogger("tracker_sched.remote")

BACKOFF_S = 0.2  # first retry delay; doubles per retry


class ServerError(TrackerSchedError):
    """The served model did not answer usefully; the message says why (never leaves the advisor)."""


class RemoteAdvisor(PlanFollower):
    """Observe metrics, get the lr to use now, from a served tracker-sched model.

    Args:
        url: the server's base URL (``/invocations`` is appended).
        total_steps: the run's planned budget.
        timeout: seconds per HTTP request (connect and read each).
        retries: extra attempts after a timeout, a connection error or a 5xx answer,
            with backoff (0.2 s, 0.4 s, ...). A 4xx answer (bad input) is not retried.
        replan_every: observations between plans, as in the local advisor; also how
            many observations a failing server is left alone before it is asked again.
        max_replans: plans asked for once the window is ready (1: one open-loop plan;
            None: every ``replan_every`` observations for the whole run).
        session: a ``requests.Session`` to reuse (auth, proxies, keep-alive).
        initial_lr: the lr to run at if the server does not answer at start (e.g. the
            optimizer's starting lr); the lr the run passes to :meth:`observe` wins.

    The constructor asks the server once for the warm-up plan (the sweep's best
    run's schedule) and the step from which the window is ready; from then on it
    plans as the local advisor does. If the server is down at start, the run
    keeps its own lr (the last ``lr`` passed to :meth:`observe`, else
    ``initial_lr``) and asks again every ``replan_every`` observations; without
    ``initial_lr`` the constructor raises :class:`ServerError` instead, before
    the training loop starts, since there is no lr to run at.

    :meth:`observe` sends its HTTP request synchronously, on the calling (training)
    thread, at each due replan: that step can take up to ``timeout`` x
    (``retries`` + 1) plus the backoff delays when the server is slow or down. With
    the default ``max_replans=1`` that happens once per run (one plan once the
    window is ready), plus one retry every ``replan_every`` observations while
    the server is failing.
    """

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
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if initial_lr is not None and not (math.isfinite(initial_lr) and initial_lr > 0):
            raise ValueError(f"initial_lr must be a positive number, got {initial_lr}")
        super().__init__(log)
        self.url = url.rstrip("/") + "/invocations"
        self.total_steps = int(total_steps)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.replan_every = max(1, replan_every)
        self.max_replans = max_replans
        self.replans = 0
        self.requests_sent = 0
        self.session = session or requests.Session()
        self._rows: dict[int, dict[str, float]] = {}
        self._last: dict[str, int] = {}
        self._run_lr = initial_lr
        self._since_plan = 0
        self._since_try = 0
        self._failing = False
        self._ready_step: int | None = None
        try:
            first = self._request(0)
        except ServerError as exc:
            if initial_lr is None:
                raise ServerError(f"{exc}; start the server, or pass initial_lr=... to run "
                                  "at that lr until the server answers") from exc
            self._failing = True
            self._warn_once(f"server: {exc}")
            first = Recommendation(
                status="fallback", reason=f"server: {exc}; running at the run's own lr",
                step=0, lr_now=initial_lr, schedule=Schedule(step=[], lr=[]),
            )
        self._plan = first

    # ------------------------------------------------------------------ the advisor interface
    def observe(
        self,
        step: int,
        *,
        train_loss: float | None = None,
        val_metric: float | None = None,
        lr: float | None = None,
    ) -> Recommendation:
        """Record what the run logged at ``step``; ask the server when due. Never raises."""
        try:
            self._record(int(step), train_loss=train_loss, val_metric=val_metric, lr=lr)
            self._since_plan += 1
            self._since_try += 1
            if self._due(int(step)):
                self._ask(int(step))
        except Exception as exc:  # the training loop must never die because of us
            self._fallback(self._safe_step(step),
                           f"remote advisor error: {type(exc).__name__}: {exc}")
        return self._plan

    def lr(self, step: int) -> float:
        """The lr to use at ``step`` (log-linear between planned points). Never raises."""
        out = self._scheduled_lr(step)
        if out is not None:
            return out
        # No schedule from the server yet: the run's own lr.
        return self._run_lr if self._run_lr is not None else self._plan.lr_now

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

    def _due(self, step: int) -> bool:
        if self._failing:
            return self._since_try >= self.replan_every  # leave a failing server alone a while
        if self.max_replans is not None and self.replans >= self.max_replans:
            return False
        ready = self._ready_step is None or step >= self._ready_step
        return ready and self._since_plan >= self.replan_every

    def _ask(self, step: int) -> None:
        self._since_try = 0
        try:
            rec = self._request(step)
        except ServerError as exc:
            self._failing = True
            self._fallback(step, f"server: {exc}; keeping the current plan")
            return
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

    def _request(self, step: int) -> Recommendation:
        rows = [{"step": s, **row} for s, row in sorted(self._rows.items())] or [{"step": step}]
        current = self._plan.schedule.model_dump_json() if self._sched_steps.size else ""
        payload: dict[str, Any] = {
            "dataframe_records": rows,
            "params": {"total_steps": self.total_steps, "step": int(step), "current": current},
        }
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            self.requests_sent += 1
            try:
                resp = self.session.post(self.url, json=payload, timeout=self.timeout)
            except requests.Timeout:
                reason = f"no answer from {self.url} within {self.timeout:g} s"
                continue
            except requests.RequestException as exc:
                reason = f"cannot reach {self.url} ({type(exc).__name__})"
                continue
            if resp.status_code >= 500:
                reason = f"{self.url} answered HTTP {resp.status_code}: {_server_message(resp)}"
                continue
            if resp.status_code != 200:
                raise ServerError(f"{self.url} refused the request (HTTP {resp.status_code}): "
                                  f"{_server_message(resp)}")
            rec, ready = _parse_answer(resp, self.url)
            if ready is not None:
                self._ready_step = ready
            return rec
        raise ServerError(f"{reason} ({self.retries + 1} attempts)")

    def _fallback(self, step: int, reason: str) -> None:
        """Keep the plan we follow, marked as a fallback with the reason."""
        self._warn_once(reason)
        self._plan = self._plan.model_copy(update={"status": "fallback", "reason": reason,
                                                   "step": int(step), "lr_now": self.lr(step)})


def _server_message(resp: requests.Response) -> str:
    """The useful line of an MLflow scoring server's error: our own exception's message."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason
    if isinstance(body, dict):
        trace = str(body.get("stack_trace") or "").strip().splitlines()
        if trace:
            return trace[-1][:300]
        return str(body.get("message") or body)[:300]
    return str(body)[:300]


def _parse_answer(resp: requests.Response, url: str) -> tuple[Recommendation, int | None]:
    """The recommendation in a ``{"predictions": [row]}`` answer, and the row's ``ready_step``."""
    try:
        body: Any = resp.json()
        row = body["predictions"][0]
        rec = recommendation_from_row(row)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        # InputError is a ValueError: a row that is no recommendation lands here too.
        raise ServerError(f"{url} answered something that is not a recommendation "
                          f"({exc}): {resp.text[:200]!r}") from exc
    ready = row.get("ready_step")
    if isinstance(ready, (int, float)) and math.isfinite(ready):
        return rec, int(ready)
    return rec, None
