"""The real embedded stack for the SDK's tests, and two instruments of our own between the SDK and it.

``bridge`` starts ``manage.py run_bridge`` once per module (its own SQLite in a temp dir, its own port, the
Redis of ``REDIS_URL``: db 11 in this area's runs, terminal names of its own so that nothing of another
stack's Redis keys is shared) with an emulated broker and two terminals, as ``make run`` does, and makes an
API key with ``manage.py create_api_key``. ``RecordingTransport`` is httpx's own transport with a log of
what went over it; ``DropProxy`` is a TCP proxy that can drop a connection right after the bridge answered.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from bridge_project.processes import start_group, stop_group
from tests.procs import ROOT, free_port
from tests.waiting import wait_until

# The quick start's demo account (README.md): any login opens a demo account the first time.
DEMO = {"login": 5001, "password": "secret", "server": "Demo", "account_id": "demo-1"}


@dataclass
class Bridge:
    url: str
    key: str
    env: dict[str, str]
    log_path: Path
    var_dir: Path
    terminals: dict[str, str]  # name -> mt5sim address
    proc: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def web_pids(self) -> dict[str, int]:
        """The daphne processes run_bridge runs now (its log names each start and restart)."""
        pids: dict[str, int] = {}
        for name, pid in re.findall(r"(?:re)?started (web(?:-\d+)?) \(pid (\d+)", self.log()):
            pids[name] = int(pid)
        return pids

    def api_key(self, workspace: str) -> str:
        return create_key(self.env, workspace)


def create_key(env: dict[str, str], workspace: str) -> str:
    out = subprocess.run([sys.executable, "manage.py", "create_api_key", "--workspace", workspace], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    tmp = tmp_path_factory.mktemp("sdk-stack")
    port = free_port()
    suffix = secrets.token_hex(2)
    names = [f"sdk{suffix}-1", f"sdk{suffix}-2"]
    addresses = {name: f"127.0.0.1:{free_port()}" for name in names}
    terminals = tmp / "terminals.yaml"
    terminals.write_text(yaml.safe_dump({
        "sim_broker": {"address": f"127.0.0.1:{free_port()}", "servers": {"MT5Sim-Demo": 7200}},
        "terminals": [{"name": n, "backend": "sim", "address": a} for n, a in addresses.items()],
    }, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # the embedded default: SQLite
    env.update(
        BRIDGE_VAR_DIR=str(tmp / "var"),
        BRIDGE_TERMINALS_FILE=str(terminals),
        BRIDGE_PORT=str(port),
        BRIDGE_WEB_PROCESSES="2",
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/11"),
        BRIDGE_SESSION_TTL="15",  # heartbeats every 5 s: the background heartbeats are exercised
        # The rate of failed credentials per address, small enough that a test can reach it (429 with
        # Retry-After) and short enough that it waits seconds, not a minute.
        BRIDGE_THROTTLE_IP_RATE="3/4s",
        # Stacks of successive modules reuse workspace and key ids 1, 2 in the one Redis db: the connect
        # rate per key would add up across them.
        BRIDGE_EVENTS_CONNECT_RATE="600/min",
    )
    log_path = tmp / "run_bridge.log"
    proc = start_group([sys.executable, "manage.py", "run_bridge"], log_path=log_path, cwd=ROOT, env=env)
    try:
        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return "the bridge is up" in log_path.read_text()

        wait_until(up, 150, "run_bridge up")
        key = create_key(env, "sdk")
        yield Bridge(url=f"http://127.0.0.1:{port}", key=key, env=env, log_path=log_path, var_dir=tmp / "var",
                     terminals=addresses, proc=proc)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C to the supervisor: it stops its children itself
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            stop_group(proc)


@dataclass
class Exchange:
    method: str
    path: str
    request_headers: dict[str, str]
    status: int | None
    response_headers: dict[str, str]
    sent_at: float
    error: str | None = None


class RecordingTransport(httpx.HTTPTransport):
    """httpx's real transport, keeping a log of every request it sent and what came back."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.log: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        entry = Exchange(request.method, request.url.path, dict(request.headers), None, {}, time.monotonic())
        self.log.append(entry)
        try:
            response = super().handle_request(request)
        except Exception as exc:
            entry.error = repr(exc)
            raise
        entry.status, entry.response_headers = response.status_code, dict(response.headers)
        return response

    def of(self, method: str, path_end: str) -> list[Exchange]:
        return [e for e in self.log if e.method == method and e.path.endswith(path_end)]


@dataclass
class DropProxy:
    """A TCP proxy to the bridge. While armed, the first request whose request line starts with ``target``
    is forwarded to the bridge, and once the bridge's answer starts to come back the client's connection is
    closed without a byte of it: the request was executed, the client never learns how."""

    upstream: int
    target: bytes = b"POST /mt5/client/orders "
    armed: bool = True
    seen: list[dict[str, str]] = field(default_factory=list)  # headers of each ``target`` request, in order
    dropped: int = 0

    def __post_init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        drop = threading.Event()
        threading.Thread(target=self._down, args=(upstream, client, drop), daemon=True).start()
        parser = _RequestHeads()
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                for head in parser.feed(data):
                    if head.startswith(self.target):
                        headers = _headers(head)
                        with self._lock:
                            self.seen.append(headers)
                            if self.armed:
                                self.armed = False
                                drop.set()
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, drop: threading.Event) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if drop.is_set():  # the answer to the request we drop: the client gets nothing of it
                    with self._lock:
                        self.dropped += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)


class _RequestHeads:
    """Splits a client's byte stream into HTTP/1.1 request heads (bodies skipped by Content-Length)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.skip = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        heads = []
        while True:
            if self.skip:
                taken = min(self.skip, len(self.buffer))
                self.buffer, self.skip = self.buffer[taken:], self.skip - taken
                if self.skip:
                    return heads
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return heads
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            heads.append(head)
            self.skip = int(_headers(head).get("content-length", "0") or 0)


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
