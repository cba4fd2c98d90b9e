"""A loopback W&B GraphQL stub: just enough of the server for ``wandb.Api`` reads.

No W&B server can run here (the real one is a closed Docker image), and every
public-API call of wandb 0.31 goes through the Go ``wandb-core`` process, so
HTTP mocking libraries never see it. This stub is a real HTTP server on
127.0.0.1 that ``WANDB_BASE_URL`` points at. It answers the GraphQL operations
wandb 0.31 sends for reading runs, found by logging the operation names it did
not know (see :attr:`GraphQLStub.unknown`) and reading
``wandb/apis/public/runs.py`` and the query texts in ``wandb-core``:

``Viewer`` (login check), ``GetDefaultEntity``, ``ServerFeaturesQuery`` (no
optional features), ``GetSweep``, ``Runs``, ``Run``, ``RunState``,
``RunHistoryKeys``, ``RunParquetHistory`` (answered with no parquet URLs and no
live data, so wandb-core pages the history instead), ``HistoryPage`` and
``SampledHistoryPage``; for artifacts ``ArtifactMembershipByName``,
``FetchArtifactManifest`` and ``GetArtifactMembershipFileUrls``, whose URLs point
back at the stub (plain GETs for the manifest and the files).

It is a contract test's server, pinned to wandb 0.31: if a wandb upgrade
changes the queries, the names in :attr:`GraphQLStub.unknown` say which.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Row = dict[str, Any]


@dataclass
class StubRun:
    """One run as the stub serves it. ``rows`` are history rows, each with ``_step``."""

    name: str  # the run id
    display_name: str
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    state: str = "finished"
    sweep: str | None = None
    rows: list[Row] = field(default_factory=list)
    fail_history: bool = False  # history requests answer HTTP 500

    @property
    def last_step(self) -> int:
        return max((int(r["_step"]) for r in self.rows), default=-1)

    def node(self, project_id: int) -> dict[str, Any]:
        keys: dict[str, Any] = {}
        for r in self.rows:
            for k in r:
                keys.setdefault(k, {"typeCounts": [{"type": "number", "count": 0}]})
        return {
            "projectId": project_id, "id": f"run-{self.name}", "tags": [], "name": self.name,
            "displayName": self.display_name, "sweepName": self.sweep,
            "state": self.state,
            # W&B serves config as {"key": {"value": v, "desc": null}}; JSON strings.
            "config": json.dumps({k: {"value": v, "desc": None} for k, v in self.config.items()}),
            "group": None, "jobType": None, "commit": None, "readOnly": False,
            "createdAt": "2026-01-01T00:00:00", "heartbeatAt": "2026-01-01T00:10:00",
            "description": None, "notes": None, "systemMetrics": "{}",
            "summaryMetrics": _dumps(self.summary), "historyLineCount": len(self.rows),
            "user": {"name": "stub", "username": "stub"},
            "historyKeys": {"lastStep": self.last_step, "keys": keys},
        }


def _dumps(obj: Any) -> str:
    # The real server writes non-finite floats as the bare tokens NaN/Infinity.
    return json.dumps(obj, allow_nan=True)


@dataclass
class StubArtifact:
    """A folder served as artifact ``name`` with ``aliases``, files fetched over HTTP GET."""

    name: str
    type: str
    folder: Path
    aliases: list[str] = field(default_factory=lambda: ["latest"])
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return base64.b64encode(f"Artifact:{self.name}".encode()).decode()

    def files(self) -> dict[str, Path]:
        return {p.relative_to(self.folder).as_posix(): p
                for p in sorted(self.folder.rglob("*")) if p.is_file()}

    def manifest(self) -> dict[str, Any]:
        """The artifact manifest JSON (storage policy v1): each file's base64 MD5 and size."""
        contents = {}
        for rel, path in self.files().items():
            data = path.read_bytes()
            contents[rel] = {"digest": base64.b64encode(hashlib.md5(data).digest()).decode(),
                             "size": len(data)}
        return {"version": 1, "storagePolicy": "wandb-storage-policy-v1",
                "storagePolicyConfig": {"storageLayout": "V2"}, "contents": contents}

    def digest(self) -> str:
        return hashlib.md5(json.dumps(self.manifest(), sort_keys=True).encode()).hexdigest()


