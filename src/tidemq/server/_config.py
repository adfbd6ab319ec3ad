"""Server settings: defaults, an optional TOML file, then command-line flags (last wins).

The TOML file holds the same names as :class:`ServerConfig`, either at top level or under a
``[server]`` table::

    [server]
    data = "./tidemq-data"
    port = 7600
    heartbeat_interval = 5.0
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
from pathlib import Path
from typing import Any

from .._spin import check_spin_us
from ..driver import BLOCK_TIMEOUT
from ..errors import InvalidArgument
from ..protocol import MIN_MAX_FRAME_SIZE

__all__ = ["ServerConfig", "load_config", "is_loopback_host"]

MAX_FRAME_BYTES = 0xFFFF_FFFF  # a frame's length is a u32


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything the server reads at start. Durations are seconds, sizes bytes.

    Callers may rely on :meth:`validate` rejecting any value the server could not run with.
    """

    data: str | None = "./tidemq-data"  # None: an in-memory store (tests, benchmarks)
    # Loopback by default. Another address needs users (or insecure): docs/security.md.
    host: str = "127.0.0.1"
    port: int = 7600  # 0: an ephemeral port; Server.port tells which
    sync_interval: float = 0.1  # broker.sync_all() cadence for durability 'interval'
    heartbeat_interval: float = 5.0  # we ping an idle connection this often
    heartbeat_timeout: float = 15.0  # silence this long => the peer is dead, leases released
    max_frame_bytes: int = 16 * 1024 * 1024
    # Output of one connection (our queue + the transport's buffer): above the high-water mark
    # nothing more is pushed to it and its requests wait unread; below the low one they resume.
    write_high_water: int = 1024 * 1024
    write_low_water: int = 256 * 1024
    push_batch: int = 512  # most deliveries fetched for one member per push step
    push_bytes: int = 1024 * 1024  # about the most body bytes fetched for one member per step
    auto_create_topics: bool = True
    block_timeout: float = BLOCK_TIMEOUT  # longest a publish waits on a full backlog (policy 'block'), as embedded
    shutdown_grace: float = 5.0  # seconds to let in-flight requests finish on SIGTERM
    loop: str = "auto"  # "auto" (uvloop if installed), "asyncio" or "uvloop"; docs/server.md
    fsync_threads: int = 4  # parallel fsyncs of one group-commit phase
    # µs the loop polls its connections for input before it sleeps (tidemq._spin; 0: never)
    spin_us: int = 500

    # --- HTTP API, metrics, admin page (docs/http.md) -----------------------------------------
    http_port: int | None = None  # None: off; 0: an ephemeral port (Server.http_port tells)
    http_max_body_bytes: int = 16 * 1024 * 1024  # largest HTTP request body accepted
    http_max_wait: float = 20.0  # longest long-poll of an HTTP receive, seconds
    ready_min_disk_free: int = 64 * 1024 * 1024  # /readyz fails with less free disk, bytes

    # --- AMQP 0-9-1 front (docs/amqp.md) -------------------------------------------------------
    amqp_port: int | None = None  # None: off; 0: an ephemeral port (Server.amqp_port tells)

    # --- security (docs/security.md) ---------------------------------------------------------
    users: str | None = None  # the users file (users, tokens, permissions); created if missing
    tls_cert: str | None = None  # PEM certificate chain: TLS on the port (with tls_key)
    tls_key: str | None = None
    tls_client_ca: str | None = None  # PEM CA bundle: require and verify client certificates
    insecure: bool = False  # allow a non-loopback host without users (warned at start)

    # --- limits: every resource a peer can make the server spend (docs/server.md "Limits") ---
    max_connections: int = 10_000  # open connections, all peers together
    max_connections_per_ip: int = 1_000  # open connections from one peer address
    handshake_timeout: float = 5.0  # a connection without a complete Hello by then is closed
    max_hello_bytes: int = 16 * 1024  # largest frame accepted before the Hello is accepted
    max_request_bytes: int = 1024 * 1024  # largest frame but Publish (its decoding cost)
    write_timeout: float = 30.0  # output above write_high_water this long: slow peer, closed
    max_held_bytes: int = 8 * 1024 * 1024  # publishes held by a full backlog, then stop reading
    max_inflight: int = 10_000  # answers of one connection waiting for an fsync, then stop
    max_subscriptions_per_connection: int = 1_000
    max_ack_messages: int = 100_000  # messages one Ack/Nack/Extend/Reject may name (see docs)
    settle_step: int = 2_000  # ids settled per loop iteration; a larger request takes several
    redrive_batch: int = 10_000  # dead letters moved per loop iteration by DlqRedrive

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"port must be in 0..65535, got {self.port}")
        if self.http_port is not None:
            if isinstance(self.http_port, bool) or not isinstance(self.http_port, int) \
                    or not 0 <= self.http_port <= 65535:
                raise InvalidArgument(f"http_port must be in 0..65535, got {self.http_port!r}")
            if self.http_port == self.port and self.port != 0:
                raise InvalidArgument(f"http_port and port are both {self.port}; give the HTTP "
                                      "API a port of its own (default 7680)")
        if self.amqp_port is not None:
            if isinstance(self.amqp_port, bool) or not isinstance(self.amqp_port, int) \
                    or not 0 <= self.amqp_port <= 65535:
                raise InvalidArgument(f"amqp_port must be in 0..65535, got {self.amqp_port!r}")
            if self.amqp_port != 0 and self.amqp_port in (self.port, self.http_port):
                raise InvalidArgument(f"amqp_port {self.amqp_port} is taken by another of the "
                                      "server's ports; give AMQP a port of its own (default "
                                      "5673)")
        if not 1024 <= self.http_max_body_bytes <= MAX_FRAME_BYTES:
            raise InvalidArgument(f"http_max_body_bytes must be in [1024, {MAX_FRAME_BYTES}]")
        if not (isinstance(self.http_max_wait, int | float) and 0 <= self.http_max_wait <= 300):
            raise InvalidArgument("http_max_wait must be a number of seconds in [0, 300]")
        if self.ready_min_disk_free < 0:
            raise InvalidArgument("ready_min_disk_free must be >= 0")
        for name in ("sync_interval", "heartbeat_interval", "heartbeat_timeout", "block_timeout",
                     "handshake_timeout", "write_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise InvalidArgument(f"{name} must be a number of seconds > 0, got {value!r}")
        if self.heartbeat_timeout < self.heartbeat_interval:
            raise InvalidArgument("heartbeat_timeout must be >= heartbeat_interval")
        if not MIN_MAX_FRAME_SIZE <= self.max_frame_bytes <= MAX_FRAME_BYTES:
            raise InvalidArgument(f"max_frame_bytes must be in [{MIN_MAX_FRAME_SIZE}, "
                                  f"{MAX_FRAME_BYTES}] (the protocol's floor and a u32 length)")
        if not 1024 <= self.max_hello_bytes <= MIN_MAX_FRAME_SIZE:
            raise InvalidArgument(f"max_hello_bytes must be in [1024, {MIN_MAX_FRAME_SIZE}]")
        if self.max_request_bytes < MIN_MAX_FRAME_SIZE:
            raise InvalidArgument(f"max_request_bytes must be >= {MIN_MAX_FRAME_SIZE}")
        for name in ("max_connections", "max_connections_per_ip", "max_held_bytes", "max_inflight",
                     "max_subscriptions_per_connection", "max_ack_messages", "settle_step",
                     "redrive_batch", "push_bytes"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be >= 1")
        if not 0 <= self.write_low_water < self.write_high_water:
            raise InvalidArgument("need 0 <= write_low_water < write_high_water")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise InvalidArgument("loop must be 'auto', 'asyncio' or 'uvloop'")
        check_spin_us(self.spin_us)
        if self.fsync_threads < 1:
            raise InvalidArgument("fsync_threads must be >= 1")
        if self.push_batch < 1:
            raise InvalidArgument("push_batch must be >= 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidArgument("tls_client_ca (mTLS) needs TLS: give tls_cert and tls_key")
        if self.users is None and not self.insecure and not is_loopback_host(self.host):
            raise InvalidArgument(
                f"refusing to listen on {self.host!r} without users: anyone who can reach it "
                "could read, write and delete everything. Configure users (--users FILE, "
                "docs/security.md), or pass --insecure to accept that risk")

    @property
    def exposed(self) -> bool:
        """Listening beyond loopback with nobody authenticated (``insecure``)."""
        return self.users is None and not is_loopback_host(self.host)

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with ``changes`` applied (``None`` values are ignored, so flags may be unset)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - fields
        if unknown:
            raise InvalidArgument(f"unknown server setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` that are not None."""
    cfg = ServerConfig()
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise InvalidArgument(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"config file {path} is not valid TOML: {exc}") from None
        table = doc.get("server", doc)
        if not isinstance(table, dict):
            raise InvalidArgument(f"config file {path}: [server] must be a table")
        _check_types(path, table)
        cfg = cfg.replace(**table)
    cfg = cfg.replace(**overrides)
    cfg.validate()
    return cfg


_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,),
    "host": (str,),
    "auto_create_topics": (bool,),
    "loop": (str,),
    "users": (str,),
    "tls_cert": (str,),
    "tls_key": (str,),
    "tls_client_ca": (str,),
    "insecure": (bool,),
}


def is_loopback_host(host: str) -> bool:
    """True for a host that only this machine can reach: ``localhost``, ``127.x``, ``::1``.
    An empty host or ``0.0.0.0`` means every interface: not loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_types(path: str | Path, table: dict[str, Any]) -> None:
    """A TOML value of the wrong type is named, rather than failing later in odd ways."""
    for name, value in table.items():
        want = _TYPES.get(name)
        if want is None:
            default = getattr(ServerConfig(), name, None)
            want = (float, int) if isinstance(default, float) else (int,)
        if isinstance(value, bool) and bool not in want or not isinstance(value, want):
            raise InvalidArgument(
                f"config file {path}: {name} must be {' or '.join(t.__name__ for t in want)}, "
                f"got {value!r}"
            )
