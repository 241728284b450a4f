from django.apps import AppConfig


class WorkersConfig(AppConfig):
    """Process entry points: management commands, the supervisor and the Celery tasks they run."""

    name = "workers"
    verbose_name = "Workers"
    default_auto_field = "django.db.models.BigAutoField"
