"""Write and task routes. ``orders`` and ``positions/<ticket>`` are shared with the reads: their views
here answer GET with the read functions of ``trading.reads.views``."""

from django.urls import path

from . import views

urlpatterns = [
    path("orders", views.OrderCollectionView.as_view(), name="orders"),
    path("orders/<str:task_id>", views.OrderDetailView.as_view(), name="order-detail"),
    path("positions/close", views.PositionsCloseView.as_view(), name="positions-close"),
    path("positions/<int:ticket>", views.PositionView.as_view(), name="position-detail"),
    path("positions/<int:ticket>/close", views.PositionCloseView.as_view(), name="position-close"),
    path("tasks", views.TaskListView.as_view(), name="tasks"),
    path("tasks/<str:task_id>", views.TaskDetailView.as_view(), name="task-detail"),
]
