"""Run the read loop of one terminal as a process of its own: serves bridge:read:NAME (never the order queue).

By default the terminal's process (``run_terminal_worker``) runs it as a thread; this command is for a
worker started ``--without-reader`` (a read then never waits behind an order: its own connection)."""

from __future__ import annotations

import signal
import sys
import threading

from django.core.management.base import BaseCommand, CommandError

from terminals.config import get_terminal
from terminals.runtime import keep_db_connections
from workers.reader import run_terminal_reader


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # they import every view, DRF and the admin: not used here
    help = "Run the read process of terminal NAME: request/reply reads over Redis, one at a time."

    def add_arguments(self, parser):
        parser.add_argument("name")

    def handle(self, *args, name: str, **options) -> None:
        try:
            get_terminal(name)
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        keep_db_connections()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        self.stdout.write(f"read process for terminal {name}: queue bridge:read:{name}")
        sys.stdout.flush()
        run_terminal_reader(name, stop, ready=lambda: self._say(f"reader for terminal {name} ready"))

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        sys.stdout.flush()
