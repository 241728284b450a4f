"""The embedded stack: every process of a one-machine bridge, started, watched and stopped together.

Order: Redis (the one ``REDIS_URL`` names, else a ``redis-server`` child), migrations, the emulated
broker (``sim_broker`` of the terminals file, if any), the sim terminals, per terminal its processes from
``workers.stack.terminal_process_argvs`` (one: the pinned worker, with the terminal's reader and poller as
its threads), the maintenance worker, beat, and the web processes (daphne, ``BRIDGE_WEB_PROCESSES`` of them on
one socket). A child
that dies is restarted (with back-off); Ctrl-C or SIGTERM stops everything in reverse order and waits
for it (no orphans).

Restart back-off: a child that exits is started again after ``BACKOFF_BASE * 2**n`` seconds (1, 2,
4, ... capped at ``BACKOFF_MAX``, 30 s), ``n`` being its crashes in a row. A child that had run for
at least ``BRIDGE_SUPERVISOR_BACKOFF_RESET`` seconds (default 30) before it exited was healthy: its
count starts again and it is restarted after ``BACKOFF_BASE``. So a crash loop backs off, while a
process that crashes once a day is back within a second every time.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml
from django.conf import settings

from bridge_project.processes import signal_group, start_group, stop_group
from terminals.config import SimBrokerConfig, TerminalConfig, load_sim_broker, load_terminals

from .stack import daphne_fd_argv, terminal_process_argvs, web_processes

ROOT = Path(settings.BASE_DIR)

BACKOFF_BASE = 1.0
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 30.0  # default of BRIDGE_SUPERVISOR_BACKOFF_RESET


def backoff_reset_after() -> float:
    """Seconds of running after which a child counts as healthy (``BRIDGE_SUPERVISOR_BACKOFF_RESET``)."""
    value = getattr(settings, "BRIDGE_SUPERVISOR_BACKOFF_RESET", None)
    if value is None:
        value = os.environ.get("BRIDGE_SUPERVISOR_BACKOFF_RESET", BACKOFF_RESET_AFTER)
    return float(value)


def _say(message: str) -> None:
    print(f"[bridge] {message}", flush=True)


def _port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    pass_fds: tuple[int, ...] = ()
    popen: subprocess.Popen | None = None
    restarts: int = 0  # total restarts (reported)
    crashes: int = 0  # exits in a row without a healthy run in between (drives the back-off)
    next_start: float = 0.0
    started_at: float = 0.0
    last_delay: float | None = None

    def start(self) -> None:
        self.popen = start_group(self.argv, log_path=self.log_path, env=self.env, cwd=ROOT, pass_fds=self.pass_fds)
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class Supervisor:
    port: int
    host: str = "127.0.0.1"
    children: list[Child] = field(default_factory=list)
    stopping: bool = False
    backoff_base: float = BACKOFF_BASE
    backoff_max: float = BACKOFF_MAX
    backoff_reset_after: float = field(default_factory=backoff_reset_after)
    web_socket: socket.socket | None = None  # the web processes' listening socket

    def __post_init__(self) -> None:
        self.log_dir = Path(settings.VAR_DIR) / "log"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # -- children ---------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], pass_fds: tuple[int, ...] = ()) -> Child:
        child = Child(name, argv, self.env, self.log_dir / f"{name}.log", pass_fds)
        child.start()
        self.children.append(child)
        _say(f"started {name} (pid {child.popen.pid}, log {child.log_path})")
        return child

    def wait_port(self, name: str, host: str, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _port_open(host, port):
                return
            time.sleep(0.1)
        raise SystemExit(f"{name} did not open {host}:{port} within {timeout:.0f}s (see var/log/{name}.log)")

    # -- steps --------------------------------------------------------------------------------
    def ensure_redis(self) -> None:
        url = urlparse(settings.REDIS_URL)
        host, port = url.hostname or "127.0.0.1", url.port or 6379
        if _port_open(host, port):
            _say(f"using Redis at {host}:{port} (REDIS_URL)")
            return
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"Redis at {host}:{port} is not reachable and is not local: start it or fix REDIS_URL")
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("no Redis reachable and no redis-server binary: run `make setup` (installs Debian's redis-server)")
        _say(f"no Redis at {host}:{port}: starting Debian's redis-server there (in memory, no persistence)")
        self.spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        self.wait_port("redis", host, port)

    def migrate(self) -> None:
        _say("applying migrations")
        subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=self.env, check=True)

    def start_sim_broker(self, broker: SimBrokerConfig) -> None:
        """The trade server of the sim terminals (``sim_broker``): one server name per clock; its journal
        (var/sim/broker/<server name>/) outlives a restart, so accounts, positions and history do too."""
        host, _, port = broker.address.rpartition(":")
        if _port_open(host, int(port)):
            _say(f"sim_broker: an emulated broker already listens on {broker.address}")
            return
        state = Path(settings.VAR_DIR) / "sim" / "broker"
        state.mkdir(parents=True, exist_ok=True)
        servers = [arg for name, offset in broker.servers for arg in ("--server", f"{name}={offset}")]
        self.spawn("sim-broker", [sys.executable, "-m", "mt5sim", "broker", "--address", broker.address,
                                  "--state", str(state), *servers])
        self.wait_port("sim-broker", host, int(port))

    def start_terminal(self, terminal: TerminalConfig, broker: SimBrokerConfig | None = None) -> None:
        if terminal.backend == "sim":
            host, _, port = terminal.address.rpartition(":")
            if _port_open(host, int(port)):
                _say(f"terminal {terminal.name}: an emulator already listens on {terminal.address}")
            else:
                state = Path(settings.VAR_DIR) / "sim" / terminal.name
                state.mkdir(parents=True, exist_ok=True)
                if broker is not None and terminal.server is not None:
                    # A terminal of the broker: its clock is its server name's (checked against utc_offset).
                    argv = ["--broker", broker.address, "--server", terminal.server]
                else:
                    # Its own trade server: the clock must be the offset the terminals file declares for it.
                    config = state.parent / f"{terminal.name}.yaml"
                    config.write_text(yaml.safe_dump({"server": {"offset_seconds": terminal.utc_offset}}))
                    argv = ["--config", str(config)]
                self.spawn(
                    f"sim-{terminal.name}",
                    [sys.executable, "-m", "mt5sim", "serve", "--address", terminal.address, "--state", str(state),
                     *argv],
                )
                # A terminal of a broker opens its port once it reached the broker: open means ready.
                self.wait_port(f"sim-{terminal.name}", host, int(port))
        else:
            _say(f"terminal {terminal.name}: backend mt5 runs inside the Windows VM (deploy/); not started here")
            return
        for role, argv in terminal_process_argvs(terminal.name, sys.executable).items():
            self.spawn(f"{role}-{terminal.name}", argv)

    def start_all(self) -> None:
        self.ensure_redis()
        self.migrate()
        terminals = load_terminals()
        _say(f"{len(terminals)} terminal(s) in {settings.BRIDGE_TERMINALS_FILE}")
        broker = load_sim_broker()
        if broker is not None and any(t.server is not None for t in terminals):
            self.start_sim_broker(broker)
        for terminal in terminals:
            self.start_terminal(terminal, broker)
        self.spawn("maintenance", [sys.executable, "manage.py", "run_maintenance_worker"])
        beat_schedule = Path(settings.VAR_DIR) / "celerybeat-schedule"
        self.spawn("beat", [sys.executable, "-m", "celery", "-A", "bridge_project", "beat", "-s", str(beat_schedule), "-l", "INFO"])
        self.start_web()
        base = f"http://{self.host}:{self.port}"
        _say("the bridge is up:")
        _say(f"  REST API      {base}/mt5/client/   (OpenAPI docs: {base}/api/docs/)")
        _say(f"  WebSocket     ws://{self.host}:{self.port}/events")
        _say(f"  admin         {base}/{settings.BRIDGE_ADMIN_PATH}   (python manage.py createsuperuser)")
        _say(f"  health        {base}/health")
        _say("  an API key:   .venv/bin/python manage.py create_api_key --workspace demo")
        _say("Ctrl-C stops everything.")

    def start_web(self) -> None:
        """``web_processes()`` daphne processes (with the header limits) on one listening socket, bound here
        and kept open for the bridge's lifetime: each process accepts from it, the kernel spreads the
        connections (REST and ``/events`` sockets alike) over them, and while one is restarted the others
        (or the socket's backlog) take its connections. Each process reads the events fan-out stream once
        for its own sockets (``streams/relay.py``)."""
        count = web_processes()
        if self.web_socket is None:
            self.web_socket = socket.create_server((self.host, self.port), backlog=1024)
        fd = self.web_socket.fileno()
        os.set_inheritable(fd, True)
        for index in range(1, count + 1):
            name = "web" if count == 1 else f"web-{index}"
            self.spawn(name, daphne_fd_argv(fd, sys.executable), pass_fds=(fd,))
        self.wait_serving("web", timeout=60)
        _say(f"{count} web process(es) (daphne) on {self.host}:{self.port} (BRIDGE_WEB_PROCESSES)")

    def wait_serving(self, name: str, timeout: float = 30.0) -> None:
        """Until ``GET /health`` answers on the web port (the socket is open before any daphne serves)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=2)
                connection.request("GET", "/health")
                connection.getresponse().read()
                connection.close()
                return
            except (OSError, http.client.HTTPException):
                time.sleep(0.1)
        raise SystemExit(f"{name} did not answer on {self.host}:{self.port} within {timeout:.0f}s (see var/log/)")

    def restart_delay(self, child: Child, now: float) -> float:
        """The wait before restarting ``child``, which has just been seen exited at ``now``.

        A run of at least ``backoff_reset_after`` seconds was healthy: the crash count starts again.
        """
        if now - child.started_at >= self.backoff_reset_after:
            child.crashes = 0
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** min(child.crashes, 30))
        child.crashes += 1
        return delay

    def watch_once(self, now: float | None = None) -> None:
        """One pass over the children: schedule the restart of those that exited, start those due."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.alive() or self.stopping:
                continue
            if child.next_start == 0.0:
                ran = now - child.started_at
                delay = child.last_delay = self.restart_delay(child, now)
                child.next_start = now + delay
                _say(f"{child.name} exited ({child.popen.returncode}) after {ran:.0f}s; restarting in {delay:.1f}s "
                     f"(log {child.log_path})")
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                child.start()
                _say(f"restarted {child.name} (pid {child.popen.pid})")

    def watch(self, interval: float = 0.5) -> None:
        """Restart children that die, with back-off, until asked to stop."""
        while not self.stopping:
            self.watch_once()
            time.sleep(interval)

    def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM every child's group at once (reverse start order), then stop each within what is
        left of ``timeout``: a group still running then is killed, and nothing of it outlives the bridge."""
        self.stopping = True
        _say("stopping…")
        running = [child for child in reversed(self.children) if child.popen is not None]
        for child in running:
            if child.alive():
                signal_group(child.popen, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in running:
            code = stop_group(child.popen, grace=max(0.1, deadline - time.monotonic()))
            if code == -signal.SIGKILL:
                _say(f"{child.name} did not stop in time: killed it")
        if self.web_socket is not None:
            self.web_socket.close()
            self.web_socket = None
        _say("stopped")


def run(port: int, host: str = "127.0.0.1") -> None:
    supervisor = Supervisor(port=port, host=host)

    def _stop(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        supervisor.start_all()
        supervisor.watch()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop_all()
