"""Full metric histories of MLflow runs: the bulk endpoints of a tracking server, else the
client (see :mod:`tracker_sched.sources.mlflow_source`, which reads the runs)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import requests
    from mlflow.tracking import MlflowClient

log = logging.getLogger("tracker_sched.sources.mlflow_source")  # the source's own logger

BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
INTERVAL_ENDPOINT = "/api/2.0/mlflow/metrics/get-history-bulk-interval"
INTERVAL_MAX_POINTS = 2_500  # per run and request (MAX_RESULTS_PER_RUN, mlflow server)
# Limits of the bulk endpoint (mlflow/server/handlers.py, get_metric_history_bulk_handler):
# more than 100 run ids is a 400; more than 25,000 points is silently cut off.
BULK_MAX_RUNS = 100
BULK_MAX_POINTS = 25_000
Point = tuple[int, int, float]  # (step, timestamp_ms, value)


class _BulkUnavailable(Exception):
    """The bulk endpoint cannot serve this store; use the client instead."""


def _progress(total: int, enabled: bool | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit="run", disable=disable, leave=False)


def _by_run(metrics: list[dict[str, Any]], run_ids: list[str]) -> dict[str, list[Point]]:
    """A bulk response's points per run. Protobuf JSON may send int64 fields as strings."""
    by_run: dict[str, list[Point]] = {rid: [] for rid in run_ids}
    try:
        for m in metrics:
            by_run.setdefault(m["run_id"], []).append(
                (int(m.get("step", 0)), int(m.get("timestamp", 0)), float(m["value"])))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _BulkUnavailable(f"unexpected metric in a bulk response: {exc}") from exc
    return by_run


