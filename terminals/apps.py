from django.apps import AppConfig


class TerminalsConfig(AppConfig):
    """Everything about a terminal: configuration, the gateway, broker time, the lease and the binding."""

    name = "terminals"
    verbose_name = "Terminals"
    default_auto_field = "django.db.models.BigAutoField"
