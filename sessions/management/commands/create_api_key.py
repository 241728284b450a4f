"""Create an API key for a workspace (created if missing); the key is printed on the last line."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from sessions.api_keys import create_api_key
from sessions.models import Workspace


class Command(BaseCommand):
    help = "Create an API key for workspace NAME (the workspace is created if missing). Shown once."

    def add_arguments(self, parser):
        parser.add_argument("--workspace", required=True)
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args, workspace: str, name: str, **options) -> None:
        workspace = workspace.strip()
        if not workspace or len(workspace) > 100:
            raise CommandError("--workspace must be 1 to 100 characters")
        ws, created = Workspace.objects.get_or_create(name=workspace)
        row, key = create_api_key(ws, name)
        self.stderr.write(
            f"{'created workspace' if created else 'workspace'} {ws.name}; key prefix {row.prefix} "
            "(store the key now: it is not shown again)"
        )
        self.stdout.write(key)
