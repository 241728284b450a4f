from django.apps import AppConfig


class TradingConfig(AppConfig):
    """Tasks (the idempotency ledger), the write and read endpoints, reconciliation."""

    name = "trading"
    verbose_name = "Trading"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # In ready(), not at module level: trading.services imports the models, which Django may import
        # only once every app's apps.py is loaded; ready() runs when the app registry is full.
        from sessions.signals import session_ended

        from .services import on_session_ended

        session_ended.connect(on_session_ended, dispatch_uid="trading.cancel_queued_of_ended_session")
