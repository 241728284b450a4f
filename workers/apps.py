from django.apps import AppConfig


class WorkersConfig(AppConfig):
    """Terminals, the terminal gateway and the pinned per-terminal workers."""

    name = "workers"
    verbose_name = "Terminals and workers"
    default_auto_field = "django.db.models.BigAutoField"
