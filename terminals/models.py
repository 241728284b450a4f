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
    # The ownership lease (terminals/lease.py): one pinned worker at a time executes this terminal's
    # tasks. ``lease_token`` is the fencing token: it grows by one at every acquisition, and every
    # claim and sent-mark of a task carries the holder's token, so a stale worker's write is refused.
    lease_token = models.BigIntegerField(default=0)
    lease_holder = models.CharField(max_length=255, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The account binding (terminals/binding.py): the session the terminal is logged in for, and the
    # account (login + server, as the terminal reported them at login). Empty: the terminal serves
    # nothing for any session until the next successful login.
    bound_session_id = models.CharField(max_length=40, blank=True, default="")
    bound_login = models.BigIntegerField(null=True, blank=True)
    bound_server = models.CharField(max_length=200, blank=True, default="")
    bound_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "workers_terminal"  # created by the workers app before terminals/ existed
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        return f"terminal.{self.name}"

    def worker_alive(self, now=None) -> bool:
        """Alive when the pinned worker's heartbeat is newer than three intervals."""
        if self.worker_heartbeat_at is None:
            return False
        now = now or timezone.now()
        grace = timedelta(seconds=3 * settings.BRIDGE_WORKER_HEARTBEAT_INTERVAL)
        return now - self.worker_heartbeat_at <= grace
