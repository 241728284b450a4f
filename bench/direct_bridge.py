"""A direct synchronous MT5 bridge: the baseline ``bench/compare.py`` measures mt5-bridge against (issue #13).

    .venv/bin/python bench/direct_bridge.py --terminal HOST:PORT --port PORT --login N --password PW [--server NAME]

The architecture most open-source MT5 REST bridges use: one web process (waitress, 4 threads, if installed;
else wsgiref with a thread per request) that calls the terminal inline under one lock and answers with its
result. ``GET /account`` is ``account_info()``; ``POST /orders`` ``{symbol, type: BUY|SELL, volume,
deviation?}`` is ``order_send`` of a market order, answered synchronously. A request that waits longer
than ``LOCK_TIMEOUT`` for the terminal is shed with 503. No auth, no ledger, no idempotency, no events.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mt5sim as mt5  # on Windows: import MetaTrader5 as mt5

LOCK = threading.Lock()  # the MT5 module is one connection per process, not thread-safe
LOCK_TIMEOUT = 5.0  # seconds a request waits for the terminal before it is shed with 503
ORDER_TYPES = {"BUY": mt5.ORDER_TYPE_BUY, "SELL": mt5.ORDER_TYPE_SELL}


def _answer(start_response, status: str, body: object) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def application(environ, start_response) -> list[bytes]:
    route = (environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
    if route == ("GET", "/account"):
        def call():
            return mt5.account_info()
    elif route == ("POST", "/orders"):
        try:
            body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
            request = {"action": mt5.TRADE_ACTION_DEAL, "symbol": str(body["symbol"]), "volume": float(body["volume"]),
                       "type": ORDER_TYPES[body["type"]], "deviation": int(body.get("deviation", 20)),
                       "type_filling": mt5.ORDER_FILLING_IOC}
        except (ValueError, KeyError, TypeError) as exc:
            return _answer(start_response, "400 Bad Request", {"error": f"bad order: {exc!r}"})

        def call():
            return mt5.order_send(request)
    else:
        return _answer(start_response, "404 Not Found", {"error": "not found"})
    if not LOCK.acquire(timeout=LOCK_TIMEOUT):
        return _answer(start_response, "503 Service Unavailable", {"error": "terminal busy"})
    try:
        result, error = call(), mt5.last_error()
    finally:
        LOCK.release()
    if result is None:
        return _answer(start_response, "502 Bad Gateway", {"error": list(error)})
    return _answer(start_response, "200 OK", result._asdict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--terminal", required=True, help="the mt5sim terminal's host:port")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--login", type=int, required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--server", default=None)
    args = parser.parse_args()
    if not (mt5.initialize(args.terminal) and mt5.login(args.login, password=args.password, server=args.server)):
        raise SystemExit(f"direct bridge: cannot reach or log in to {args.terminal}: {mt5.last_error()}")
    try:
        import waitress
    except ImportError:
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args) -> None:  # no access log, as waitress
                pass

        server = make_server("127.0.0.1", args.port, application, type("Threaded", (ThreadingMixIn, WSGIServer), {}),
                             Quiet)
        print(f"direct bridge (wsgiref, thread per request) on 127.0.0.1:{args.port}", flush=True)
        server.serve_forever()
    else:
        print(f"direct bridge (waitress, 4 threads) on 127.0.0.1:{args.port}", flush=True)
        waitress.serve(application, host="127.0.0.1", port=args.port, threads=4, _quiet=True)


if __name__ == "__main__":
    main()
