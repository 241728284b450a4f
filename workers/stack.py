"""The processes of the bridge, as command lines.

One place renders them for every launcher: the embedded stack (``run_bridge``), docker-compose
and the Windows VM provisioning. Each entry is ``role -> argv`` (relative to the project root,
``python`` being the project's interpreter).

The web server of the embedded stack is daphne, started as ``python -m workers.stack daphne <daphne
arguments>`` (``daphne_argv``): daphne has no option for the sizes Twisted's HTTP parser accepts, so
this entry point sets them before daphne starts (``run_daphne``; docs/operations.md, "Bad input and
limits").
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
import uuid

from .gc_tuning import gc_thresholds, tune_gc

ASGI_APPLICATION = "bridge_project.asgi:application"
# The largest header field (and request line) the web servers pass to the application; the
# application itself answers 431 above BRIDGE_MAX_HEADER_BYTES (8 KiB), well below it.
SERVER_MAX_HEADER_BYTES = 64 * 1024


TERMINAL_SETTINGS = "bridge_project.settings_terminal"  # the bridge's settings without the web-only apps


def terminal_process_argvs(name: str, python: str = "python") -> dict[str, list[str]]:
    """Processes attached to terminal ``name``: one, its ``worker``: the pinned order worker, with the
    terminal's read loop and snapshot poller as threads sharing its one terminal connection
    (``workers/terminal_threads.py``). Only the worker may call trading functions."""
    return {
        "worker": [python, "manage.py", "run_terminal_worker", name, f"--settings={TERMINAL_SETTINGS}"],
    }


def daphne_argv(host: str, port: int, python: str = "python") -> list[str]:
    """daphne serving the bridge on ``host:port``, with the header limits of ``run_daphne``."""
    return [python, "-m", "workers.stack", "daphne", "-b", host, "-p", str(port), ASGI_APPLICATION]


def daphne_fd_argv(fd: int, python: str = "python") -> list[str]:
    """daphne serving the bridge on the listening socket it inherits as ``fd``: the embedded stack's web
    processes all accept on one socket the supervisor bound (the kernel spreads connections over them)."""
    return [python, "-m", "workers.stack", "daphne", "--fd", str(fd), ASGI_APPLICATION]


def web_processes() -> int:
    """``BRIDGE_WEB_PROCESSES`` (environment): how many daphne processes the embedded stack runs behind
    its one port. Default: one per core, at most 4 (one daphne process uses one core at most)."""
    given = os.environ.get("BRIDGE_WEB_PROCESSES", "").strip()
    if given:
        count = int(given)
        if count < 1:
            raise ValueError("BRIDGE_WEB_PROCESSES must be at least 1")
        return count
    return max(1, min(4, os.cpu_count() or 1))


def server_max_header_bytes() -> int:
    """``BRIDGE_SERVER_MAX_HEADER_BYTES`` (environment; default 64 KiB)."""
    return int(os.environ.get("BRIDGE_SERVER_MAX_HEADER_BYTES") or SERVER_MAX_HEADER_BYTES)


# --- daphne with the bridge's HTTP limits ------------------------------------------------------------
# What Twisted's HTTP parser (twisted.web.http.HTTPChannel, under daphne) does by itself:
# - a request line or one header line over MAX_LENGTH (16 KiB) makes LineReceiver.lineLengthExceeded
#   drop the connection without any answer;
# - the request line and headers together over totalHeadersSize (16 KiB), more than maxHeaders (500)
#   fields, or a malformed head: "HTTP/1.1 400 Bad Request" with an empty body, connection closed;
# - a POST with a multipart/form-data or form-urlencoded body is parsed into request.args before
#   daphne sees it (daphne never reads them): a multipart type without a boundary is that bare 400,
#   before the application could authenticate anything.
# run_daphne raises the two sizes to the server limit (one line) and twice it (the whole head),
# answers what is still over them with the error body (431, or 414 for the request line, and 400
# for a malformed head) and `x-request-id`, turns the form parsing off (the application parses
# bodies), and makes daphne's own error pages (bad header bytes, a path or query string that is not
# ASCII, an exception in the application) the error body too.

_REASONS = {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large"}
_REQUEST_ID_RE = re.compile(rb"^[\x21-\x2b\x2d-\x7e]{1,128}$")  # as the middleware's, one value (no comma)


def _error_json(status: int, message: str) -> bytes:
    from bridge_project.errors import code_for_status, error_body  # Django is set up by then

    return json.dumps(error_body(code_for_status(status), message)).encode()


def _new_request_id() -> bytes:
    return f"req_{uuid.uuid4().hex}".encode()


def raw_error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error answer (``Connection: close``) in the error body."""
    body = _error_json(status, message)
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Request-Id: {_new_request_id().decode()}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def tune_twisted_http(limit: int) -> None:
    """Install the limits and answers above into Twisted's and daphne's HTTP classes (this process)."""
    # Imported here, not at the top: only the daphne process needs Twisted; the others that import this
    # module for its argv builders (the supervisor, deploy/windows/plan.py, tests) should not load it.
    from daphne import http_protocol
    from twisted.web import http

    class BridgeHTTPChannel(http.HTTPChannel):
        MAX_LENGTH = limit  # the request line, or one header line
        totalHeadersSize = 2 * limit  # the request line and every header line together

        def lineReceived(self, line: bytes):  # Twisted's signature
            if getattr(self, "_receivedHeaderSize", 0) + len(line) > self.totalHeadersSize:
                return self._refuse(431, f"request header fields over {self.totalHeadersSize} bytes together")
            return super().lineReceived(line)

        def headerReceived(self, line: bytes) -> bool:
            if getattr(self, "_receivedHeaderCount", 0) >= self.maxHeaders:
                self._refuse(431, f"more than {self.maxHeaders} request header fields")
                return False
            return super().headerReceived(line)

        def lineLengthExceeded(self, line: bytes) -> None:
            if getattr(self, "_HTTPChannel__first_line", 0):  # still waiting for the request line
                self._refuse(414, f"request line over {self.MAX_LENGTH} bytes")
            else:
                self._refuse(431, f"a request header field over {self.MAX_LENGTH} bytes")

        def _respondToBadRequestAndDisconnect(self) -> None:
            self._refuse(400, "malformed HTTP request")

        def _refuse(self, status: int, message: str) -> None:
            self.transport.write(raw_error_response(status, message))
            self.loseConnection()

    form_parsing_option = "parsePOSTFormSubmission" in inspect.signature(http.Request.__init__).parameters

    class BridgeWebRequest(http_protocol.WebRequest):
        def __init__(self, *args, **kwargs) -> None:
            if form_parsing_option:
                kwargs["parsePOSTFormSubmission"] = False
            super().__init__(*args, **kwargs)

        def basic_error(self, status: int, status_text: bytes, body: str) -> None:
            given = (self.requestHeaders.getRawHeaders(b"x-request-id") or [b""])
            request_id = given[0] if len(given) == 1 and _REQUEST_ID_RE.match(given[0]) else _new_request_id()
            self.handle_reply({
                "type": "http.response.start",
                "status": status,
                "headers": [(b"Content-Type", b"application/json"), (b"X-Request-Id", request_id)],
            })
            self.handle_reply({"type": "http.response.body", "body": _error_json(status, body)})

    http.RESPONSES.setdefault(431, b"Request Header Fields Too Large")  # Twisted says "Unknown Status"
    http.HTTPChannel = BridgeHTTPChannel  # what twisted.web.http.HTTPFactory builds
    http_protocol.WebRequest = BridgeWebRequest  # what daphne's HTTPFactory hands requests to


def run_daphne(args: list[str]) -> None:
    """daphne's command line (``args``), with ``tune_twisted_http(server_max_header_bytes())``,
    ``tune_websocket_sends()`` and the garbage collector tuned (``workers.gc_tuning``) once the
    application is loaded."""
    tune_twisted_http(server_max_header_bytes())
    from .daphne_sends import tune_websocket_sends  # Twisted and autobahn: the daphne process only

    tune_websocket_sends()
    importlib.import_module(ASGI_APPLICATION.split(":", 1)[0])  # Django set up, the application built
    tune_gc(gc_thresholds())
    from daphne.cli import CommandLineInterface  # after the HTTP classes are tuned (see tune_twisted_http)

    CommandLineInterface().run(args)


if __name__ == "__main__":
    if sys.argv[1:2] != ["daphne"]:
        sys.exit("usage: python -m workers.stack daphne <daphne arguments>")
    run_daphne(sys.argv[2:])
