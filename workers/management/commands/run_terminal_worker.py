"""Run the process of one terminal: its pinned Celery worker, its read loop and its snapshot poller.

One process per terminal (docs/reads.md, "The terminal's process"): the Celery worker (``-P solo``)
runs in the main thread; the read loop (``workers/reader.py``) and the poller (``workers/poller.py``)
run as threads of the same process and share its one terminal gateway (``terminals.runtime.gateway()``,
one call at a time under the gateway's lock). ``--without-reader``/``--without-poller`` leave a role to
a separate ``run_terminal_reader``/``run_terminal_poller`` process instead.
"""

from __future__ import annotations

import os
import sys

from django.core.management.base import BaseCommand, CommandError

from bridge_project.celery import app
from terminals.config import get_terminal
from terminals.runtime import TERMINAL_ENV, give_up_lease, hold_lease, keep_db_connections
from workers.gc_tuning import gc_thresholds, tune_gc
from workers.terminal_threads import TerminalThreads


def worker_argv(name: str, loglevel: str = "INFO") -> list[str]:
    """The Celery command line of a pinned worker (also rendered for the Windows VM)."""
    return [
        "celery", "-A", "bridge_project", "worker",
        "-Q", f"terminal.{name}",
        # solo: one process, one task at a time, and the task runs in the process that holds the
        # MT5 connection (the module is one connection per process and not thread-safe).
        "-P", "solo", "-c", "1",
        "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-l", loglevel,
    ]


class Command(BaseCommand):
    help = ("Run the process of terminal NAME: its pinned worker (consumes only queue terminal.NAME, -P solo), "
            "its read loop and its snapshot poller (threads sharing one terminal connection).")
    # The system checks import the URL configuration, and with it every view, DRF and the admin: megabytes
    # this process never uses (the web process and `migrate` run them).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument("--without-reader", action="store_true",
                            help="no read loop in this process (a separate run_terminal_reader serves reads)")
        parser.add_argument("--without-poller", action="store_true",
                            help="no snapshot poller in this process (a separate run_terminal_poller runs)")
        parser.add_argument("--poll-interval", type=float, default=None,
                            help="seconds between snapshots, idle or not (default: BRIDGE_POLL_INTERVAL, and "
                                 "BRIDGE_POLL_IDLE_INTERVAL while the terminal is idle)")

    def handle(self, *args, name: str, loglevel: str, without_reader: bool, without_poller: bool,
               poll_interval: float | None, **options) -> None:
        try:
            get_terminal(name)
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        if poll_interval is not None and not 0.01 <= poll_interval <= 60:
            raise CommandError("--poll-interval must be between 0.01 and 60 seconds")
        keep_db_connections()
        os.environ[TERMINAL_ENV] = name  # read by the worker's tasks (pinned_terminal) from here on
        # Celery's Django fixup runs the system checks at worker start unless told not to: the same
        # import of every view as above (and under the terminal's settings the admin's URLs are not there).
        os.environ.setdefault("CELERY_SKIP_CHECKS", "1")

        def say(text: str) -> None:
            self.stdout.write(text)
            sys.stdout.flush()

        # One worker per terminal: the lease is taken before the queue is consumed (a second worker
        # waits here, and so do its reader and poller), and every claim and sent-mark carries its fencing token.
        lease = hold_lease(name, say=say)
        say(f"pinned worker for terminal {name}: queue terminal.{name}, pool solo, lease token {lease.token}")
        threads: TerminalThreads | None = None
        try:
            threads = TerminalThreads(name, reader=not without_reader, poller=not without_poller,
                                      poll_interval=poll_interval, say=say)
            tune_gc(gc_thresholds())  # what the worker serves with is loaded: frozen (workers.gc_tuning)
            threads.start()
            app.worker_main(worker_argv(name, loglevel)[3:])  # drop 'celery -A bridge_project'
        finally:
            if threads is not None:
                threads.stop()  # the reader removes its heartbeat: reads are refused at once
            give_up_lease()
