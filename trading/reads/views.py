"""Read endpoints (GET, under a live session). Thin: validation here, reads in selectors.py."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bridge_project.schema import (
    NOT_READY,
    SESSION_ERRORS,
    api_errors,
    error,
    operation_parameters,
    query,
)
from sessions.services import require_active_session

from . import selectors
from .readqueue import RawJSON
from .serializers import (
    GROUP_PATTERN,
    MAX_COUNT,
    MAX_LIMIT,
    MAX_MAGIC,
    MAX_TICK_RANGE,
    SYMBOL_PATTERN,
    TIME_SCHEMA,
    BarsQuery,
    HistoryQuery,
    StatsQuery,
    SymbolFilterQuery,
    SymbolsQuery,
    TicksQuery,
    max_ticks_per_request,
    validate_symbol,
    validated,
)

READ_ERRORS = api_errors(SESSION_ERRORS, {
    409: error(NOT_READY),
    502: error("BridgeUnavailable: the terminal, its read process or poller, or the broker cannot be reached "
               "(answered within about BRIDGE_READ_TIMEOUT seconds, at once when the reader is known down)"),
})
NOT_FOUND = {404: error("NotFound: unknown symbol (or ambiguous broker suffix: details.candidates)")}
SNAPSHOT_NOTE = (
    " Served from the terminal poller's snapshot (`source: snapshot`, `asOf` = when it was taken, real-UTC "
    "unix seconds; fresh within BRIDGE_POLL_INTERVAL, default 0.25 s), or read from the terminal when the "
    "snapshot is missing or older than BRIDGE_SNAPSHOT_MAX_AGE (`source: terminal`). Served only while the "
    "terminal is bound to this session and shows its account: otherwise 502 `account_mismatch`."
)
SYMBOL_SCHEMA = {"type": "string", "pattern": SYMBOL_PATTERN}
SYMBOL_EXAMPLES = [OpenApiExample("EURUSD", value="EURUSD")]
SYMBOL_QUERY = OpenApiParameter("symbol", SYMBOL_SCHEMA, description="only this symbol (exact broker name, "
                                "case-insensitive)", examples=SYMBOL_EXAMPLES)
SYMBOL_PATH = OpenApiParameter("symbol", SYMBOL_SCHEMA, OpenApiParameter.PATH, examples=SYMBOL_EXAMPLES,
                               description="a symbol name: 1 to 29 of A-Z a-z 0-9 . _ # + - $ & @ ^ ~ ' ! "
                               "(not starting with !); the broker's name, suffixes resolved (docs/reads.md)")
TIME_PARAMS = [
    query("from", TIME_SCHEMA, "unix seconds, real UTC (an ISO 8601 date-time is accepted too)"),
    query("to", TIME_SCHEMA, "unix seconds, real UTC (an ISO 8601 date-time is accepted too); not before `from`"),
]


def count_params(max_count: int, what: str) -> list[OpenApiParameter]:
    return [
        OpenApiParameter(
            "count", {"type": "integer", "minimum": -max_count, "maximum": max_count, "not": {"enum": [0]}},
            description="signed, not 0: >0 the N from `from` forward, <0 the N up to `from`; without `from`, the "
            f"last |N|. Not with `to`. At most {what}.", examples=[OpenApiExample("the last 10", value=10)]),
        *TIME_PARAMS,
        query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
              "page size of a from/to range, not with `count` (capped at the terminal's maxbars, or "
              "BRIDGE_READ_MAX_TICKS for ticks). A longer range answers one page and `next: {from}` to continue; "
              "`next` is null on the last page."),
    ]


COUNT_RULES = (" `count` or `from` is required; `to` needs `from` and excludes `count`; `from` is not after `to`. "
               "Also 400: a range that starts before the oldest bar/tick the terminal keeps or reaches beyond its "
               "history (details name `from`, or `code` and `maxbars`).")


def _raw(answer: RawJSON) -> HttpResponse:
    """A large answer as the read process serialized it (see readqueue.RawJSON)."""
    return HttpResponse(answer.body, content_type="application/json")


def _symbol_filter(request: Request) -> str | None:
    return validated(SymbolFilterQuery, request.query_params).get("symbol")


def _no_query(request: Request) -> None:
    validated(SymbolFilterQuery, request.query_params, allowed=set())


class AccountView(APIView):
    @extend_schema(operation_id="account_get", parameters=operation_parameters(), responses={200: OpenApiTypes.OBJECT,
                   **READ_ERRORS}, description="AccountInfo fields of the session's account." + SNAPSHOT_NOTE)
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        _no_query(request)
        return Response(selectors.account(session))


class PositionsView(APIView):
    @extend_schema(operation_id="positions_list", parameters=operation_parameters(SYMBOL_QUERY),
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS},
                   description="`{positions: [...], orders: [...]}`: open positions and pending orders." + SNAPSHOT_NOTE)
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        return Response(selectors.positions(session, _symbol_filter(request)))


def position_detail(request: Request, ticket: int) -> Response:
    """GET /positions/{ticket}: one open position (called by trading's PositionView.get)."""
    session = require_active_session(request)
    _no_query(request)
    return Response(selectors.position(session, int(ticket)))


def orders_list(request: Request) -> Response:
    """GET /orders: pending orders (called by trading's OrderCollectionView.get, which also serves POST)."""
    session = require_active_session(request)
    return Response(selectors.orders(session, _symbol_filter(request)))


class SymbolsView(APIView):
    @extend_schema(operation_id="symbols_list", parameters=operation_parameters(query(
        "group", {"type": "string", "pattern": GROUP_PATTERN}, "MT5 group mask (printable ASCII without spaces, "
        "at most 256 characters), e.g. `*USD*` or `*,!*JPY*`")),
        responses={200: OpenApiTypes.OBJECT, **READ_ERRORS},
        description="Enabled symbols (trade mode not disabled) with digits, point, volume limits and trade mode; "
                    "`select` says whether it is in Market Watch.")
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        query = validated(SymbolsQuery, request.query_params)
        return Response(selectors.symbols(session, query.get("group")))


class SymbolDetailView(APIView):
    @extend_schema(operation_id="symbol_get", parameters=operation_parameters(SYMBOL_PATH),
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS, **NOT_FOUND},
                   description="Full SymbolInfo. A known symbol not in Market Watch is selected first. "
                               "`name` is the broker's exact name (suffixes resolved, see docs/reads.md).")
    def get(self, request: Request, symbol: str) -> Response:
        session = require_active_session(request)
        _no_query(request)
        return Response(selectors.symbol_info(session, validate_symbol(symbol)))


