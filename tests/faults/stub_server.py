"""A loopback HTTP server that plays a served model badly on cue: it hangs, answers garbage,
fails or resets the connection. A stub, because a real scoring server cannot be made to
misbehave on cue; the real one is used where it can be (tests/mlflow/test_remote.py).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tracker_sched.advising.serving import recommendation_to_row
from tracker_sched.schema import Recommendation, Schedule


@dataclass
class Reply:
    """One answer: after ``delay`` s, HTTP ``status`` with ``body`` (bytes sent as is), or a
    dropped connection (``reset``)."""

    body: bytes = b"{}"
    status: int = 200
    delay: float = 0.0
    reset: bool = False


def plan_reply(status: str = "planned", lr: float = 0.01, ready_step: int = 0,
               delay: float = 0.0) -> Reply:
    rec = Recommendation(status=status, step=0, lr_now=lr,  # type: ignore[arg-type]
                         schedule=Schedule(step=[0, 100], lr=[lr, lr / 10]))
    row = {**recommendation_to_row(rec), "ready_step": ready_step}
    return Reply(json.dumps({"predictions": [row]}).encode(), delay=delay)


@dataclass
class Stub:
    """The server's state: what to answer (``script`` by request number, else ``default``)."""

    url: str = ""
    default: Reply = field(default_factory=plan_reply)
    script: dict[int, Reply] = field(default_factory=dict)
    requests: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply_for(self, n: int) -> Reply:
        return self.script.get(n, self.default)


@contextlib.contextmanager
def stub_server(configure: Callable[[Stub], None] | None = None) -> Iterator[Stub]:
    stub = Stub()
    if configure is not None:
        configure(stub)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with stub.lock:
                stub.requests += 1
                n = stub.requests
                with contextlib.suppress(ValueError):
                    stub.bodies.append(json.loads(body))
            reply = stub.reply_for(n)
            time.sleep(reply.delay)
            if reply.reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.close()
                return
            with contextlib.suppress(OSError):  # the client may have given up already
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
