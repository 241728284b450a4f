"""What the hot paths in front of Django (trading/reads/hotpath.py, trading/hotwrites.py) must check and add
the way Django's middleware would, so that an answer given in front is the answer Django would give.

Checks a hot path makes before answering (else it hands the request to Django, which answers it):
``Host`` in ``ALLOWED_HOSTS`` (Django: ``400``), and with ``SECURE_SSL_REDIRECT`` a secure request (Django:
``301`` to https), secure meaning ``SECURE_PROXY_SSL_HEADER`` says https or the server's own scheme is https.
Headers every answer gets (``SecurityMiddleware``, ``XFrameOptionsMiddleware``): ``X-Frame-Options``,
``X-Content-Type-Options``, ``Referrer-Policy``, ``Cross-Origin-Opener-Policy``, and on a secure request
``Strict-Transport-Security`` when ``SECURE_HSTS_SECONDS`` is set.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host


def header_map(scope: dict[str, Any], limit: int) -> dict[bytes, bytes] | None:
    """The request's headers by (lower-case) name; None when one is over ``limit`` bytes (name + value) or
    sent twice (Django answers 431, or 400 for a repeated request id)."""
    seen: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if len(name) + len(value) > limit or name in seen:
            return None
        seen[name] = value
    return seen


def host_allowed(headers: dict[bytes, bytes]) -> bool:
    host, _ = split_domain_port(headers.get(b"host", b"").decode("latin-1"))
    return bool(host) and validate_host(host, settings.ALLOWED_HOSTS)


def request_is_secure(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    """``HttpRequest.is_secure()`` for an ASGI request."""
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        meta_name, secure_value = proxy
        given = headers.get(meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin-1"))
        if given is not None:
            return given.split(b",", 1)[0].strip().decode("latin-1") == secure_value
    return scope.get("scheme") == "https"


def redirect_due(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    """Django would redirect this request to https (``SECURE_SSL_REDIRECT``) instead of answering it."""
    return bool(getattr(settings, "SECURE_SSL_REDIRECT", False)) and not request_is_secure(scope, headers)


def security_headers(secure: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-frame-options", settings.X_FRAME_OPTIONS.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", settings.SECURE_REFERRER_POLICY.encode()),
        (b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()),
    ]
    seconds = getattr(settings, "SECURE_HSTS_SECONDS", 0)
    if secure and seconds:
        value = f"max-age={seconds}"
        if getattr(settings, "SECURE_HSTS_INCLUDE_SUBDOMAINS", False):
            value += "; includeSubDomains"
        if getattr(settings, "SECURE_HSTS_PRELOAD", False):
            value += "; preload"
        headers.append((b"strict-transport-security", value.encode()))
    return headers
