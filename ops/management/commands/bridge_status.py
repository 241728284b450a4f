"""``manage.py bridge_status``: what ``/mt5/client/ops/terminals`` shows, for someone on the box."""

from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from ops.selectors import TerminalStatus, terminal_statuses


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render_table(statuses: list[TerminalStatus]) -> list[str]:
    header = ("TERMINAL", "BACKEND", "WORKER", "HEARTBEAT", "QUEUE", "QUEUED", "OLDEST", "SESSION")
    rows = [header]
    for s in statuses:
        worker = "alive" if s.worker_alive else "DOWN"
        session = (f"{s.session['sessionId']} ({s.session['status']}{', paused' if s.session.get('paused') else ''}, "
                   f"{s.session['login']})" if s.session else "-")
        rows.append((
            s.name + ("" if s.enabled else " (disabled)"),
            s.backend,
            worker,
            _age(s.worker_heartbeat_age),
            "?" if s.queue_depth is None else str(s.queue_depth),
            str(s.queued_tasks),
            _age(s.oldest_queued_age),
            session,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]


class Command(BaseCommand):
    help = "Terminals: pinned worker alive and last heartbeat, broker queue depth, oldest queued task, session."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print the /ops/terminals JSON instead of a table")

    def handle(self, *args, json: bool = False, **options) -> None:
        now = timezone.now()
        statuses = terminal_statuses(now)
        if json:
            self.stdout.write(_dumps({
                "terminals": [s.as_json() for s in statuses],
                "heartbeatInterval": settings.BRIDGE_WORKER_HEARTBEAT_INTERVAL,
                "asOf": round(now.timestamp(), 3),
            }))
            return
        for line in render_table(statuses):
            self.stdout.write(line)
        down = [s.name for s in statuses if s.enabled and not s.worker_alive]
        if down:
            self.stdout.write(self.style.WARNING(f"worker down: {', '.join(down)}"))


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2)
