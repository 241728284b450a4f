"""Read endpoints (GET, under a live session). Thin: validation here, rules in services."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bridge_project.schema import COMMON_ERRORS, SESSION_HEADER, error
from sessions.services import require_active_session

from . import services
from .readqueue import RawJSON
from .serializers import (
    BarsQuery,
    HistoryQuery,
    SymbolFilterQuery,
    SymbolsQuery,
    TicksQuery,
    validate_symbol,
    validated,
)

READ_ERRORS = {
    **{k: v for k, v in COMMON_ERRORS.items() if k != 413},
    401: error("Unauthorized / SessionExpired: API key or x-session-id missing, unknown, closed or expired"),
    409: error("SessionNotReady: the session is still `opening` (its login has not succeeded): nothing of any "
               "account is read before it is `active`"),
    502: error("BridgeUnavailable: the terminal, its read process or poller, or the broker cannot be reached "
               "(answered within about BRIDGE_READ_TIMEOUT seconds, at once when the reader is known down)"),
}
NOT_FOUND = {404: error("NotFound: unknown symbol (or ambiguous broker suffix: details.candidates)")}
SNAPSHOT_NOTE = (
    " Served from the terminal poller's snapshot (`source: snapshot`, `asOf` = when it was taken, real-UTC "
    "unix seconds; fresh within BRIDGE_POLL_INTERVAL, default 0.25 s), or read from the terminal when the "
    "snapshot is missing or older than BRIDGE_SNAPSHOT_MAX_AGE (`source: terminal`). Served only while the "
    "terminal is bound to this session and shows its account: otherwise 502 `account_mismatch`."
)
SYMBOL_QUERY = OpenApiParameter("symbol", str, description="only this symbol (exact broker name, case-insensitive)")
TIME_PARAMS = [
    OpenApiParameter("from", OpenApiTypes.STR, description="unix seconds or ISO 8601, real UTC"),
    OpenApiParameter("to", OpenApiTypes.STR, description="unix seconds or ISO 8601, real UTC"),
]
COUNT_PARAMS = [
    OpenApiParameter("count", int, description="signed: >0 the N from `from` forward, <0 the N up to `from`; "
                     "without `from`, the last |N|. Not with `to`."),
    *TIME_PARAMS,
    OpenApiParameter("limit", int, description="page size of a from/to range (bars: at most the terminal's "
                     "maxbars; ticks: at most BRIDGE_READ_MAX_TICKS). A longer range answers one page and "
                     "`next: {from}` to continue; `next` is null on the last page."),
]


def _raw(answer: RawJSON) -> HttpResponse:
    """A large answer as the read process serialized it (see readqueue.RawJSON)."""
    return HttpResponse(answer.body, content_type="application/json")


def _symbol_filter(request: Request) -> str | None:
    return validated(SymbolFilterQuery, request.query_params).get("symbol")


def _no_query(request: Request) -> None:
    validated(SymbolFilterQuery, request.query_params, allowed=set())


class AccountView(APIView):
    @extend_schema(operation_id="account_get", parameters=[SESSION_HEADER], responses={200: OpenApiTypes.OBJECT,
                   **READ_ERRORS}, description="AccountInfo fields of the session's account." + SNAPSHOT_NOTE)
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        _no_query(request)
        return Response(services.account(session))


class PositionsView(APIView):
    @extend_schema(operation_id="positions_list", parameters=[SESSION_HEADER, SYMBOL_QUERY],
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS},
                   description="`{positions: [...], orders: [...]}`: open positions and pending orders." + SNAPSHOT_NOTE)
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        return Response(services.positions(session, _symbol_filter(request)))


def position_detail(request: Request, ticket: int) -> Response:
    """GET /positions/{ticket}: one open position (called by trading's PositionView.get)."""
    session = require_active_session(request)
    _no_query(request)
    return Response(services.position(session, int(ticket)))


def orders_list(request: Request) -> Response:
    """GET /orders: pending orders (for a view that also serves POST /orders to call from its get())."""
    session = require_active_session(request)
    return Response(services.orders(session, _symbol_filter(request)))


class OrdersView(APIView):
    @extend_schema(operation_id="orders_list", parameters=[SESSION_HEADER, SYMBOL_QUERY],
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS},
                   description="`{orders: [...]}`: pending orders at the terminal." + SNAPSHOT_NOTE)
    def get(self, request: Request) -> Response:
        return orders_list(request)


