"""GET /events/recent: the replayable events of the session, for clients without a socket; POST
/events/ticket: a single-use ticket that opens one socket without the API key in its URL. Thin views."""

from __future__ import annotations

import json

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bridge_project.errors import ValidationFailed
from bridge_project.schema import COMMON_ERRORS, SESSION_HEADER, csv_enum, error, query
from sessions.services import require_live_session

from . import tickets
from .keys import REPLAYABLE
from .publisher import sync_redis
from .replay import read_since

MAX_LIMIT = 1000
MAX_SEQ = 2**63 - 1  # a seq is an int64 (the first part of a Redis stream id, which ends at 2**64-1)


def _int_param(request: Request, name: str, default: int, low: int, high: int | None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise ValidationFailed(f"{name} must be a non-negative integer", {name: ["not an integer"]})
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise ValidationFailed(f"{name} must be between {low} and {high}", {name: ["out of range"]})
    return value


def _channels_param(request: Request) -> set[str]:
    raw = request.query_params.get("channels")
    if raw is None:
        return set(REPLAYABLE)
    channels = {c.strip() for c in raw.split(",") if c.strip()}
    bad = sorted(channels - set(REPLAYABLE))
    if not channels or bad:
        raise ValidationFailed("channels must be a comma-separated subset of order,position,account,session",
                               {"channels": [f"invalid: {c}" for c in bad] or ["empty"]})
    return channels


RecentEventsSerializer = inline_serializer(
    name="RecentEvents",
    fields={
        "sessionId": serializers.CharField(),
        "since": serializers.IntegerField(),
        "epoch": serializers.IntegerField(
            help_text="the epoch of the session's sequence (0: no events yet); a new one after Redis lost them"),
        "seq": serializers.IntegerField(help_text="the session's last seq when read"),
        "oldestSeq": serializers.IntegerField(allow_null=True, help_text="the oldest seq still kept"),
        "resyncRequired": serializers.BooleanField(
            help_text="events after `since` are no longer all kept, or `since` counts in another epoch: reload "
            "state over REST, go on from `next` with this `epoch`"),
        "next": serializers.IntegerField(help_text="pass as `since` (with `epoch`) to read on"),
        "hasMore": serializers.BooleanField(),
        "events": serializers.ListField(child=serializers.DictField()),
    },
)


class RecentEventsView(APIView):
    @extend_schema(
        operation_id="events_recent",
        parameters=[
            SESSION_HEADER,
            query("since", {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                  "the last seq the client has (default 0: all kept)"),
            query("epoch", {"type": "integer", "minimum": 0},
                  "the epoch `since` counts in (from the events or a previous page); another than the "
                  "session's: `resyncRequired`"),
            query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                  f"events per page, 1-{MAX_LIMIT} (default 500)"),
            csv_enum("channels", sorted(REPLAYABLE), "comma-separated subset of the replayable channels "
                     "(default: all)"),
        ],
        responses={200: RecentEventsSerializer, **COMMON_ERRORS, 401: error("Unauthorized / SessionExpired")},
        description="The session's replayable events (order, position, account) after `since`, in seq order: "
        "the same events a socket gets with `resume`. Kept per session: the last BRIDGE_EVENTS_MAXLEN "
        "(10,000) events no older than BRIDGE_EVENTS_MAX_AGE (24 h). `session` events are the session's "
        "status changes.",
    )
    def get(self, request: Request) -> Response:
        session = require_live_session(request)
        since = _int_param(request, "since", 0, 0, MAX_SEQ)
        epoch = _int_param(request, "epoch", 0, 0, None)
        limit = _int_param(request, "limit", 500, 1, MAX_LIMIT)
        channels = _channels_param(request)
        page = read_since(sync_redis(), session.id, since, limit)
        new_epoch = page.epoch_differs(epoch)
        if new_epoch:  # as on the socket: go on from the new epoch's start when all of it is kept
            resync, next_seq = True, 0 if page.whole_epoch_kept else page.current
        else:
            resync = page.resync_required
            next_seq = page.current if resync else page.last
        events = [] if resync else [
            json.loads(text) for channel, text in zip(page.channels, page.events, strict=True) if channel in channels
        ]
        return Response({
            "sessionId": session.id,
            "since": since,
            "epoch": page.epoch,
            "seq": page.current,
            "oldestSeq": page.oldest,
            "resyncRequired": resync,
            "next": next_seq,
            "hasMore": not resync and not page.complete,
            "events": events,
        })


TicketSerializer = inline_serializer(
    name="EventsTicket",
    fields={
        "ticket": serializers.CharField(help_text="open the socket with `/events?ticket=<ticket>`; single use"),
        "expiresAt": serializers.IntegerField(help_text="unix seconds, UTC: unused after this, it is refused"),
    },
)


class EventsTicketView(APIView):
    @extend_schema(
        operation_id="events_ticket",
        request=None,
        parameters=[SESSION_HEADER],
        responses={
            201: TicketSerializer,
            **COMMON_ERRORS,
            401: error("Unauthorized: API key missing, wrong or revoked; session missing or unknown / SessionExpired: "
                       "the session is closed, expired or failed"),
            503: error("Unavailable: Redis, where tickets are kept, is unreachable; see Retry-After"),
        },
        description="A short-lived (BRIDGE_EVENTS_TICKET_TTL, 30 s), single-use ticket for the session's event "
        "socket: connect to `/events?ticket=<ticket>` instead of putting the API key in the URL (`?token=` is "
        "kept for compatibility but discouraged: URLs land in proxy and server logs). The socket opened with it "
        "is bound to this session and this API key (revoking the key closes it). A used, expired or unknown "
        "ticket: the socket is closed with 4401.",
    )
    def post(self, request: Request) -> Response:
        session = require_live_session(request)
        ticket, expires_at = tickets.issue(session_id=session.id, key_id=request.user.api_key.pk,
                                           workspace_id=session.workspace_id)
        return Response({"ticket": ticket, "expiresAt": int(expires_at)}, status=status.HTTP_201_CREATED,
                        headers={"Cache-Control": "no-store"})
