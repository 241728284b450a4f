from django.apps import AppConfig


class TradingConfig(AppConfig):
    """Tasks (the idempotency ledger), the write and read endpoints, reconciliation."""

    name = "trading"
    verbose_name = "Trading"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # In ready(), not at module level: trading.services imports the models, which Django may import
        # only once every app's apps.py is loaded; ready() runs when the app registry is full.
        from sessions.signals import paused_write_replay, session_ended, session_paused, session_resumed

        from .pause import on_paused_write_replay, on_session_paused, on_session_resumed
        from .services import on_session_ended

        session_ended.connect(on_session_ended, dispatch_uid="trading.cancel_queued_of_ended_session")
        session_paused.connect(on_session_paused, dispatch_uid="trading.cancel_queued_of_paused_session")
        session_resumed.connect(on_session_resumed, dispatch_uid="trading.republish_queued_of_resumed_session")
        paused_write_replay.connect(on_paused_write_replay, dispatch_uid="trading.ledger_holds_request_id")
