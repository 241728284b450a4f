"""Read endpoints. GET /orders and GET /positions/{ticket} are routed by trading/urls.py (their paths
also take writes), whose views call ``orders_list`` and ``position_detail`` of trading/reads/views.py."""

from django.urls import path

from .reads import views

urlpatterns = [
    path("account", views.AccountView.as_view(), name="account"),
    path("positions", views.PositionsView.as_view(), name="positions"),
    path("symbols", views.SymbolsView.as_view(), name="symbols"),
    path("symbols/<str:symbol>", views.SymbolDetailView.as_view(), name="symbol-detail"),
    path("quotes/history", views.BarsView.as_view(), name="quotes-history"),
    path("quotes/<str:symbol>", views.QuoteView.as_view(), name="quote"),
    path("ticks/<str:symbol>", views.TicksView.as_view(), name="ticks"),
    path("depth/<str:symbol>", views.DepthView.as_view(), name="depth"),
    path("history/orders", views.HistoryOrdersView.as_view(), name="history-orders"),
    path("history/deals", views.HistoryDealsView.as_view(), name="history-deals"),
    path("stats", views.StatsView.as_view(), name="stats"),
]
