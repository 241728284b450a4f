"""Run the maintenance worker: beat's periodic jobs that need no terminal (expiry, sweeps)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from bridge_project.celery import app
from terminals.runtime import keep_db_connections


class Command(BaseCommand):
    help = "Run the worker of queue bridge.maintenance (session expiry, outbox sweeps); --beat embeds beat."

    def add_arguments(self, parser):
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument("--beat", action="store_true", help="also run the beat scheduler in this process")

    def handle(self, *args, loglevel: str, beat: bool, **options) -> None:
        keep_db_connections()
        argv = ["worker", "-Q", "bridge.maintenance", "-P", "solo", "-n", "maintenance@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", loglevel]
        if beat:
            argv += ["-B", "-s", str(settings.VAR_DIR / "celerybeat-schedule")]
        app.worker_main(argv)
