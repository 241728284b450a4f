"""Exceptions: one class per error code of the bridge's error body.

The bridge answers every error as ``{"error": {"code", "message", "details"}}`` with a matching status;
:func:`error_from_response` turns that into the class of its code (or of its status when the code is one
this package does not know), carrying the code, message, details, status and the request id.
"""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """An error answered by the bridge (or raised by this client on its behalf)."""

    def __init__(self, message: str, *, code: str = "BridgeError", details: dict[str, Any] | None = None,
                 status: int | None = None, request_id: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details: dict[str, Any] = details or {}
        self.status = status
        self.request_id = request_id
        self.headers: dict[str, str] = headers or {}

    def __str__(self) -> str:
        where = f" [{self.status} {self.code}]" if self.status else f" [{self.code}]"
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.message}{where}{rid}"


class ValidationError(BridgeError):
    """400 (or 415): the body, query or headers failed validation; ``details`` names each field."""


class Unauthorized(BridgeError):
    """401: API key missing, wrong or revoked; or the session id is missing, unknown or ended."""


class SessionExpired(Unauthorized):
    """401 ``SessionExpired``: the session was closed, expired or failed its login."""


class Forbidden(BridgeError):
    """403: the endpoint needs a staff user or the ops token."""


class NotFound(BridgeError):
    """404: unknown task, ticket, symbol; anything of another workspace."""


class Conflict(BridgeError):
    """409 with a code this client does not know of."""


class TaskConflict(Conflict):
    """409: the request id was used with another payload (``details.taskId`` names the task), or the task
    can no longer be changed."""

    @property
    def task_id(self) -> str | None:
        return self.details.get("taskId")

    @property
    def task_ids(self) -> list[str]:
        """The tasks of a close-all whose request id was reused (``details.taskIds``)."""
        return list(self.details.get("taskIds") or ([self.task_id] if self.task_id else []))


class SessionNotReady(Conflict):
    """409: the session is still ``opening``; nothing was queued."""


class SessionPaused(Conflict):
    """409: the session is paused; resume it to trade."""


class TerminalBusy(Conflict):
    """409: the terminal asked for (or every terminal) already has a live session."""


class PayloadTooLarge(BridgeError):
    """413: the body is over the bridge's limit."""


class RateLimited(BridgeError):
    """429: the workspace's (or key's, or address's) rate was exceeded. ``retry_after`` in seconds."""

    @property
    def retry_after(self) -> float | None:
        return retry_after_of(self.headers, self.details)


class InternalError(BridgeError):
    """500: unexpected on the bridge (logged there with the request id)."""


class BridgeUnavailable(BridgeError):
    """502: the session's terminal, its worker or the broker cannot be reached."""


class Unavailable(BridgeError):
    """503: a dependency of the bridge itself (Redis, the database) is down; retry with the same request id."""

    @property
    def retry_after(self) -> float | None:
        return retry_after_of(self.headers, self.details)


class ConnectionFailed(BridgeError):
    """The bridge could not be reached (or the connection dropped) after every retry."""


class LoginFailed(BridgeError):
    """The session did not become active: MT5 refused the login (``details["error"]``), or it timed out."""


class TaskTimeout(BridgeError):
    """A task did not reach a final state within the time given to ``wait``."""


class StreamClosed(BridgeError):
    """The event stream was closed by the bridge for good (``code`` names why)."""


CODES: dict[str, type[BridgeError]] = {
    "ValidationError": ValidationError,
    "Unauthorized": Unauthorized,
    "SessionExpired": SessionExpired,
    "Forbidden": Forbidden,
    "NotFound": NotFound,
    "TaskConflict": TaskConflict,
    "SessionNotReady": SessionNotReady,
    "SessionPaused": SessionPaused,
    "TerminalBusy": TerminalBusy,
    "PayloadTooLarge": PayloadTooLarge,
    "RateLimited": RateLimited,
    "InternalError": InternalError,
    "BridgeUnavailable": BridgeUnavailable,
    "Unavailable": Unavailable,
}

STATUSES: dict[int, type[BridgeError]] = {
    400: ValidationError, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 415: ValidationError, 429: RateLimited, 500: InternalError,
    502: BridgeUnavailable, 503: Unavailable,
}


def retry_after_of(headers: dict[str, str], details: dict[str, Any] | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds form), else ``details.retryAfter``."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    if details and isinstance(details.get("retryAfter"), int | float):
        return max(0.0, float(details["retryAfter"]))
    return None


def error_from_response(status: int, body: Any, headers: dict[str, str], request_id: str | None) -> BridgeError:
    """The exception for an error answer of the bridge."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "")
        message = str(error.get("message") or code or f"HTTP {status}")
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
    else:
        code, message, details = "", f"HTTP {status}", {"body": body}
    cls = CODES.get(code) or STATUSES.get(status) or BridgeError
    return cls(message, code=code or cls.__name__, details=details, status=status, request_id=request_id,
               headers={k.lower(): v for k, v in headers.items()})


def error_from_close(code: int, reason: str, error: dict[str, Any] | None) -> BridgeError:
    """The exception for an event socket the bridge closed for good (4401, 4410, ...)."""
    error = error or {}
    name = str(error.get("code") or "")
    message = str(error.get("message") or reason or f"socket closed with {code}")
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    cls = CODES.get(name) or (Unauthorized if code == 4401 else StreamClosed)
    exc = cls(message, code=name or cls.__name__, details={**details, "closeCode": code})
    return exc
