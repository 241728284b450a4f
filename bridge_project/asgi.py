"""ASGI routing: HTTP to Django (the hot reads and the hot order writes answered in front of it, see
trading/reads/hotpath.py and trading/hotwrites.py), WebSocket to streams (/events)."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bridge_project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from streams.routing import websocket_urlpatterns  # noqa: E402
from trading.hotwrites import HotWrites  # noqa: E402
from trading.reads.hotpath import HotReads  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": HotReads(HotWrites(django_asgi_app)),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
