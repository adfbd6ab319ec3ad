"""Running the server as a process: flags, signals, graceful shutdown."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from ..errors import TideMQError
from ._config import ServerConfig, load_config
from ._server import Server

__all__ = ["serve", "main", "build_parser"]

log = logging.getLogger("tidemq.server")


async def serve(config: ServerConfig, *, ready: asyncio.Event | None = None) -> None:
    """Run a server until SIGTERM or SIGINT, then shut down gracefully: stop accepting, let
    requests in flight finish, release leases, sync and close the broker."""
    server = Server(config)
    await server.start()
    # One line on stdout with the bound port: parents using --port 0 read it.
    print(f"tidemq listening on {config.host}:{server.port}", flush=True)
    if server.http_port is not None:
        print(f"tidemq http on {config.host}:{server.http_port}", flush=True)
    if server.amqp_port is not None:
        print(f"tidemq amqp on {config.host}:{server.amqp_port}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: read the users file and the TLS certificate again (open connections keep
    # theirs; sessions of deleted users and revoked tokens are closed).
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await server.stop()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``serve`` flags (the CLI's ``tidemq serve`` reuses this)."""
    p = parser or argparse.ArgumentParser(
        prog="tidemq serve",
        description="Run the TideMQ server (binary protocol over TCP; HTTP with --http-port).")
    p.add_argument("--config", metavar="FILE", help="TOML settings file ([server] table)")
    p.add_argument("--data", metavar="DIR", help="data folder (default ./tidemq-data)")
    p.add_argument("--memory", action="store_true", help="keep everything in memory (testing)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 7600; 0 picks a free one)")
    p.add_argument("--sync-interval", type=float, help="seconds between fsyncs for 'interval'")
    p.add_argument("--heartbeat-interval", type=float, help="seconds between pings")
    p.add_argument("--heartbeat-timeout", type=float,
                   help="seconds of silence after which a client is dead and its leases freed")
    p.add_argument("--max-frame-bytes", type=int, help="largest frame accepted")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"],
                   help="event loop: auto (default: uvloop if installed), asyncio, uvloop")
    p.add_argument("--spin-us", type=int, metavar="N",
                   help="microseconds the loop polls its connections for input before it "
                        "sleeps, adapting to the traffic (default 500; 0 never; docs/server.md)")
    p.add_argument("--no-auto-create", action="store_true",
                   help="refuse publishes to topics that do not exist")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING ...")
    p.add_argument("--http-port", type=int, metavar="PORT",
                   help="serve the HTTP API, Prometheus metrics and the admin page on this "
                        "port (same host, users and TLS as the binary port; 0 picks a free "
                        "one; off unless given; docs/http.md)")
    p.add_argument("--amqp-port", type=int, metavar="PORT", nargs="?", const=5673,
                   help="serve AMQP 0-9-1 (pika, kombu, Celery ...) on this port (5673 when "
                        "given without a value; 0 picks a free one; off unless given; "
                        "docs/amqp.md)")
    sec = p.add_argument_group("security", "docs/security.md")
    sec.add_argument("--users", metavar="FILE",
                     help="users, tokens and permissions (created if missing; edit it with "
                          "'tidemq user/token/acl'). With it, every connection authenticates")
    sec.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: serve TLS")
    sec.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    sec.add_argument("--tls-client-ca", metavar="FILE",
                     help="PEM CA bundle: require client certificates signed by it (mTLS)")
    sec.add_argument("--insecure", action="store_true", default=None,
                     help="allow a non-loopback --host without --users (anyone who reaches "
                          "the port may do anything)")
    limits = p.add_argument_group("limits", "what one peer may make the server spend "
                                            "(docs/server.md, 'Limits')")
    for name, kind, text in _LIMIT_FLAGS:
        limits.add_argument("--" + name.replace("_", "-"), dest=name, type=kind,
                            metavar="SECONDS" if kind is float else "N", help=text)
    return p


_LIMIT_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("max_connections", int, "open connections in all (default 10000)"),
    ("max_connections_per_ip", int, "open connections from one address (default 1000)"),
    ("handshake_timeout", float, "seconds a new connection has to complete its Hello (default 5)"),
    ("write_timeout", float, "seconds a peer's output may stay above the high-water mark "
                             "before it is dropped as a slow consumer (default 30)"),
    ("write_high_water", int, "bytes of output per connection before it is paused (default 1 MiB)"),
    ("write_low_water", int, "bytes of output at which a paused connection resumes "
                             "(default 256 KiB)"),
    ("max_request_bytes", int, "largest frame but Publish, in bytes (default 1 MiB)"),
    ("push_bytes", int, "about the most bytes pushed to one member per step (default 1 MiB)"),
    ("max_subscriptions_per_connection", int, "open subscriptions per connection (default 1000)"),
    ("max_inflight", int, "answers of one connection waiting for an fsync before its input "
                          "waits too (default 10000)"),
    ("max_ack_messages", int, "messages one Ack/Nack/Extend/Reject may name (default 100000)"),
)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    overrides = {
        "data": args.data, "host": args.host, "port": args.port,
        "sync_interval": args.sync_interval, "heartbeat_interval": args.heartbeat_interval,
        "heartbeat_timeout": args.heartbeat_timeout, "max_frame_bytes": args.max_frame_bytes,
        "auto_create_topics": False if args.no_auto_create else None,
        "loop": args.loop, "spin_us": args.spin_us, "http_port": args.http_port,
        "amqp_port": args.amqp_port,
        "users": args.users, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca, "insecure": args.insecure,
        **{name: getattr(args, name, None) for name, _, _ in _LIMIT_FLAGS},
    }
    cfg = load_config(args.config, **overrides)
    if args.memory:
        cfg = dataclasses.replace(cfg, data=None)  # (ServerConfig.replace ignores Nones)
    return cfg


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for, or with "auto" when installed (measured faster here; see
    docs/server.md); ``None`` means asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 after a clean shutdown, 2 for bad settings, 1 for other failures."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except TideMQError as exc:
        print(f"tidemq serve: {exc}", file=sys.stderr)
        return 2
    try:
        loop_factory = _loop_factory(config.loop)
    except ImportError:
        print("tidemq serve: --loop uvloop needs the uvloop package (pip install uvloop)",
              file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(config))
    except TideMQError as exc:
        print(f"tidemq serve: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tidemq serve: cannot listen on {config.host}:{config.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    return 0
