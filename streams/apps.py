from django.apps import AppConfig


class StreamsConfig(AppConfig):
    """The /events WebSocket, per-session sequence numbers and replay, the publisher."""

    name = "streams"
    verbose_name = "Event streams"
    default_auto_field = "django.db.models.BigAutoField"
