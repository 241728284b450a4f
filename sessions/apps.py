from django.apps import AppConfig


class BridgeSessionsConfig(AppConfig):
    """Workspaces, API keys and bridge sessions. Label avoids django.contrib.sessions."""

    name = "sessions"
    label = "bridge_sessions"
    verbose_name = "Bridge sessions"
    default_auto_field = "django.db.models.BigAutoField"
