"""Run the whole bridge on this machine (the embedded stack). Ctrl-C stops everything."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand

from workers.supervisor import run


class Command(BaseCommand):
    help = "Run Redis (if needed), the sim terminals, pinned workers, beat and daphne; BRIDGE_PORT picks the port."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("BRIDGE_PORT", "8000")))
        parser.add_argument("--host", default=os.environ.get("BRIDGE_HOST", "127.0.0.1"))

    def handle(self, *args, port: int, host: str, **options) -> None:
        run(port=port, host=host)
