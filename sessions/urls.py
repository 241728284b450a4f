from django.urls import path

from . import views

urlpatterns = [
    path("session/open", views.SessionOpenView.as_view(), name="session-open"),
    path("session/<str:session_id>", views.SessionDetailView.as_view(), name="session-detail"),
    path("session/<str:session_id>/heartbeat", views.SessionHeartbeatView.as_view(), name="session-heartbeat"),
    path("session/<str:session_id>/pause", views.SessionPauseView.as_view(), name="session-pause"),
    path("session/<str:session_id>/resume", views.SessionResumeView.as_view(), name="session-resume"),
]
