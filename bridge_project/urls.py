"""URL routing: the client API under /mt5/client/, probes at the root, admin and docs."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from ops.views import metrics_view

from .health import health

handler400 = "bridge_project.errors.json_400"
handler403 = "bridge_project.errors.json_403"
handler404 = "bridge_project.errors.json_404"
handler500 = "bridge_project.errors.json_500"

client_api = [
    path("", include("sessions.urls")),
    path("", include("trading.urls")),  # before read_urls: orders and positions/<ticket> are shared paths
    path("", include("trading.read_urls")),
    path("", include("streams.urls")),
    path("", include("ops.urls")),
]

urlpatterns = [
    path("mt5/client/", include(client_api)),
    path("health", health, name="health"),
    path("metrics", metrics_view, name="metrics"),
    path("ops/", include("ops.dashboard_urls")),  # the staff dashboard page and its data (docs/operations.md)
    path(settings.BRIDGE_ADMIN_PATH, admin.site.urls),  # BRIDGE_ADMIN_PATH, default admin/
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI from pinned local static files (drf-spectacular-sidecar, SPECTACULAR_SETTINGS), no CDN.
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]
