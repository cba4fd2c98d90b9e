"""Talking to a served tracker-sched model: one POST to ``/invocations``, retried, and its
answer read back (the recommendation, when the window is ready, a stop decision).

:class:`~tracker_sched.advising.remote.RemoteAdvisor` decides *when* to ask and what to do
with the answer; :class:`ServedModel` is how it asks. It needs only ``requests`` (no torch).
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import requests

from tracker_sched.advising.serving import recommendation_from_row
from tracker_sched.errors import TrackerSchedError
from tracker_sched.model.stop_odds import StopDecision
from tracker_sched.schema import Recommendation
from tracker_sched.util.redact import redact_url

BACKOFF_S = 0.2  # first retry delay; doubles per retry


class ServerError(TrackerSchedError):
    """The served model did not answer usefully; the message says why (never leaves the advisor)."""


class Answer(NamedTuple):
    """What a served model answered to one request."""

    recommendation: Recommendation
    ready_step: int | None  # the first step at which the model's window is full; None: unsaid
    stop: StopDecision | None  # None: no stop decision asked for, or none answered
    mode_reason: str | None = None  # why the served bundle follows its mode; None: unsaid


class ServedModel:
    """A served model's ``/invocations`` endpoint, asked with retries.

    Args:
        url: the server's base URL (``/invocations`` is appended); credentials in it are
            used, and shown only masked (:attr:`url_shown`).
        timeout: seconds per HTTP request (connect and read each).
        retries: extra attempts after a timeout, a connection error or a 5xx answer, with
            backoff (0.2 s, 0.4 s, ...). A 4xx answer (bad input) is not retried.
        session: a ``requests.Session`` to reuse (auth, proxies, keep-alive); without one,
            its own, closed by :meth:`close`.
    """

    def __init__(self, url: str, *, timeout: float = 2.0, retries: int = 2,
                 session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/") + "/invocations"
        self.url_shown = redact_url(self.url)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.requests_sent = 0
        self._own_session = session is None
        self.session = session or requests.Session()

    def ask(self, payload: dict[str, Any]) -> Answer:
        """POST ``payload``; the answer, or :class:`ServerError` saying why there is none.

        Args:
            payload: the request body (the serving format: ``dataframe_records``, ``params``).

        Returns:
            The :class:`Answer`.

        Raises:
            ServerError: no usable answer after the retries, or a refusal (4xx).
        """
        shown = self.url_shown
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            self.requests_sent += 1
            try:
                resp = self.session.post(self.url, json=payload, timeout=self.timeout)
            except requests.Timeout:
                reason = f"no answer from {shown} within {self.timeout:g} s"
                continue
            except requests.RequestException as exc:
                reason = f"cannot reach {shown} ({type(exc).__name__})"
                continue
            if resp.status_code >= 500:
                reason = f"{shown} answered HTTP {resp.status_code}: {_server_message(resp)}"
                continue
            if resp.status_code != 200:
                raise ServerError(f"{shown} refused the request (HTTP {resp.status_code}): "
                                  f"{_server_message(resp)}")
            return _parse_answer(resp, shown)
        raise ServerError(f"{reason} ({self.retries + 1} attempts)")

    def close(self) -> None:
        """Close the session if it is this object's own."""
        if self._own_session:
            self.session.close()


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


def _parse_answer(resp: requests.Response, url: str) -> Answer:
    """The recommendation in a ``{"predictions": [row]}`` answer, the row's ``ready_step``,
    its stop decision (None when not asked, or not one) and its ``mode_reason`` (None from a
    server before it was answered)."""
    try:
        body: Any = resp.json()
        row = body["predictions"][0]
        rec = recommendation_from_row(row)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        # InputError is a ValueError: a row that is no recommendation lands here too.
        raise ServerError(f"{url} answered something that is not a recommendation "
                          f"({exc}): {resp.text[:200]!r}") from exc
    stop = None
    raw = row.get("stop")
    if isinstance(raw, str) and raw:
        try:
            stop = StopDecision.model_validate_json(raw)
        except ValueError:
            stop = StopDecision(reason=f"{url} answered a stop decision that is not one; "
                                "not stopping")
    why = row.get("mode_reason")
    why = why if isinstance(why, str) and why else None
    ready = row.get("ready_step")
    if isinstance(ready, (int, float)) and math.isfinite(ready):
        return Answer(rec, int(ready), stop, why)
    return Answer(rec, None, stop, why)
