"""Run the pinned Celery worker of one terminal: its queue only, one process, no concurrency."""

from __future__ import annotations

import os
import sys

from django.core.management.base import BaseCommand, CommandError

from bridge_project.celery import app
from terminals.config import get_terminal
from terminals.runtime import TERMINAL_ENV, give_up_lease, hold_lease, keep_db_connections


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
    help = "Run the pinned worker of terminal NAME (consumes only queue terminal.NAME, -P solo)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, *args, name: str, loglevel: str, **options) -> None:
        try:
            get_terminal(name)
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        keep_db_connections()
        os.environ[TERMINAL_ENV] = name  # read by the worker's tasks (pinned_terminal) from here on

        def say(text: str) -> None:
            self.stdout.write(text)
            sys.stdout.flush()

        # One worker per terminal: the lease is taken before the queue is consumed (a second worker
        # waits here), and every claim and sent-mark carries its fencing token.
        lease = hold_lease(name, say=say)
        say(f"pinned worker for terminal {name}: queue terminal.{name}, pool solo, lease token {lease.token}")
        try:
            app.worker_main(worker_argv(name, loglevel)[3:])  # drop 'celery -A bridge_project'
        finally:
            give_up_lease()
