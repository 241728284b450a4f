"""Times every client API request into ``bridge_http_request_seconds`` (Redis-backed, all processes)."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from bridge_project import metrics

CLIENT_API_PREFIX = "/mt5/client/"


class RequestMetricsMiddleware:
    """Observes the time to answer each ``/mt5/client/`` request, by method and status class (2xx, 4xx,
    ...): bounded labels, so a scan of random URLs cannot grow the metric. One pipelined Redis call."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(CLIENT_API_PREFIX):
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in {"GET", "POST", "PATCH", "PUT", "DELETE"} else "other"
        metrics.observe("bridge_http_request_seconds", time.perf_counter() - started,
                        method=method, status=f"{response.status_code // 100}xx")
        return response
