"""Real processes for tests: emulator terminals, pinned workers, beat, daphne.

Every process binds a free port chosen at run time, logs to a file the test can read, and is
stopped (its whole process group) by the fixture that started it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bridge_project.processes import signal_group, start_group, stop_group

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process in its own process group, with its output in ``log_path``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.popen = start_group(self.argv, log_path=self.log_path, env=self.env, cwd=ROOT)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}) before {what}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not {what} after {timeout}s:\n{self.log()[-3000:]}")

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        self.wait_for(lambda: text in self.log(), timeout, f"logging {text!r}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a worker and any child it made)."""
        if self.popen is not None and self.popen.poll() is None:
            signal_group(self.popen, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL it after ``timeout``; nothing of it outlives the test. The exit code."""
        if self.popen is None:
            return None
        return stop_group(self.popen, timeout)


def start_sim(name: str, log_dir: Path, state_dir: Path, *, seed: int = 1, config: Path | None = None,
              env: dict[str, str] | None = None, broker: str | None = None,
              server: str | None = None) -> tuple[Proc, str]:
    """Start ``python -m mt5sim serve`` on a free port; returns the process and its address.

    With ``broker`` (a ``start_sim_broker`` address) it is a terminal of that broker, on server name
    ``server`` (default: the broker's first); it opens its port once it reached the broker."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    argv = [PYTHON, "-m", "mt5sim", "serve", "--address", address, "--state", str(state_dir), "--seed", str(seed)]
    if config is not None:
        argv += ["--config", str(config)]
    if broker is not None:
        argv += ["--broker", broker] + (["--server", server] if server else [])
    proc = Proc(name, argv, env or dict(os.environ), log_dir).start()
    proc.wait_for(lambda: _port_open(port), 30, "listening")
    return proc, address


def start_sim_broker(name: str, log_dir: Path, state_dir: Path, servers: dict[str, int], *, seed: int = 1,
                     config: Path | None = None, env: dict[str, str] | None = None) -> tuple[Proc, str]:
    """Start ``python -m mt5sim broker`` on a free port with ``servers`` (name: UTC offset in seconds; the
    first is the default); returns the process and its address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    argv = [PYTHON, "-m", "mt5sim", "broker", "--address", address, "--state", str(state_dir), "--seed", str(seed)]
    for server, offset in servers.items():
        argv += ["--server", f"{server}={offset}"]
    if config is not None:
        argv += ["--config", str(config)]
    proc = Proc(name, argv, env or dict(os.environ), log_dir).start()
    proc.wait_for(lambda: _port_open(port), 30, "listening")
    return proc, address


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_manage(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    return Proc(name, [PYTHON, "manage.py", *args], env, log_dir).start()
