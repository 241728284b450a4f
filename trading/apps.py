from django.apps import AppConfig


class TradingConfig(AppConfig):
    """Tasks (the idempotency ledger), the write and read endpoints, reconciliation."""

    name = "trading"
    verbose_name = "Trading"
    default_auto_field = "django.db.models.BigAutoField"
