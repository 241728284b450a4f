"""Ops routes under the client base path (``/mt5/client/ops/...``); ``/metrics`` is at the root."""

from django.urls import path

from ops import views as ops_views

urlpatterns = [
    path("ops/terminals", ops_views.OpsTerminalsView.as_view(), name="ops-terminals"),
    path("ops/tasks", ops_views.OpsTasksView.as_view(), name="ops-tasks"),
]
