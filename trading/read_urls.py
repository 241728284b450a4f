"""Read endpoints (issue #5). GET /positions/{ticket} is routed by trading/urls.py (PositionView), which
calls trading.reads.views.position_detail."""

from django.urls import path

from .reads import views

urlpatterns = [
    path("account", views.AccountView.as_view(), name="account"),
    path("positions", views.PositionsView.as_view(), name="positions"),
    path("orders", views.OrdersView.as_view(), name="orders-list"),
    path("symbols", views.SymbolsView.as_view(), name="symbols"),
    path("symbols/<str:symbol>", views.SymbolDetailView.as_view(), name="symbol-detail"),
    path("quotes/history", views.BarsView.as_view(), name="quotes-history"),
    path("quotes/<str:symbol>", views.QuoteView.as_view(), name="quote"),
    path("ticks/<str:symbol>", views.TicksView.as_view(), name="ticks"),
    path("depth/<str:symbol>", views.DepthView.as_view(), name="depth"),
    path("history/orders", views.HistoryOrdersView.as_view(), name="history-orders"),
    path("history/deals", views.HistoryDealsView.as_view(), name="history-deals"),
]
