"""WebSocket routes: the /events consumer."""

from django.urls import path

from .consumers import EventsConsumer

websocket_urlpatterns: list = [
    path("events", EventsConsumer.as_asgi()),
    path("events/", EventsConsumer.as_asgi()),
]
