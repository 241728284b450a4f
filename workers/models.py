"""Terminals as the database knows them: mirrored from the terminals file, plus worker liveness."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class Terminal(models.Model):
    """One MT5 terminal (real or emulated). Rows are synced from the terminals file."""

    name = models.CharField(max_length=63, unique=True)
    backend = models.CharField(max_length=8, choices=[("sim", "mt5sim"), ("mt5", "MetaTrader5")])
    address = models.CharField(max_length=500, help_text="sim: host:port of the emulator; mt5: terminal path")
    utc_offset = models.IntegerField(default=0, help_text="broker server time minus UTC, seconds")
    enabled = models.BooleanField(default=True, help_text="false once the terminal left the config file")
    worker_heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker_hostname = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        return f"terminal.{self.name}"

    def worker_alive(self, now=None) -> bool:  # noqa: ANN001
        """Alive when the pinned worker's heartbeat is newer than three intervals."""
        if self.worker_heartbeat_at is None:
            return False
        now = now or timezone.now()
        grace = timedelta(seconds=3 * settings.BRIDGE_WORKER_HEARTBEAT_INTERVAL)
        return now - self.worker_heartbeat_at <= grace
