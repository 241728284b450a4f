from django.urls import path

from . import views

urlpatterns = [
    path("events/recent", views.RecentEventsView.as_view(), name="events-recent"),
    path("events/ticket", views.EventsTicketView.as_view(), name="events-ticket"),
]
