from django.contrib import admin

from .models import Terminal


@admin.register(Terminal)
class TerminalAdmin(admin.ModelAdmin):
    list_display = ("name", "backend", "address", "utc_offset", "enabled", "worker_heartbeat_at", "worker_hostname")
    list_filter = ("backend", "enabled")
    search_fields = ("name", "address")
    readonly_fields = ("worker_heartbeat_at", "worker_hostname", "created_at", "updated_at")