class QuoteView(APIView):
    @extend_schema(operation_id="quote_get", parameters=operation_parameters(SYMBOL_PATH),
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS, **NOT_FOUND},
                   description="The last tick (`time` and `time_msc` real UTC)." + SNAPSHOT_NOTE + " A symbol asked "
                               "for here is kept in the snapshot for BRIDGE_QUOTE_INTEREST_TTL seconds. (`history` "
                               "is not a symbol here: `/quotes/history` is the bars.)")
    def get(self, request: Request, symbol: str) -> Response:
        session = require_active_session(request)
        _no_query(request)
        return Response(selectors.quote(session, validate_symbol(symbol)))


class BarsView(APIView):
    @extend_schema(operation_id="quotes_history", parameters=operation_parameters(
        OpenApiParameter("symbol", SYMBOL_SCHEMA, required=True, examples=SYMBOL_EXAMPLES,
                         description="the symbol (broker name; suffixes resolved, see docs/reads.md)"),
        OpenApiParameter("timeframe", {"type": "string", "enum": list(BarsQuery().fields["timeframe"].choices)},
                         required=True, examples=[OpenApiExample("one minute", value="M1")]),
        *count_params(MAX_COUNT, "the terminal's maxbars (|count| over it is a 400 naming `count` and "
                      "`maxbars`)")), responses={200: OpenApiTypes.OBJECT, **READ_ERRORS, **NOT_FOUND},
        description="OHLC bars, oldest first, `time` = bar open in real UTC. A range over one page answers a page "
                    "and `next`; without `to` it ends now (or at `from` when that is later)." + COUNT_RULES)
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        return _raw(selectors.bars(session, validated(BarsQuery, request.query_params)))


