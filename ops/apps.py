from django.apps import AppConfig


class OpsConfig(AppConfig):
    """What operators look at: the ops API, Prometheus metrics, the dashboard and ``bridge_status``."""

    name = "ops"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"
