"""Run the snapshot poller of one terminal as a process of its own (account, positions, orders, ticks, books
into Redis). By default the terminal's process (``run_terminal_worker``) runs it as a thread; this command is
for a worker started ``--without-poller``."""

from __future__ import annotations

import signal
import sys
import threading

from django.core.management.base import BaseCommand, CommandError

from terminals.config import get_terminal
from terminals.runtime import keep_db_connections
from workers.poller import run_terminal_poller


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # they import every view, DRF and the admin: not used here
    help = "Run the snapshot poller of terminal NAME (interval: --interval or BRIDGE_POLL_INTERVAL, default 0.25s)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--interval", type=float, default=None, help="seconds between snapshots")

    def handle(self, *args, name: str, interval: float | None, **options) -> None:
        try:
            get_terminal(name)
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        if interval is not None and not 0.01 <= interval <= 60:
            raise CommandError("--interval must be between 0.01 and 60 seconds")
        keep_db_connections()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        self.stdout.write(f"poller for terminal {name}")
        sys.stdout.flush()
        run_terminal_poller(name, stop, interval, ready=lambda: self._say(f"poller for terminal {name} ready"))

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        sys.stdout.flush()
