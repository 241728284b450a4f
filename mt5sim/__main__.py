"""``python -m mt5sim serve | broker | run | control``: terminal, trade server, script runner, control CLI."""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from . import protocol


def _load_config(path: str | None) -> dict | None:
    if not path:
        return None
    import yaml  # YAML is a superset of JSON: one loader for both

    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SystemExit(f"mt5sim: config {path} must hold a mapping, not {type(data).__name__}")
    return data


def _stop_event() -> threading.Event:
    """Set by SIGTERM or Ctrl-C: the process then stops cleanly (state written before it exits)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _parse_servers(values: list[str] | None) -> list[tuple[str, int | None]] | None:
    """``--server NAME[=OFFSET_SECONDS]`` options -> [(name, offset or None)]."""
    out = []
    for value in values or []:
        name, sep, offset = value.partition("=")
        name = name.strip()
        if not name:
            raise SystemExit(f"mt5sim: --server needs NAME[=OFFSET_SECONDS], got {value!r}")
        try:
            out.append((name, int(offset) if sep else None))
        except ValueError:
            raise SystemExit(f"mt5sim: --server {value!r}: the offset must be whole seconds") from None
    return out


def _serve_until_stopped(server: Any, address: str, prefix: str, banner: Callable[[], str],
                         close: Callable[[], None], stop: threading.Event | None = None) -> int:
    """Listen, print ``banner()``, serve until SIGTERM or Ctrl-C, then stop the server and ``close()``
    what it served (also when it cannot listen)."""
    try:
        server.start()
    except OSError as exc:
        print(f"mt5sim: cannot listen on {address}: {exc}", file=sys.stderr, flush=True)
        close()
        return 1
    if stop is None:
        stop = _stop_event()
    print(banner(), flush=True)
    while not stop.wait(0.5):
        pass
    print(f"{prefix}: stopping", flush=True)
    server.stop()
    close()
    print(f"{prefix}: stopped", flush=True)
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    """The trade server: accounts, orders, positions, history, prices and rules for its server names."""
    parsed = protocol.parse_address(args.address)
    if parsed is None:
        print(f"mt5sim: --address must be HOST:PORT, got {args.address!r}", file=sys.stderr)
        return 2
    sys.setswitchinterval(0.0005)
    from .broker import Broker, BrokerServer

    servers = _parse_servers(args.server)
    if args.state:
        os.makedirs(args.state, exist_ok=True)
    broker = Broker(_load_config(args.config), args.state, seed=args.seed, servers=servers)
    server = BrokerServer(broker, parsed[0], parsed[1])

    def banner() -> str:
        names = ",".join(f"{n}(UTC{e.server_offset:+d}s)" for n, e in broker.engines.items())
        return (f"mt5sim broker listening on {server.address} (servers={names}, state={args.state or 'memory'}, "
                f"pid={os.getpid()})")

    return _serve_until_stopped(server, args.address, "mt5sim broker", banner, broker.close)


def cmd_terminal(args: argparse.Namespace, parsed: tuple[str, int]) -> int:
    """``serve --broker``: a terminal whose accounts and markets are the broker's."""
    from .terminal import RemoteTerminalServer

    if protocol.parse_address(args.broker) is None:
        print(f"mt5sim: --broker must be HOST:PORT, got {args.broker!r}", file=sys.stderr)
        return 2
    if args.state:
        os.makedirs(args.state, exist_ok=True)
    from .engine.journal import StateDirLocked

    config = _load_config(args.config) or {}
    try:
        server = RemoteTerminalServer(args.broker, parsed[0], parsed[1], state_dir=args.state,
                                      server_name=args.server, terminal_overrides=config.get("terminal"))
    except StateDirLocked as exc:
        print(f"mt5sim: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = _stop_event()
    if not server.connect(stop, wait=False):
        print(f"mt5sim: waiting for the broker at {args.broker} ...", flush=True)
        if not server.connect(stop, wait=True):
            return 0
    return _serve_until_stopped(
        server, args.address, "mt5sim",
        lambda: (f"mt5sim listening on {server.address} (broker={args.broker}, server={server.state.server_name}, "
                 f"state={args.state or 'memory'}, pid={os.getpid()})"),
        lambda: None, stop)


def cmd_serve(args: argparse.Namespace) -> int:
    parsed = protocol.parse_address(args.address)
    if parsed is None:
        print(f"mt5sim: --address must be HOST:PORT, got {args.address!r}", file=sys.stderr)
        return 2
    sys.setswitchinterval(0.0005)  # shorter GIL hand-over: lower latency for connection threads
    if args.broker:
        return cmd_terminal(args, parsed)
    if args.server:
        print("mt5sim: --server needs --broker (a single-process terminal has one server name: see --config)",
              file=sys.stderr)
        return 2

    from .engine import Engine
    from .server import TerminalServer

    if args.state:
        os.makedirs(args.state, exist_ok=True)
    engine = Engine(_load_config(args.config), args.state, seed=args.seed)
    server = TerminalServer(engine, parsed[0], parsed[1])

    def close_engine() -> None:
        with server.engine_lock:
            engine.close()

    return _serve_until_stopped(
        server, args.address, "mt5sim",
        lambda: f"mt5sim listening on {server.address} (state={args.state or 'memory'}, pid={os.getpid()})",
        close_engine)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a MetaTrader5 script unchanged: ``import MetaTrader5`` resolves to mt5sim."""
    if args.address:
        if protocol.parse_address(args.address) is None:
            print(f"mt5sim: --address must be HOST:PORT, got {args.address!r}", file=sys.stderr)
            return 2
        os.environ["MT5SIM_ADDRESS"] = args.address
    if not os.environ.get("MT5SIM_ADDRESS"):
        print("mt5sim: no terminal address: pass --address HOST:PORT or set MT5SIM_ADDRESS", file=sys.stderr)
        return 2
    import mt5sim

    sys.modules["MetaTrader5"] = mt5sim
    script = args.script
    sys.argv = [script, *args.script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    from .control import Control, ControlError

    ctl = Control(args.address, server_name=args.server_name)
    action = args.action
    try:
        if action == "set-price":
            result = ctl.set_price(args.symbol, args.bid, args.ask, args.last)
        elif action == "freeze-feed":
            result = ctl.freeze_feed(args.symbol, frozen=not args.unfreeze)
        elif action == "trade-server":
            result = ctl.trade_server(connected=args.state == "connect")
        elif action == "requote":
            result = ctl.requote(args.count)
        elif action == "reject":
            result = ctl.reject(args.count, args.retcode)
        elif action == "set-clock":
            result = ctl.set_clock(offset_seconds=args.offset, at=args.at)
        elif action == "delay":
            result = ctl.delay(args.seconds, args.methods or None)
        elif action == "ipc-timeout":
            result = ctl.ipc_timeout(args.method, args.count, execute=not args.no_execute)
        elif action == "comment-fault":
            result = ctl.comment_fault(None if args.mode == "off" else args.mode, args.length, args.text, args.count)
        elif action == "history-delay":
            result = ctl.history_delay(args.seconds)
        elif action == "retcode-fault":
            result = ctl.retcode_fault(args.retcode, args.count, execute=args.execute)
        elif action == "slow-execution":
            result = ctl.slow_execution(args.seconds, args.count, visible=not args.invisible, answer=args.answer)
        elif action == "switch-account":
            result = ctl.switch_account(args.login, args.password, args.server)
        elif action == "reset":
            result = ctl.reset(full=args.full)
        elif action == "state":
            result = ctl.state()
        else:  # pragma: no cover - argparse restricts the choices
            raise SystemExit(f"unknown action {action}")
    except ControlError as exc:
        print(f"error: {exc.code} {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach {args.address}: {exc}", file=sys.stderr)
        return 1
    finally:
        ctl.close()
    print(json.dumps(result, indent=2, default=str, sort_keys=True))
    return 0


def _add_process_options(parser: argparse.ArgumentParser, address: str, state_help: str) -> None:
    """The options ``serve`` and ``broker`` share: where to listen, the config, the state dir, the feed seed."""
    parser.add_argument("--address", default=address, help="HOST:PORT to listen on (port 0: any free port)")
    parser.add_argument("--config", help="YAML/JSON file: accounts, symbols, ... (see docs/mt5sim.md)")
    parser.add_argument("--state", help=state_help)
    parser.add_argument("--seed", type=int, default=0, help="seed of the price feed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mt5sim", description="Simulated MetaTrader 5 terminal")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the terminal process")
    _add_process_options(serve, "127.0.0.1:18812", "directory where accounts, orders and history persist")
    serve.add_argument("--broker", help="HOST:PORT of a `python -m mt5sim broker`: accounts and markets live there "
                                        "(without it the terminal is its own trade server)")
    serve.add_argument("--server", help="with --broker: the broker's server name this terminal starts on "
                                        "(default: the broker's first)")
    serve.set_defaults(func=cmd_serve)

    broker = sub.add_parser("broker", help="run a trade server for terminals started with serve --broker")
    _add_process_options(broker, "127.0.0.1:18800",
                         "directory where accounts, orders and history persist (one subdir per server)")
    broker.add_argument("--server", action="append", metavar="NAME[=OFFSET_SECONDS]",
                        help="a server name this broker runs, with its clock offset from UTC (repeatable; "
                             "default: the config's server.name and offset)")
    broker.set_defaults(func=cmd_broker)

    run = sub.add_parser("run", help="run a MetaTrader5 script against a terminal")
    run.add_argument("--address", help="terminal HOST:PORT (default: $MT5SIM_ADDRESS)")
    run.add_argument("script")
    run.add_argument("script_args", nargs=argparse.REMAINDER)
    run.set_defaults(func=cmd_run)

    control = sub.add_parser("control", help="drive a running terminal or broker (prices, faults, clock)")
    control.add_argument("--address", default=os.environ.get("MT5SIM_ADDRESS"), required="MT5SIM_ADDRESS" not in os.environ)
    control.add_argument("--server-name", help="against a broker: which of its server names (default: its first)")
    actions = control.add_subparsers(dest="action", required=True)
    p = actions.add_parser("set-price")
    p.add_argument("symbol")
    p.add_argument("bid", type=float)
    p.add_argument("ask", type=float)
    p.add_argument("last", type=float, nargs="?")
    p = actions.add_parser("freeze-feed")
    p.add_argument("symbol", nargs="?")
    p.add_argument("--unfreeze", action="store_true")
    p = actions.add_parser("trade-server")
    p.add_argument("state", choices=["connect", "disconnect"])
    p = actions.add_parser("requote")
    p.add_argument("count", type=int, nargs="?", default=1)
    p = actions.add_parser("reject")
    p.add_argument("count", type=int, nargs="?", default=1)
    p.add_argument("retcode", type=int, nargs="?", default=10006)
    p = actions.add_parser("set-clock")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--offset", type=float, help="seconds to add to the real clock")
    group.add_argument("--at", type=float, help="pin the clock at this unix time (UTC)")
    p = actions.add_parser("delay")
    p.add_argument("seconds", type=float)
    p.add_argument("methods", nargs="*")
    p = actions.add_parser("ipc-timeout")
    p.add_argument("--method", default="order_send")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--no-execute", action="store_true", help="the call is not executed either")
    p = actions.add_parser("comment-fault")
    p.add_argument("mode", choices=["cut", "rewrite", "off"])
    p.add_argument("--length", type=int, default=0, help="cut: characters kept")
    p.add_argument("--text", default="", help="rewrite: the new comment")
    p.add_argument("--count", type=int, default=0, help="0: until turned off")
    p = actions.add_parser("history-delay")
    p.add_argument("seconds", type=float)
    p = actions.add_parser("retcode-fault")
    p.add_argument("retcode", type=int)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--execute", action="store_true", help="execute the request all the same")
    p = actions.add_parser("slow-execution")
    p.add_argument("seconds", type=float)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--invisible", action="store_true", help="no STARTED order while it waits")
    p.add_argument("--answer", choices=["ipc_timeout", "timeout"], default="ipc_timeout")
    p = actions.add_parser("switch-account")
    p.add_argument("login", type=int)
    p.add_argument("--password")
    p.add_argument("--server")
    p = actions.add_parser("reset")
    p.add_argument("--full", action="store_true")
    actions.add_parser("state")
    control.set_defaults(func=cmd_control)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
