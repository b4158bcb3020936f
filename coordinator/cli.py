"""``prefill-startup``: the demo, real registration, a bootstrap server, the diagram, the simulator.

The only place that configures logging: stdlib handlers rendering the library's
structured events with structlog's console renderer (on a terminal) or as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests
import structlog

from coordinator import diagram, health, simulate
from coordinator import validate
from coordinator.address import bootstrap_url
from coordinator.argtypes import count, port, positive, target
from coordinator.server import BootstrapServer
from coordinator.clock import SystemClock
from coordinator.instrumentation import Hook, SystemdNotifier, default_hooks
from coordinator.discovery import DEFAULT_DEADLINE_S as DISCOVERY_DEADLINE_S
from coordinator.discovery import Discovery
from coordinator.discovery import default_policy as discovery_policy
from coordinator.payload import PayloadError, example_payload
from coordinator.policy import RetryPolicy
from coordinator.registration import Registration
from coordinator.snapshot import Snapshot
from states import State

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 124, 130


class _UsageError(Exception):
    """Bad input from the command line: exit 2 with this message."""


# -- logging (the CLI's choice, never the library's) -------------------------


class _StructuredFormatter(logging.Formatter):
    """Renders ``record.structlog`` (the library's event fields) with a structlog renderer."""

    def __init__(self, renderer: Callable[..., str]) -> None:
        super().__init__()
        self._renderer = renderer
        self._stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "structlog", None)
        event = dict(fields) if fields else {"event": record.getMessage()}
        event["level"] = record.levelname.lower()
        event["logger"] = record.name
        event = self._stamp(None, record.levelname.lower(), event)
        return self._renderer(None, record.levelname.lower(), event)


def configure_logging(fmt: str, level: str = "INFO", stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Callable[..., str]
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_StructuredFormatter(renderer))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # transitions narrates every callback at INFO; urllib3 every connection at DEBUG.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


# -- shared argument helpers ---------------------------------------------------


def _token_from_env(var: str | None) -> str | None:
    if var is None:
        return None
    token = os.environ.get(var)
    if not token:
        raise _UsageError(f"--token-env: environment variable {var} is not set or empty")
    return token


def _policy_from(args: argparse.Namespace, base: RetryPolicy | None = None) -> RetryPolicy:
    deadline = None if args.no_deadline else args.deadline
    return dataclasses.replace(
        base or RetryPolicy(),
        max_attempts=args.max_attempts, deadline_s=deadline, attempt_timeout_s=args.attempt_timeout,
    )


def _add_health_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--health-port", type=port, metavar="P", help="serve the probes on P")
    p.add_argument("--health-host", default="127.0.0.1", help="probe bind address (default 127.0.0.1)")


def _add_policy_args(p: argparse.ArgumentParser, *, deadline: float) -> None:
    p.add_argument("--deadline", type=positive, default=deadline, metavar="S",
                   help=f"total budget in seconds from the first attempt (default {deadline:g})")
    p.add_argument("--no-deadline", action="store_true", help="retry without a time budget")
    p.add_argument("--max-attempts", type=count, default=None, metavar="N",
                   help="give up after N attempts (default: unlimited, the deadline rules)")
    p.add_argument("--attempt-timeout", type=positive, default=5.0, metavar="S",
                   help="timeout of one attempt (default 5)")


# -- register ----------------------------------------------------------------------


