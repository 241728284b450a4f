"""The read loop and the snapshot poller of a terminal, as threads of its pinned worker's process.

One process per terminal (``run_terminal_worker``): the Celery worker (``-P solo``) executes orders in
the main thread; the reader (``workers/reader.py``) and the poller (``workers/poller.py``) run beside it
and all three use the process's one gateway (``terminals.runtime.gateway()``): the MetaTrader5 module is
one connection per process and not thread-safe, so the gateway serializes every call under its lock.

A thread that dies takes the process with it (exit status ``THREAD_DIED_EXIT``): the supervisor (or
compose, or the Windows service) restarts the whole process, lease and all, rather than leaving a worker
that executes orders while nobody serves reads or takes snapshots.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

from terminals.config import get_terminal
from terminals.runtime import gateway
from workers.poller import TerminalPoller
from workers.reader import TerminalReader

logger = logging.getLogger("bridge.worker")

THREAD_DIED_EXIT = 70  # the exit status of a terminal process whose reader or poller thread died


class TerminalThreads:
    """Starts the reader and/or poller threads of terminal ``name`` on the process's gateway."""

    def __init__(self, name: str, *, reader: bool = True, poller: bool = True, poll_interval: float | None = None,
                 say: Callable[[str], None] = print):
        self.name = name
        self.stop_event = threading.Event()
        self.say = say
        self.threads: list[threading.Thread] = []
        terminal = get_terminal(name)
        shared = gateway() if (reader or poller) else None
        self.reader = TerminalReader(terminal, gateway=shared) if reader else None
        self.poller = (TerminalPoller(terminal, gateway=shared, interval=poll_interval, worker_gateway=True)
                       if poller else None)

    def _guard(self, role: str, target: Callable[[threading.Event], None]) -> Callable[[], None]:
        """Run ``target(stop)``; if it raises, or returns before the process is stopping, end the process."""

        def run() -> None:
            try:
                target(self.stop_event)
            except BaseException:
                logger.exception("terminal %s: the %s thread died: exiting the process", self.name, role)
            else:
                if self.stop_event.is_set():
                    return
                logger.error("terminal %s: the %s thread returned: exiting the process", self.name, role)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(THREAD_DIED_EXIT)

        return run

    def start(self) -> None:
        roles: list[tuple[str, Callable[[threading.Event], None]]] = []
        if self.reader is not None:
            roles.append(("reader", self.reader.run))
        if self.poller is not None:
            roles.append(("poller", self.poller.run))
        for role, target in roles:
            thread = threading.Thread(target=self._guard(role, target), name=f"{role}-{self.name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        if roles:
            self.say(f"terminal {self.name}: {' and '.join(r for r, _ in roles)} running in this process "
                     "(one terminal connection, one call at a time)")

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the threads (the reader removes its heartbeat, so the web tier answers 502 at once)."""
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=timeout)