class TicksView(APIView):
    @extend_schema(operation_id="ticks_list", parameters=operation_parameters(
        SYMBOL_PATH,
        OpenApiParameter("flags", {"type": "string", "enum": list(TicksQuery().fields["flags"].choices)},
                         description="default ALL"),
        *count_params(max_ticks_per_request(), "BRIDGE_READ_MAX_TICKS")),
        responses={200: OpenApiTypes.OBJECT, **READ_ERRORS, **NOT_FOUND},
        description="Ticks, oldest first, real-UTC `time`/`time_msc`, by the same count/from/to model as bars. "
                    f"A from/to range spans at most {MAX_TICK_RANGE} s (one day; without `to`, `from` is within "
                    "the last day): page through longer spans." + COUNT_RULES)
    def get(self, request: Request, symbol: str) -> Response:
        session = require_active_session(request)
        symbol = validate_symbol(symbol)
        return _raw(selectors.ticks(session, symbol, validated(TicksQuery, request.query_params)))


class DepthView(APIView):
    @extend_schema(operation_id="depth_get", parameters=operation_parameters(SYMBOL_PATH),
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS, **NOT_FOUND},
                   description="The market book: `{symbol, book: [{type, side, price, volume, volume_dbl}]}`, sell "
                               "rows first by descending price, then buy rows (MT5's order).")
    def get(self, request: Request, symbol: str) -> Response:
        session = require_active_session(request)
        _no_query(request)
        return Response(selectors.depth(session, validate_symbol(symbol)))


class HistoryView(APIView):
    kind = "deals"

    @extend_schema(parameters=operation_parameters(*TIME_PARAMS, SYMBOL_QUERY, query(
        "position", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
        "only this position id (then from/to are optional filters)")),
        responses={200: OpenApiTypes.OBJECT, **READ_ERRORS},
        description="History orders or deals in [from, to] (default: the 7 days up to `to`; `to` defaults to now, "
                    "or to `from` when that is later), real-UTC times. `from` after `to` is a 400.")
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        return _raw(selectors.history(session, self.kind, validated(HistoryQuery, request.query_params)))


class HistoryOrdersView(HistoryView):
    kind = "orders"


class HistoryDealsView(HistoryView):
    kind = "deals"


def _money(help_text: str, null: bool = False) -> serializers.FloatField:
    return serializers.FloatField(help_text=help_text, allow_null=null)