def _load_payload(args: argparse.Namespace) -> Any:
    if args.payload_file is not None:
        try:
            text = Path(args.payload_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise _UsageError(f"--payload-file: cannot read {args.payload_file}: {exc.strerror}") from None
        source = "--payload-file"
    else:
        text, source = args.payload, "--payload"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _UsageError(f"{source} is not valid JSON: {exc}") from None


def _hooks() -> list[Hook]:
    """The default hooks, and sd_notify when systemd started us (``Type=notify`` units)."""
    notifier = SystemdNotifier.from_env()
    return [*default_hooks(), *([notifier] if notifier else [])]


def _serve_probes(args: argparse.Namespace, driver: Registration | Discovery) -> health.HealthServer | None:
    if args.health_port is None:
        return None
    try:
        return health.serve(driver, host=args.health_host, port=args.health_port)
    except OSError as exc:  # unresolvable, not this host's, in use
        raise _UsageError(f"--health-host/--health-port: cannot listen on "
                          f"{args.health_host}:{args.health_port}: {exc.strerror or exc}") from None


def _register(args: argparse.Namespace) -> int:
    try:
        host, port = validate.host_port(args.bootstrap, "--bootstrap")
        url = bootstrap_url(host, port, args.dist_init_addr)
        registration = Registration(
            url,
            _load_payload(args),
            policy=_policy_from(args),
            token=_token_from_env(args.token_env),
            on_exhausted="return",
            hooks=_hooks(),
        )
    except (ValueError, TypeError) as exc:
        raise _UsageError(str(exc)) from None
    probes = _serve_probes(args, registration)
    try:
        snapshot = registration.run()
    except KeyboardInterrupt:
        snapshot = registration.stop()
    finally:
        if probes is not None:
            probes.close()
    print(json.dumps(snapshot.to_dict()))
    return EXIT_OK if snapshot.state is State.REGISTERED else EXIT_FAILED


# -- wait ------------------------------------------------------------------------------


def _wait(args: argparse.Namespace) -> int:
    expect: dict[str, Any] = {}
    if args.expect_page_size is not None:
        expect["page_size"] = args.expect_page_size
    if args.expect_kv_cache_dtype is not None:
        expect["kv_cache_dtype"] = args.expect_kv_cache_dtype
    try:
        discovery = Discovery(
            args.bootstrap,
            policy=_policy_from(args, discovery_policy()),
            targets=args.target,
            expect=expect,
            on_exhausted="return",
            hooks=_hooks(),
        )
    except (ValueError, TypeError) as exc:
        message = str(exc)  # the library names its argument; the operator typed the flag
        raise _UsageError("--" + message if message.startswith("bootstrap") else message) from None
    probes = _serve_probes(args, discovery)
    try:
        snapshot = discovery.run()
    except KeyboardInterrupt:
        discovery.stop()
        return EXIT_INTERRUPTED
    finally:
        if probes is not None:
            probes.close()
    if snapshot.state is not State.REGISTERED or snapshot.info is None:
        print(json.dumps(snapshot.to_dict()), file=sys.stderr)
        return EXIT_TIMEOUT if snapshot.reason in ("deadline", "exhausted") else EXIT_FAILED
    info = json.dumps(snapshot.info.to_dict())
    print(info, flush=True)
    if not args.command_argv:
        return EXIT_OK
    try:  # the launcher's job is done: the command's status is ours
        return subprocess.run(args.command_argv, env={**os.environ, "PREFILL_STARTUP_INFO": info}).returncode
    except OSError as exc:
        print(f"prefill-startup wait: cannot run {args.command_argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126


# -- bootstrap-server ------------------------------------------------------------


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.is_set():
        done.wait(1.0)


def _bootstrap_server(args: argparse.Namespace) -> int:
    try:
        server = BootstrapServer(args.host, args.port, token=_token_from_env(args.token_env))
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    with server:
        print(f"bootstrap server listening: PUT/GET {server.url}, GET {server.base_url}/health",
              flush=True)
        _wait_for_signal()
    return EXIT_OK


# -- demo -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _progress(elapsed: float, snaps: Sequence[Snapshot], now: float) -> str:
    if len(snaps) <= 8:
        cells = []
        for i, s in enumerate(snaps):
            wait = s.seconds_to_next_attempt(now)
            cell = f"rank{i} {s.state.value:<11} #{s.attempt:<3}"
            cells.append(cell + (f" next {wait:4.2f}s" if wait is not None else " " * 11))
        return f"{elapsed:6.2f}s  " + " | ".join(cells)
    counts = {st.value: sum(s.state is st for s in snaps) for st in State}
    return f"{elapsed:6.2f}s  " + "  ".join(f"{k}={v}" for k, v in counts.items() if v)


def _demo(args: argparse.Namespace) -> int:
    clock = SystemClock()
    port = _free_port()
    url = bootstrap_url("127.0.0.1", port)
    registrations = [
        Registration(url, example_payload(rank, args.ranks), name=f"rank{rank}",
                     policy=RetryPolicy(deadline_s=args.deadline), on_exhausted="return")
        for rank in range(args.ranks)
    ]
    print(f"demo: {args.ranks} prefill ranks register with {url}; "
          f"the bootstrap server starts listening after {args.server_delay:g} s", flush=True)
    # The decode side of the same instance: waits until every rank is registered.
    decode = Discovery(f"127.0.0.1:{port}", name="decode0", targets=[(0, 0, rank, 0) for rank in range(args.ranks)],
                       policy=dataclasses.replace(discovery_policy(), deadline_s=args.deadline), on_exhausted="return")
    probes = health.serve([*registrations, decode])
    print(f"demo: probes on {probes.url}/livez /readyz /startupz /status", flush=True)
    server: BootstrapServer | None = None
    t0 = clock.now()
    listen_at = t0
    try:
        for r in registrations:
            r.start()
        decode.start()
        while True:
            now = clock.now()
            if server is None and now - t0 >= args.server_delay:
                server = BootstrapServer("127.0.0.1", port).start()
                listen_at = clock.now()
                print(f"{listen_at - t0:6.2f}s  bootstrap server listening on {server.url}", flush=True)
            snaps = [r.snapshot() for r in registrations]
            print(_progress(now - t0, snaps, now), flush=True)
            if all(s.terminal for s in snaps) and decode.snapshot().terminal:
                break
            clock.sleep(0.25)
        return _demo_summary(registrations, decode, probes, t0, listen_at)
    finally:
        decode.stop()
        for r in registrations:
            r.stop()
        probes.close()
        if server is not None:
            server.close()


def _demo_summary(registrations: Sequence[Registration], decode: Discovery,
                  probes: health.HealthServer, t0: float, listen_at: float) -> int:
    print("\nrank    state        attempts  registered_at_s  lag_after_listen_s  reason")
    for i, r in enumerate(registrations):
        s = r.snapshot()
        done = s.state is State.REGISTERED
        at = f"{s.state_since - t0:15.3f}" if done else f"{'-':>15}"
        lag = f"{s.state_since - listen_at:18.3f}" if done else f"{'-':>18}"
        print(f"rank{i:<3} {s.state.value:<12} {s.attempt:8d}  {at}  {lag}  {s.reason}")
    with requests.Session() as http:
        http.trust_env = False
        readyz = http.get(f"{probes.url}/readyz", timeout=5)
        print(f"\nprobe: GET /readyz -> {readyz.status_code}")
        print("probe: GET /readyz?verbose ->\n  " + http.get(f"{probes.url}/readyz?verbose", timeout=5).text
              .strip().replace("\n", "\n  "))
        metrics = http.get(f"{probes.url}/metrics", timeout=5)
        attempts = [line for line in metrics.text.splitlines() if line.startswith("prefill_startup_attempts_total")]
        print(f"probe: GET /metrics -> {metrics.status_code}"
              + ("".join(f"\n  {line}" for line in attempts) if attempts else f" ({metrics.text.strip()})"))
    d = decode.snapshot()
    last = max((r.snapshot().state_since for r in registrations), default=t0)
    print(f"decode: Discovery {d.state.value} after {d.attempt} lookups, "
          f"{d.state_since - last:.3f} s after the last rank registered")
    if d.info is not None:
        print(f"decode: {json.dumps(d.info.to_dict())}")
    ok = all(r.state is State.REGISTERED for r in registrations) and d.state is State.REGISTERED
    print("demo: every rank REGISTERED, and the decode side found them" if ok
          else "demo: some ranks did NOT register")
    return EXIT_OK if ok else EXIT_FAILED


# -- diagram ----------------------------------------------------------------------------


def _diagram(args: argparse.Namespace) -> int:
    path = Path(args.output)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != diagram.render_mermaid():
            print(f"{path} is stale: run 'prefill-startup diagram'", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    print(diagram.write(path))
    return EXIT_OK


# -- parser --------------------------------------------------------------------------------


def _add_log_args(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Without defaults, a subcommand's copy leaves the global value alone unless given.
    keep = argparse.SUPPRESS
    parser.add_argument("--log-format", choices=("auto", "console", "json"),
                        default="auto" if defaults else keep,
                        help="console on a terminal, JSON otherwise (default auto)")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        default="INFO" if defaults else keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefill-startup",
        description="Startup registration of SGLang prefill workers with the bootstrap server.",
    )
    _add_log_args(parser, defaults=True)
    # Accepted after the command too (``prefill-startup demo --log-format json``).
    common = argparse.ArgumentParser(add_help=False)
    _add_log_args(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", parents=[common], help="a prefill group racing a late bootstrap server")
    demo.add_argument("--ranks", type=count, default=4, help="prefill ranks (default 4)")
    demo.add_argument("--server-delay", type=float, default=3.0, metavar="S",
                      help="seconds before the bootstrap server listens (default 3)")
    demo.add_argument("--deadline", type=positive, default=30.0, metavar="S",
                      help="each rank's registration budget (default 30)")
    demo.set_defaults(func=_demo)

    reg = sub.add_parser("register", parents=[common], help="register one rank with a running bootstrap server")
    reg.add_argument("--bootstrap", required=True, metavar="HOST:PORT",
                     help="the serving host and bootstrap port ('[v6]:port' for IPv6)")
    reg.add_argument("--dist-init-addr", metavar="A",
                     help="multi-node: its host is the bootstrap host (as in SGLang)")
    src = reg.add_mutually_exclusive_group(required=True)
    src.add_argument("--payload", metavar="JSON", help="the PUT /route body")
    src.add_argument("--payload-file", metavar="F", help="a file holding the PUT /route body")
    _add_health_args(reg)
    reg.add_argument("--token-env", metavar="VAR", help="send 'Authorization: Bearer $VAR'")
    _add_policy_args(reg, deadline=120.0)
    reg.set_defaults(func=_register)

    wait = sub.add_parser("wait", parents=[common],
                          help="wait for a prefill instance to be complete (decode side, init containers)",
                          epilog="after '--', a COMMAND to run once the prefill instance is complete; "
                                 "exit 0, 1 (permanent failure), 2 (bad input), 124 (deadline), "
                                 "or COMMAND's status")
    wait.add_argument("--bootstrap", required=True, metavar="HOST:PORT",
                      help="the prefill instance's bootstrap server ('[v6]:port' for IPv6, or a URL)")
    wait.add_argument("--target", type=target, action="append", metavar="DP,CP,TP,PP",
                      help="a prefill rank whose address to resolve (repeatable)")
    wait.add_argument("--expect-page-size", type=count, metavar="N", help="fail at once if the prefill's differs")
    wait.add_argument("--expect-kv-cache-dtype", metavar="D", help="fail at once if the prefill's differs")
    _add_health_args(wait)
    _add_policy_args(wait, deadline=DISCOVERY_DEADLINE_S)
    wait.set_defaults(func=_wait)

    bs = sub.add_parser("bootstrap-server", parents=[common], help="run an SGLang-compatible bootstrap server")
    bs.add_argument("--host", default="127.0.0.1")
    bs.add_argument("--port", type=int, default=8998, help="default 8998, as SGLang's")
    bs.add_argument("--token-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on PUT")
    bs.set_defaults(func=_bootstrap_server)

    dg = sub.add_parser("diagram", parents=[common], help="regenerate the state diagram from the states table")
    dg.add_argument("--output", default=str(diagram.DEFAULT_PATH), metavar="PATH")
    dg.add_argument("--check", action="store_true", help="exit 1 when PATH is stale")
    dg.set_defaults(func=_diagram)

    sim = sub.add_parser("simulate", parents=[common], help="simulate a fleet: ours vs upstream on the same draws")
    simulate.add_arguments(sim)
    sim.set_defaults(func=simulate.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is a command for "wait" to run, never our options.
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if command and args.command != "wait":
        parser.error(f"'-- COMMAND' is for 'wait', not '{args.command}'")
    args.command_argv = command
    configure_logging(args.log_format, args.log_level)
    try:
        return int(args.func(args))
    except (_UsageError, PayloadError) as exc:
        print(f"prefill-startup {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
