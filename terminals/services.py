"""Mirror the terminals file into the Terminal table and record worker heartbeats."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from terminals.config import TerminalConfig, load_terminals
from terminals.models import Terminal

_synced: dict[str, object] = {}


@transaction.atomic
def _apply(configs: list[TerminalConfig]) -> None:
    names = {c.name for c in configs}
    for config in configs:
        Terminal.objects.update_or_create(
            name=config.name,
            defaults={
                "backend": config.backend,
                "address": config.address,
                "utc_offset": config.utc_offset,
                "enabled": True,
            },
        )
    Terminal.objects.exclude(name__in=names).filter(enabled=True).update(enabled=False)


def sync_terminals(force: bool = False) -> list[TerminalConfig]:
    """Upsert configured terminals and disable the ones gone from the file.

    Cheap when nothing changed (one COUNT): re-applied when the file changed or rows went missing.
    """
    configs = load_terminals()
    names = [c.name for c in configs]
    if (
        force
        or _synced.get("configs") is not configs
        or Terminal.objects.filter(name__in=names, enabled=True).count() != len(names)
    ):
        _apply(configs)
        _synced["configs"] = configs
    return configs


def record_worker_heartbeat(terminal_name: str, hostname: str) -> None:
    now = timezone.now()
    if not Terminal.objects.filter(name=terminal_name).update(worker_heartbeat_at=now, worker_hostname=hostname):
        sync_terminals(force=True)
        Terminal.objects.filter(name=terminal_name).update(worker_heartbeat_at=now, worker_hostname=hostname)