class SymbolsView(APIView):
    @extend_schema(operation_id="symbols_list", parameters=[SESSION_HEADER, OpenApiParameter(
        "group", str, description="MT5 group mask, e.g. `*USD*` or `*,!*JPY*`")],
        responses={200: OpenApiTypes.OBJECT, **READ_ERRORS},
        description="Enabled symbols (trade mode not disabled) with digits, point, volume limits and trade mode; "
                    "`select` says whether it is in Market Watch.")
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        query = validated(SymbolsQuery, request.query_params)
        return Response(services.symbols(session, query.get("group")))


class SymbolDetailView(APIView):
    @extend_schema(operation_id="symbol_get", parameters=[SESSION_HEADER],
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS, **NOT_FOUND},
                   description="Full SymbolInfo. A known symbol not in Market Watch is selected first. "
                               "`name` is the broker's exact name (suffixes resolved, see docs/reads.md).")
    def get(self, request: Request, symbol: str) -> Response:
        session = require_active_session(request)
        _no_query(request)
        return Response(services.symbol_info(session, validate_symbol(symbol)))


class QuoteView(APIView):
    @extend_schema(operation_id="quote_get", parameters=[SESSION_HEADER],
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS, **NOT_FOUND},
                   description="The last tick (`time` and `time_msc` real UTC)." + SNAPSHOT_NOTE + " A symbol asked "
                               "for here is kept in the snapshot for BRIDGE_QUOTE_INTEREST_TTL seconds.")
    def get(self, request: Request, symbol: str) -> Response:
        session = require_active_session(request)
        _no_query(request)
        return Response(services.quote(session, validate_symbol(symbol)))


class BarsView(APIView):
    @extend_schema(operation_id="quotes_history", parameters=[
        SESSION_HEADER, OpenApiParameter("symbol", str, required=True),
        OpenApiParameter("timeframe", str, required=True, enum=list(BarsQuery().fields["timeframe"].choices)),
        *COUNT_PARAMS], responses={200: OpenApiTypes.OBJECT, **READ_ERRORS, **NOT_FOUND},
        description="OHLC bars, oldest first, `time` = bar open in real UTC. `count` over the terminal's maxbars "
                    "is a 400; a range over one page answers a page and `next`.")
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        return _raw(services.bars(session, validated(BarsQuery, request.query_params)))


class TicksView(APIView):
    @extend_schema(operation_id="ticks_list", parameters=[
        SESSION_HEADER, OpenApiParameter("flags", str, enum=["ALL", "INFO", "TRADE"], description="default ALL"),
        *COUNT_PARAMS], responses={200: OpenApiTypes.OBJECT, **READ_ERRORS, **NOT_FOUND},
        description="Ticks, oldest first, real-UTC `time`/`time_msc`, by the same count/from/to model as bars.")
    def get(self, request: Request, symbol: str) -> Response:
        session = require_active_session(request)
        symbol = validate_symbol(symbol)
        return _raw(services.ticks(session, symbol, validated(TicksQuery, request.query_params)))


class DepthView(APIView):
    @extend_schema(operation_id="depth_get", parameters=[SESSION_HEADER],
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS, **NOT_FOUND},
                   description="The market book: `{symbol, book: [{type, side, price, volume, volume_dbl}]}`, sell "
                               "rows first by descending price, then buy rows (MT5's order).")
    def get(self, request: Request, symbol: str) -> Response:
        session = require_active_session(request)
        _no_query(request)
        return Response(services.depth(session, validate_symbol(symbol)))


class HistoryView(APIView):
    kind = "deals"

    @extend_schema(parameters=[SESSION_HEADER, *TIME_PARAMS, SYMBOL_QUERY, OpenApiParameter(
        "position", int, description="only this position id (then from/to are optional filters)")],
        responses={200: OpenApiTypes.OBJECT, **READ_ERRORS},
        description="History orders or deals in [from, to] (default: the last 7 days), real-UTC times.")
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        return _raw(services.history(session, self.kind, validated(HistoryQuery, request.query_params)))


class HistoryOrdersView(HistoryView):
    kind = "orders"


class HistoryDealsView(HistoryView):
    kind = "deals"
