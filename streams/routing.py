"""WebSocket routes (the /events consumer lands with the events work)."""

websocket_urlpatterns: list = []