class _GraphQLError(Exception):
    pass


class _HTTPError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class GraphQLStub:
    """Serve ``runs`` of project ``entity/project`` (and the named ``sweeps``) on 127.0.0.1.

    >>> with GraphQLStub("e", "p", runs=[...], sweeps={"s1"}) as stub:  # doctest: +SKIP
    ...     os.environ["WANDB_BASE_URL"] = stub.url
    """

    def __init__(self, entity: str, project: str, runs: list[StubRun],
                 sweeps: set[str] | None = None,
                 artifacts: list[StubArtifact] | None = None) -> None:
        self.entity = entity
        self.project = project
        self.runs = {r.name: r for r in runs}
        self.sweeps = set(sweeps or ())
        self.artifacts = {a.name: a for a in artifacts or ()}
        self.downloads: list[str] = []  # paths of the files fetched with GET
        self.operations: list[str] = []  # every operation name served, in order
        self.unknown: list[str] = []  # operation names the stub does not answer
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "Viewer": self._viewer, "GetDefaultEntity": self._viewer,
            "GetSweep": self._get_sweep, "Runs": self._runs,
            "Run": self._run, "RunState": self._run_state, "RunHistoryKeys": self._history_keys,
            "RunParquetHistory": self._parquet, "HistoryPage": self._history_page,
            "SampledHistoryPage": self._sampled_page,
            "ArtifactMembershipByName": self._artifact_by_name,
            "FetchArtifactManifest": self._artifact_manifest,
            "GetArtifactMembershipFileUrls": self._artifact_file_urls,
            "ServerFeaturesQuery": lambda v: {"serverInfo": {"features": []}},
        }

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> GraphQLStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> GraphQLStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- dispatch ---------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = stub.answer(self.path, body)
                self._send(status, payload.encode(), "application/json")

            def do_GET(self) -> None:
                status, data = stub.file(self.path)
                self._send(status, data, "application/octet-stream")

            def _send(self, status: int, out: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        return Handler

    def answer(self, path: str, body: bytes) -> tuple[int, str]:
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return 400, json.dumps({"errors": [{"message": "body is not JSON"}]})
        name = str(req.get("operationName") or _operation_name(req.get("query", "")))
        with self._lock:
            self.operations.append(name)
        op = self._ops.get(name)
        if op is None:
            with self._lock:
                self.unknown.append(name)
            return 200, json.dumps({"errors": [{"message": f"stub: unknown operation {name}"}]})
        try:
            data = op(req.get("variables") or {})
        except _HTTPError as exc:
            return exc.status, json.dumps({"error": str(exc)})
        except _GraphQLError as exc:
            return 200, json.dumps({"data": None, "errors": [{"message": str(exc)}]})
        return 200, _dumps({"data": data})

    def file(self, path: str) -> tuple[int, bytes]:
        """GET ``/stub-artifacts/NAME/manifest`` or ``/stub-artifacts/NAME/files/PATH``."""
        parts = urllib.parse.unquote(path).lstrip("/").split("/", 3)
        art = self.artifacts.get(parts[1]) if len(parts) > 2 and parts[0] == "stub-artifacts" \
            else None
        if art is None:
            return 404, b"not found"
        with self._lock:
            self.downloads.append(path)
        if parts[2] == "manifest":
            return 200, json.dumps(art.manifest()).encode()
        local = art.files().get(parts[3]) if len(parts) == 4 else None
        return (200, local.read_bytes()) if local else (404, b"not found")

    # -- operations -------------------------------------------------------------------------

    def _project_ok(self, v: dict[str, Any]) -> bool:
        return v.get("entity") == self.entity and v.get("project") == self.project

    def _viewer(self, v: dict[str, Any]) -> Any:
        return {"viewer": {"id": "VXNlcjox", "entity": self.entity, "username": "stub",
                           "email": "stub@example.invalid", "flags": "{}",
                           "teams": {"edges": []}}}

    def _get_sweep(self, v: dict[str, Any]) -> Any:
        if not self._project_ok(v):
            return {"project": None}
        name = v.get("name")
        if name not in self.sweeps:
            return {"project": {"sweep": None}}
        count = sum(1 for r in self.runs.values() if r.sweep == name)
        return {"project": {"sweep": {
            "__typename": "Sweep", "id": f"sweep-{name}", "name": name, "displayName": name,
            "method": "grid", "state": "FINISHED", "description": None, "bestLoss": None,
            "config": "{}", "createdAt": "2026-01-01T00:00:00",
            "updatedAt": "2026-01-01T00:00:00", "runCount": count, "runCountExpected": count,
        }}}

    def _runs(self, v: dict[str, Any]) -> Any:
        if not self._project_ok(v):
            return {"project": None}
        filters = json.loads(v.get("filters") or "{}")
        matched = [r for r in self.runs.values() if _matches(r, filters)]
        start = int(v["cursor"]) if v.get("cursor") else 0
        per_page = int(v.get("perPage") or 50)
        page = matched[start:start + per_page]
        edges = [{"node": r.node(1), "cursor": str(start + i + 1)} for i, r in enumerate(page)]
        return {"project": {
            "internalId": "1", "runCount": len(matched), "readOnly": False,
            "runs": {"edges": edges, "pageInfo": {
                "endCursor": edges[-1]["cursor"] if edges else None,
                "hasNextPage": start + per_page < len(matched)}},
        }}

    def _find(self, v: dict[str, Any], key: str) -> StubRun | None:
        if not self._project_ok(v):
            return None
        return self.runs.get(str(v.get(key)))

    def _run(self, v: dict[str, Any]) -> Any:
        run = self._find(v, "name")
        return {"project": {"run": run.node(1) if run else None}}

    def _run_state(self, v: dict[str, Any]) -> Any:
        run = self._find(v, "run") or self._find(v, "name")
        return {"project": {"run": {"state": run.state} if run else None}}

    def _history_keys(self, v: dict[str, Any]) -> Any:
        run = self._find(v, "name")
        return {"project": {"run": {"historyKeys": run.node(1)["historyKeys"]} if run else None}}

    def _history_run(self, v: dict[str, Any], key: str) -> StubRun:
        run = self._find(v, key)
        if run is None:
            raise _GraphQLError(f"run {v.get(key)} not found")
        if run.fail_history:
            raise _HTTPError(500, "stub: history storage unavailable")
        return run

    def _parquet(self, v: dict[str, Any]) -> Any:
        self._history_run(v, "runName")
        return {"project": {"run": {"parquetHistory": {"parquetUrls": [], "liveData": []}}}}

    def _history_page(self, v: dict[str, Any]) -> Any:
        run = self._history_run(v, "run")
        lo, hi, n = int(v["minStep"]), int(v["maxStep"]), int(v["pageSize"])
        rows = [r for r in run.rows if lo <= int(r["_step"]) < hi][:n]
        return {"project": {"run": {"history": [_dumps(r) for r in rows]}}}

    def _sampled_page(self, v: dict[str, Any]) -> Any:
        run = self._history_run(v, "run")
        spec = json.loads(v["spec"])
        lo = int(spec.get("minStep", 0))
        hi = int(spec.get("maxStep", math.inf))
        keys = spec.get("keys") or []
        rows = []
        for r in run.rows:
            if not lo <= int(r["_step"]) < hi:
                continue
            if keys and not all(k in r for k in keys if k != "_step"):
                continue
            rows.append({k: r[k] for k in keys if k in r} if keys else r)
        return {"project": {"run": {"sampledHistory": [rows[: int(spec.get("samples", 10**9))]]}}}


    # -- artifacts --------------------------------------------------------------------------

    def _project_info(self) -> dict[str, Any]:
        return {"id": "UHJvamVjdDox", "internalId": "1", "name": self.project,
                "entity": {"name": self.entity}}

    def _artifact_named(self, name: str) -> tuple[StubArtifact, str] | None:
        base, _, alias = name.partition(":")
        art = self.artifacts.get(base)
        if art is None or alias not in (*art.aliases, "v0"):
            return None
        return art, alias

    def _artifact_by_name(self, v: dict[str, Any]) -> Any:
        if not self._project_ok(v):
            return {"project": None}
        found = self._artifact_named(str(v.get("name")))
        if found is None:
            return {"project": {"artifactCollectionMembership": None}}
        art, _ = found
        collection = {"__typename": "ArtifactSequence", "name": art.name,
                      "project": self._project_info()}
        aliases = [{"__typename": "ArtifactAlias", "id": f"alias-{a}", "alias": a}
                   for a in art.aliases]
        size = sum(p.stat().st_size for p in art.files().values())
        return {"project": {"artifactCollectionMembership": {
            "__typename": "ArtifactCollectionMembership", "id": f"membership-{art.name}",
            "versionIndex": 0, "createdAt": "2026-01-01T00:00:00", "aliases": aliases,
            "artifactCollection": collection,
            "artifact": {
                "__typename": "Artifact", "id": art.id, "artifactSequence": collection,
                "versionIndex": 0, "artifactType": {"name": art.type}, "description": None,
                "metadata": json.dumps(art.metadata), "ttlDurationSeconds": -1,
                "ttlIsInherited": True, "tags": [], "historyStep": None, "state": "COMMITTED",
                "size": size, "digest": art.digest(), "digestAlgorithm": "MANIFEST_MD5",
                "commitHash": "0" * 12, "fileCount": len(art.files()),
                "createdAt": "2026-01-01T00:00:00", "updatedAt": "2026-01-01T00:00:00",
                "aliases": [{**a, "artifactCollection": collection} for a in aliases],
            },
        }}}

    def _artifact_manifest(self, v: dict[str, Any]) -> Any:
        art = next((a for a in self.artifacts.values() if a.id == v.get("id")), None)
        if art is None:
            return {"artifact": None}
        url = f"{self.url}/stub-artifacts/{art.name}/manifest"
        return {"artifact": {"currentManifest": {"file": {"directUrl": url}}}}

    def _artifact_file_urls(self, v: dict[str, Any]) -> Any:
        found = self._artifact_named(f"{v.get('collection')}:{v.get('alias')}")
        if not self._project_ok(v) or found is None:
            return {"project": None}
        art, _ = found
        edges = [{"node": {"__typename": "File", "name": rel,
                           "directUrl": f"{self.url}/stub-artifacts/{art.name}/files/{rel}"}}
                 for rel in art.files()]
        return {"project": {"artifactCollection": {
            "__typename": "ArtifactSequence", "artifactMembership": {"files": {
                "pageInfo": {"__typename": "PageInfo", "endCursor": None, "hasNextPage": False},
                "edges": edges}}}}}


def _operation_name(query: str) -> str:
    words = query.replace("(", " ").replace("{", " ").split()
    for i, w in enumerate(words[:-1]):
        if w in ("query", "mutation"):
            return words[i + 1]
    return "?"


def _matches(run: StubRun, filters: dict[str, Any]) -> bool:
    """The few MongoDB-style run filters the tests use: $and, sweep, state, config.*."""
    for key, want in filters.items():
        if key == "$and":
            if not all(_matches(run, f) for f in want):
                return False
        elif key == "sweep":
            if run.sweep != want:
                return False
        elif key == "state":
            if run.state != want:
                return False
        elif key.startswith("config."):
            name = key[len("config."):].removesuffix(".value")
            if run.config.get(name) != want:
                return False
        else:
            raise _GraphQLError(f"stub: filter key {key!r} not supported")
    return True
