"""Shared fixtures for mt5sim tests: a real ``python -m mt5sim serve`` process and clients of it.

* ``sim_server``: address "127.0.0.1:PORT" of one terminal started for the test session
  (temporary ``--state`` dir, seed 1); stopped at the end of the session.
* ``mt5``: the ``mt5sim`` module initialized against ``sim_server`` with a fresh demo login per
  test; ``shutdown()`` and a (non-full) ``ctl.reset`` at teardown, so prices and faults do not leak.
* ``sim_control``: a ``mt5sim.control.Control`` for ``sim_server``.
* ``sim_factory``: start more terminals (own state dir, config, seed); each is stopped at teardown.
  ``SimServer.restart()`` keeps the port and the state dir.

Terminals listen on port 0 and report the port they got ("mt5sim listening on HOST:PORT"), so
parallel runs never race for a port.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge_project.processes import signal_group, start_group, stop_group

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
_LISTENING = re.compile(r"mt5sim listening on (\S+?):(\d+)\b")
_logins = itertools.count(7_000_001)
DEMO_PASSWORD = "demo-pass"  # password of the demo logins the ``mt5`` fixture opens


def next_demo_login() -> int:
    """A login nobody used yet in this test session (a new demo account on first use)."""
    return next(_logins) + (os.getpid() % 1000) * 10_000


class SimServer:
    """One ``python -m mt5sim serve`` process in its own process group, logging to a file."""

    def __init__(self, workdir: Path, *, name: str = "mt5sim", state_dir: Path | None = None,
                 config: Path | str | None = None, seed: int = 1, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.state_dir = Path(state_dir) if state_dir else self.workdir / f"{name}-state"
        self.config = config
        self.seed = seed
        self.env = dict(os.environ if env is None else env)
        self.log_path = self.workdir / f"{name}.log"
        self.popen: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self._log_offset = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60.0) -> SimServer:
        argv = [PYTHON, "-m", "mt5sim", "serve", "--address", f"{self.host}:{self.port}",
                "--state", str(self.state_dir), "--seed", str(self.seed)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        self._log_offset = len(self.log().encode())
        self.popen = start_group(argv, log_path=self.log_path, env=self.env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[self._log_offset:].decode(errors="replace")
            match = _LISTENING.search(text)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                return self
            if self.popen.poll() is not None:
                raise RuntimeError(f"mt5sim exited ({self.popen.returncode}) before listening:\n{text[-4000:]}")
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"mt5sim not listening after {timeout}s:\n{self.log()[-4000:]}")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            signal_group(self.popen, sig)

    def kill(self) -> None:
        """SIGKILL: no chance to persist (tests of crash recovery)."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (the engine persists its state); SIGKILL if it hangs. Returns the exit code."""
        if self.popen is None:
            return None
        return stop_group(self.popen, timeout, kill_wait=10)  # nothing of the group outlives the test

    def restart(self, timeout: float = 60.0) -> SimServer:
        """Stop cleanly and start again on the same port with the same state dir."""
        self.stop()
        return self.start(timeout)


@pytest.fixture(scope="session")
def sim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = SimServer(tmp_path_factory.mktemp("mt5sim-session"), name="session").start()
    try:
        yield server.address
    finally:
        server.stop()


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., SimServer]]:
    started: list[SimServer] = []

    def start(name: str = "sim", **kwargs: Any) -> SimServer:
        server = SimServer(tmp_path / name, name=name, **kwargs).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def sim_control(sim_server: str) -> Iterator[Any]:
    from mt5sim.control import Control

    ctl = Control(sim_server)
    try:
        yield ctl
    finally:
        ctl.close()


@pytest.fixture
def mt5(sim_server: str) -> Iterator[Any]:
    import mt5sim
    from mt5sim.control import Control

    login = next_demo_login()
    if not mt5sim.initialize(sim_server, login=login, password=DEMO_PASSWORD, server="MT5Sim-Demo"):
        pytest.fail(f"initialize({sim_server!r}) failed: {mt5sim.last_error()}")
    try:
        yield mt5sim
    finally:
        mt5sim.shutdown()
        with Control(sim_server) as ctl:
            ctl.reset()
