from django.apps import AppConfig


class StreamsConfig(AppConfig):
    """The /events WebSocket, per-session sequence numbers and replay, the publisher."""

    name = "streams"
    verbose_name = "Event streams"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # In ready(), not at module level: Django imports every apps.py while it is still filling the
        # app registry, before any app's modules may be imported; ready() runs once the registry is full.
        from sessions.signals import api_key_revoked, session_changed

        from .publisher import on_api_key_revoked, on_session_changed

        session_changed.connect(on_session_changed, dispatch_uid="streams.session_event")
        api_key_revoked.connect(on_api_key_revoked, dispatch_uid="streams.key_revoked")
