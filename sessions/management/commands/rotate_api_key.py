"""Rotate an API key: revoke it (its open sockets close with 4401) and print its replacement (shown once)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from sessions.api_keys import api_key_by_prefix, rotate_api_key


class Command(BaseCommand):
    help = "Revoke the API key with prefix PREFIX and issue a replacement (same workspace and name), printed last."

    def add_arguments(self, parser):
        parser.add_argument("prefix", help="the key's prefix: mt5b_<prefix>_<secret>, as the admin shows it")

    def handle(self, *args, prefix: str, **options) -> None:
        row = api_key_by_prefix(prefix)
        if row is None:
            raise CommandError(f"no API key with prefix {prefix!r}")
        if row.revoked_at is not None:
            raise CommandError(f"key {row.prefix} is already revoked; create a new one with create_api_key")
        new, key = rotate_api_key(row)
        self.stderr.write(f"key {row.prefix} revoked; replacement prefix {new.prefix} "
                          "(store the key now: it is not shown again)")
        self.stdout.write(key)
