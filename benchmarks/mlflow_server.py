"""A real local ``mlflow server`` (sqlite, one worker, 127.0.0.1) for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

HEALTH_TIMEOUT_S = 60.0
PING_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalMlflowServer:
    """``mlflow server`` storing under ``root`` on 127.0.0.1, in its own process group.

    :meth:`start` can be called again after :meth:`stop` or :meth:`kill`: a new process on
    the same store (and a new port), as after a crash and restart. One worker by default
    (about 0.5 GB, /health in 6-12 s); ``mlflow server``'s own default is 4 (about 2.6 GB).
    """

    def __init__(self, root: Path, workers: int = 1) -> None:
        self.root = root
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.uri = ""

    def start(self) -> str:
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        env.pop("MLFLOW_TRACKING_URI", None)
        with (root / "server.log").open("ab") as log:
            self.proc = proc = subprocess.Popen(
                [os.path.join(bin_dir, "mlflow"), "server",
                 "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                 "--default-artifact-root", str(root / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(port), "--workers", str(self.workers)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.uri = uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}: "
                                   + (root / "server.log").read_text(errors="replace")[-2000:])
            try:
                if requests.get(uri + "/health", timeout=2).status_code == 200:
                    return uri
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mlflow server did not answer /health in {HEALTH_TIMEOUT_S}s: "
                                   + (root / "server.log").read_text(errors="replace")[-2000:])
            time.sleep(0.25)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop our own process group only (start_new_session): the server and its workers."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        self.proc = None

    def kill(self) -> None:
        """As a crash: SIGKILL, no clean shutdown."""
        self.stop(signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def local_mlflow_server(root: Path, workers: int = 1) -> Iterator[str]:
    """Start a server storing under ``root``; yield its URI; stop it by its own process group."""
    server = LocalMlflowServer(root, workers)
    try:
        yield server.start()
    finally:
        server.stop()


class ServedModel:
    """``mlflow models serve`` of ``model_uri`` on 127.0.0.1, in its own process group,
    stopped by its pid. ``workers`` uvicorn workers (MLflow's default is 1)."""

    def __init__(self, model_uri: str, tracking_uri: str, log_path: Path,
                 workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        bin_dir = str(Path(sys.executable).parent)  # mlflow execs uvicorn from PATH
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
               "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", model_uri,
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port),
             "-w", str(workers)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.log_path = log_path

    def wait(self) -> None:
        deadline = time.monotonic() + PING_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/ping", timeout=1).status_code == 200:
                    return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError("mlflow models serve did not answer /ping: "
                           + self.log_path.read_text(errors="replace")[-2000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # The CLI process can exit before its uvicorn child stops listening: wait for the
        # port to refuse connections, so "stopped" means no request is answered any more.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                break
            time.sleep(0.1)
        self.log.close()