StatsSerializer = inline_serializer(name="Stats", fields={
    "from": serializers.FloatField(help_text="start of the range, real-UTC unix seconds"),
    "to": serializers.FloatField(help_text="end of the range, real-UTC unix seconds"),
    "symbol": serializers.CharField(allow_null=True, help_text="the symbol filter as given, or null"),
    "magic": serializers.IntegerField(allow_null=True, help_text="the magic filter, or null"),
    "currency": serializers.CharField(help_text="the account currency: every amount is in it"),
    "trades": serializers.IntegerField(help_text="closing BUY/SELL deals (entry OUT, INOUT, OUT_BY)"),
    "wins": serializers.IntegerField(help_text="trades with a result > 0"),
    "losses": serializers.IntegerField(help_text="trades with a result < 0"),
    "breakeven": serializers.IntegerField(help_text="trades with a result of 0 at the currency's digits"),
    "winRate": serializers.FloatField(allow_null=True, help_text="wins / trades (0..1, 4 decimals); null without "
                                      "trades"),
    "profitFactor": serializers.FloatField(allow_null=True, help_text="grossProfit / |grossLoss| (4 decimals); "
                                           "null without losses"),
    "expectancy": _money("(grossProfit + grossLoss) / trades; null without trades", True),
    "averageWin": _money("grossProfit / wins; null without wins", True),
    "averageLoss": _money("grossLoss / losses (negative); null without losses", True),
    "largestWin": _money("the best trade result; null without wins", True),
    "largestLoss": _money("the worst trade result (negative); null without losses", True),
    "maxDrawdown": _money("the largest fall of the curve from a peak to a later point (>= 0)"),
    "maxDrawdownPercent": serializers.FloatField(allow_null=True, help_text="that fall in % of its peak (2 "
                                                 "decimals); null with a filter or an unknown start balance"),
    "startBalance": _money("the balance right before `from` (the curve's start); null with a filter or when "
                           "it could not be read consistently", True),
    "netProfit": _money("what the selected BUY/SELL deals did to the balance: the trades' results plus the "
                        "entry deals' commission, fee and swap"),
    "grossProfit": _money("sum of the winning trades' results"),
    "grossLoss": _money("sum of the losing trades' results (<= 0)"),
    "commission": _money("commission of the selected BUY/SELL deals, entries and trades (<= 0 as MT5 gives it)"),
    "swap": _money("swap of the selected BUY/SELL deals"),
    "fee": _money("fee of the selected BUY/SELL deals"),
    "deals": serializers.IntegerField(help_text="how many deals the figures come from: without a filter every "
                                      "deal of the range but credit deals; with one, the matching BUY/SELL deals"),
})

STATS_DESCRIPTION = (
    "Trading statistics of the session account's deal history in [from, to] (the deals of "
    "`/history/deals`, same `from`/`to` formats and defaults: `to` = now, `from` = 7 days before `to`; "
    "`from` after `to` is a 400). A **trade** is a deal of type BUY or SELL that closes (entry OUT, INOUT "
    "or OUT_BY); its **result** is profit + swap + commission + fee of that deal: > 0 a win, < 0 a loss, 0 at "
    "the currency's digits breakeven (a partial close is a trade of its own; a close-by is two OUT_BY deals, so "
    "two trades, the second's result being its own commission and swap). Entry deals (IN) are not trades; their commission, fee and swap count in "
    "`commission`, `fee`, `swap` and `netProfit` (= grossProfit + grossLoss + the entry deals' results). "
    "`symbol` and `magic` select the BUY/SELL deals (entries and trades) they match; balance operations "
    "(deposits, withdrawals, charges...) are never trades and count only in the drawdown curve, only "
    "without a filter. **Drawdown**: the curve is followed deal by deal in time order; without a filter it "
    "is the account balance starting from the balance at `from` (`startBalance` = today's balance minus "
    "every deal since `from`, so the deals up to now are read), moved by every deal but credit deals "
    "(a withdrawal is a fall); with a filter it is the running sum of the matching deals' results from 0. "
    "`maxDrawdown` = the largest fall from a peak to a later point, `maxDrawdownPercent` = that fall over "
    "that peak (null with a filter or an unknown start). Amounts are in the account currency, counted in its "
    "minor units (`currency_digits`); averages rounded half away from zero, ratios to 4 decimals, percents to 2. "
    "Details: docs/reads.md, \"GET /stats\"."
)


class StatsView(APIView):
    @extend_schema(operation_id="stats_get", parameters=operation_parameters(
        *TIME_PARAMS, SYMBOL_QUERY,
        query("magic", {"type": "integer", "minimum": 0, "maximum": MAX_MAGIC},
              "only BUY/SELL deals with this magic number (an unsigned 64-bit integer, as in MT5)")),
        responses={200: StatsSerializer, **READ_ERRORS}, description=STATS_DESCRIPTION)
    def get(self, request: Request) -> Response:
        session = require_active_session(request)
        return Response(selectors.stats(session, validated(StatsQuery, request.query_params)))
