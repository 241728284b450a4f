"""Revoke an API key by its prefix (the part after ``mt5b_``); its open sockets close with 4401."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from sessions.api_keys import api_key_by_prefix, revoke_api_key


class Command(BaseCommand):
    help = "Revoke the API key with prefix PREFIX; requests and open /events sockets with it are refused at once."

    def add_arguments(self, parser):
        parser.add_argument("prefix", help="the key's prefix: mt5b_<prefix>_<secret>, as the admin shows it")

    def handle(self, *args, prefix: str, **options) -> None:
        row = api_key_by_prefix(prefix)
        if row is None:
            raise CommandError(f"no API key with prefix {prefix!r}")
        already = row.revoked_at is not None
        revoke_api_key(row)
        self.stdout.write(f"key {row.prefix} of workspace {row.workspace.name} "
                          f"{'was already revoked' if already else 'revoked'} ({row.revoked_at.isoformat()})")