class HistoryReader:
    """The history half of :class:`~tracker_sched.sources.mlflow_source.MlflowSource`."""

    max_workers: int
    use_bulk: bool
    sample_points: int | None
    bulk_workers: int
    bulk_endpoint: Literal["interval", "full"]
    timeout_s: float
    progress: bool | None
    history_path: str

    def _bulk_session(self, uri: str) -> requests.Session:
        """A session with MLflow's own request headers and auth; raises _BulkUnavailable
        for schemes that only MLflow's transport implements (SigV4, auth plugins, Databricks)."""
        import requests
        from mlflow.tracking.request_header.registry import resolve_request_headers
        from mlflow.utils.credentials import get_default_host_creds

        creds = get_default_host_creds(uri)  # type: ignore[no-untyped-call]
        if creds.aws_sigv4 or creds.auth:
            raise _BulkUnavailable("the tracking auth scheme needs MLflow's own client")
        session = requests.Session()
        session.headers.update(resolve_request_headers())  # type: ignore[no-untyped-call]
        if creds.username and creds.password:
            session.auth = (creds.username, creds.password)
        elif creds.token:
            session.headers["Authorization"] = f"Bearer {creds.token}"
        if creds.ignore_tls_verification:
            session.verify = False
        elif creds.server_cert_path:
            session.verify = creds.server_cert_path
        if creds.client_cert_path:
            session.cert = creds.client_cert_path
        try:  # MLflow 3 workspaces (MLFLOW_WORKSPACE): the header MLflow's client sends
            from mlflow.utils.workspace_context import get_request_workspace
            from mlflow.utils.workspace_utils import WORKSPACE_HEADER_NAME
        except ImportError:
            return session
        if workspace := get_request_workspace():
            session.headers.setdefault(WORKSPACE_HEADER_NAME, workspace)
        return session

    def _get_metrics(self, session: requests.Session, url: str,
                     params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """One bulk request: its ``metrics`` list; any failure is _BulkUnavailable."""
        import requests

        try:
            resp = session.get(url, params=params, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise _BulkUnavailable(f"request failed: {exc}") from exc
        if resp.status_code != 200:
            raise _BulkUnavailable(f"HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            body = resp.json() if resp.content.strip() else {}
            metrics = body.get("metrics", [])
            if not isinstance(metrics, list):
                raise TypeError("metrics is not a list")
        except (ValueError, TypeError, AttributeError) as exc:
            raise _BulkUnavailable(f"unexpected response: {resp.text[:200]}") from exc
        return metrics

    def _bulk_get(
        self, session: requests.Session, uri: str, key: str, run_ids: list[str],
    ) -> Iterator[tuple[str, list[Point]]]:
        """Histories of ``key`` for ``run_ids``; a chunk that comes back full is split."""
        metrics = self._get_metrics(session, uri.rstrip("/") + BULK_ENDPOINT, [
            *(("run_id", rid) for rid in run_ids), ("metric_key", key),
            ("max_results", str(BULK_MAX_POINTS))])
        if len(metrics) >= BULK_MAX_POINTS:
            if len(run_ids) == 1:  # one run alone fills a response: page it with the client
                raise _BulkUnavailable(f"run {run_ids[0]} has over {BULK_MAX_POINTS} points")
            half = len(run_ids) // 2
            yield from self._bulk_get(session, uri, key, run_ids[:half])
            yield from self._bulk_get(session, uri, key, run_ids[half:])
            return
        yield from _by_run(metrics, run_ids).items()

    def _interval_get(
        self, session: requests.Session, uri: str, key: str, run_ids: list[str],
    ) -> dict[str, list[Point]]:
        """Histories of ``key`` for up to 100 runs, at most 2,500 points per run."""
        n = self.sample_points or INTERVAL_MAX_POINTS
        metrics = self._get_metrics(session, uri.rstrip("/") + INTERVAL_ENDPOINT, [
            *(("run_ids", rid) for rid in run_ids), ("metric_key", key), ("max_results", str(n))])
        by_run = _by_run(metrics, run_ids)
        for points in by_run.values():
            points.sort(key=lambda p: (p[1], p[0], p[2]))  # the order get_metric_history uses
        return by_run

    def _full_get(self, session: requests.Session, uri: str, key: str,
                  run_ids: list[str], first: int = 10) -> dict[str, list[Point]]:
        """Exact histories through the 25,000-point bulk endpoint, chunked by size."""
        out: dict[str, list[Point]] = {}
        # Start small (a full response is a wasted request) and grow from what comes back.
        per_run, i = min(BULK_MAX_RUNS, max(1, first)), 0
        while i < len(run_ids):
            part = run_ids[i:i + per_run]
            n_points = 0
            for rid, points in self._bulk_get(session, uri, key, part):
                out[rid] = points
                n_points += len(points)
            i += len(part)
            if n_points:  # size the next requests by what this one held
                per_run = max(1, min(BULK_MAX_RUNS,
                                     int(0.8 * BULK_MAX_POINTS * len(part) / n_points)))
        return out

    def _read_bulk(self, uri: str, keys: dict[str, list[str]], bar: Any,
                   out: dict[str, dict[str, list[Point]]]) -> None:
        session = self._bulk_session(uri)
        run_ids = list(keys)
        jobs: list[tuple[str, list[str]]] = []  # (key, run ids of one request)
        for start in range(0, len(run_ids), BULK_MAX_RUNS):
            chunk = run_ids[start:start + BULK_MAX_RUNS]
            for key in sorted({k for rid in chunk for k in keys[rid]}):
                jobs.append((key, [rid for rid in chunk if key in keys[rid]]))
        total_keys = sum(len(k) for k in keys.values()) or 1

        def job(key: str, part: list[str]) -> tuple[str, dict[str, list[Point]]]:
            if self.bulk_endpoint == "full":
                return key, self._full_get(session, uri, key, part)
            try:
                got = self._interval_get(session, uri, key, part)
            except _BulkUnavailable as exc:  # an older server: the exact endpoint only
                log.debug("interval endpoint unavailable (%s); using %s", exc, BULK_ENDPOINT)
                return key, self._full_get(session, uri, key, part)
            if self.sample_points is None:
                cut = [rid for rid, pts in got.items() if len(pts) >= INTERVAL_MAX_POINTS]
                if cut:  # possibly sampled: read these exactly
                    first = int(0.8 * BULK_MAX_POINTS / INTERVAL_MAX_POINTS)
                    got.update(self._full_get(session, uri, key, cut, first))
            return key, got

        try:
            with ThreadPoolExecutor(max_workers=self.bulk_workers) as pool:
                for key, got in pool.map(lambda j: job(*j), jobs):
                    for rid, points in got.items():
                        out[rid][key] = points
                    bar.update(len(got) * len(keys) / total_keys)
        finally:
            session.close()

    def _read_client(self, client: MlflowClient, keys: dict[str, list[str]], bar: Any,
                     out: dict[str, dict[str, list[Point]]]) -> None:
        def one_run(rid: str) -> tuple[str, dict[str, list[Point]]]:
            hist = {}
            for key in keys[rid]:
                hist[key] = [(int(m.step), int(m.timestamp), float(m.value))
                             for m in client.get_metric_history(rid, key)]
            return rid, hist

        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            for rid, hist in pool.map(one_run, list(keys)):
                out[rid] = hist
                bar.update(1)

    def _histories(self, client: MlflowClient, uri: str,
                   keys: dict[str, list[str]]) -> dict[str, dict[str, list[Point]]]:
        out: dict[str, dict[str, list[Point]]] = {rid: {} for rid in keys}
        is_http = uri.lower().startswith(("http://", "https://"))
        if self.use_bulk and is_http:
            with _progress(len(keys), self.progress, "mlflow histories (bulk)") as bar:
                try:
                    self._read_bulk(uri, keys, bar, out)
                    self.history_path = "bulk"
                    return out
                except _BulkUnavailable as exc:
                    log.warning("MLflow bulk history endpoint unavailable (%s); "
                                "falling back to get_metric_history", exc)
        out = {rid: {} for rid in keys}
        with _progress(len(keys), self.progress, "mlflow histories") as bar:
            self._read_client(client, keys, bar, out)
        self.history_path = "client"
        return out
