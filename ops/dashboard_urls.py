"""The staff dashboard's routes, mounted at ``/ops/`` (the ops API itself lives under ``/mt5/client/ops/``)."""

from django.urls import path

from ops import dashboard_views

urlpatterns = [
    path("", dashboard_views.dashboard_page, name="ops-dashboard"),
    path("data", dashboard_views.dashboard_data, name="ops-dashboard-data"),
]
