"""WebSocket routes: the /events consumer; any other path is refused at the handshake."""

from channels.generic.websocket import WebsocketConsumer
from django.urls import path, re_path

from .consumers import EventsConsumer


class NoSuchSocket(WebsocketConsumer):
    """A WebSocket upgrade to a path that has no socket: refused before it is accepted (daphne answers the
    handshake 403, the only refusal it can send). Without this route, channels' router raises "No route
    found" and the client gets a 500, which a client retries as a server fault."""

    def connect(self) -> None:
        self.close()


websocket_urlpatterns: list = [
    path("events", EventsConsumer.as_asgi()),
    path("events/", EventsConsumer.as_asgi()),
    re_path(r"", NoSuchSocket.as_asgi()),
]
