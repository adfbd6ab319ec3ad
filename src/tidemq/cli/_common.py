"""What every subcommand shares: the ``--url`` option, opening a client, usage errors,
and parsers for option values (headers, durations, start positions)."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..client import Client

__all__ = [
    "DEFAULT_URL",
    "UsageError",
    "Terminated",
    "sigterm_unwinds",
    "Parser",
    "url_parent",
    "default_url",
    "open_client",
    "header_arg",
    "nonneg_float",
    "positive_float",
    "positive_int",
    "priority_arg",
    "parse_position",
]

DEFAULT_URL = "tidemq://127.0.0.1:7600"


class UsageError(Exception):
    """The command line is wrong (exit status 2). ``str()`` is the one-line explanation;
    ``prog`` names the (sub)command whose ``--help`` explains it."""

    def __init__(self, message: str, prog: str = "tidemq") -> None:
        super().__init__(message)
        self.prog = prog


class Terminated(Exception):
    """SIGTERM arrived while a command ran (exit status 143). Raised from the signal handler
    so ``with`` blocks unwind: a consumer leaves its group and releases its leases at once."""


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (main thread only; elsewhere a no-op).
    The previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors become :class:`UsageError` (one line, exit 2)
    instead of argparse's usage dump and ``sys.exit``."""

    def error(self, message: str) -> Any:  # argparse declares NoReturn; we raise
        raise UsageError(message, self.prog)


def default_url() -> str:
    """``$TIDEMQ_URL`` if set and not empty, else ``tidemq://127.0.0.1:7600``."""
    return os.environ.get("TIDEMQ_URL") or DEFAULT_URL


def url_parent() -> argparse.ArgumentParser:
    """A parent parser so ``--url`` is accepted after the subcommand too
    (``tidemq topic list --url ./data``). SUPPRESS keeps a top-level ``--url`` from being
    overwritten by the subcommand's default."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--url", default=argparse.SUPPRESS, metavar="URL",
                   help="where TideMQ is: tidemq://HOST:PORT, a data folder path, file://PATH "
                        f"or memory:// (default: $TIDEMQ_URL, else {DEFAULT_URL}); "
                        "tidemq://USER:PASSWORD@HOST:PORT logs in, tidemqs:// uses TLS; "
                        "nats://HOST:4222 (NATS JetStream) and amqp://USER:PASSWORD@HOST "
                        "(RabbitMQ) use those engines, options in the query "
                        "(nats://HOST:4222?prefix=shop)")
    p.add_argument("--token", default=argparse.SUPPRESS, metavar="TOKEN",
                   help="log in with this token (default: $TIDEMQ_TOKEN); sent only over "
                        "tidemqs:// or to a loopback address")
    p.add_argument("--tls-ca", default=argparse.SUPPRESS, metavar="FILE",
                   help="CA bundle that signed the server's certificate (tidemqs://)")
    p.add_argument("--tls-cert", default=argparse.SUPPRESS, metavar="FILE",
                   help="client certificate (mTLS; logs in as the user it names)")
    p.add_argument("--tls-key", default=argparse.SUPPRESS, metavar="FILE",
                   help="private key of --tls-cert")
    return p


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The security keyword arguments of ``Client`` from the flags and ``$TIDEMQ_TOKEN``."""
    options = {"token": getattr(args, "token", None) or os.environ.get("TIDEMQ_TOKEN") or None,
               "tls_ca": getattr(args, "tls_ca", None),
               "tls_cert": getattr(args, "tls_cert", None),
               "tls_key": getattr(args, "tls_key", None)}
    return {k: v for k, v in options.items() if v is not None}


@contextmanager
def open_client(args: argparse.Namespace) -> Iterator[Client]:
    """A :class:`tidemq.Client` on ``args.url``, closed on exit."""
    from ..client import Client  # lazy: `tidemq --help` should not load the broker

    client = Client(args.url, **client_options(args))
    try:
        yield client
    finally:
        client.close()


# -- option value parsers (raise ArgumentTypeError: argparse turns it into a usage error) -----


def header_arg(text: str) -> tuple[str, str]:
    """``K=V`` -> ``(K, V)``; the value may itself contain ``=``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"header must look like NAME=VALUE, got {text!r}")
    return name, value


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def nonneg_float(text: str) -> float:
    v = _float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return v


def positive_float(text: str) -> float:
    v = _float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return v


def priority_arg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v <= 9:
        raise argparse.ArgumentTypeError(f"priority must be a whole number 0-9, got {text!r}")
    return v


def parse_position(text: str) -> str | int | dict[Any, Any]:
    """A start/reset position as the client takes it.

    ``earliest`` | ``latest`` | ``OFFSET`` (every partition) | ``P:OFFSET,P:OFFSET`` (per
    partition) | ``@TIMESTAMP`` (epoch seconds, or ISO 8601; an ISO time without a zone is UTC).
    """
    t = text.strip()
    if t in ("earliest", "latest"):
        return t
    if t.startswith("@"):
        return {"timestamp": _timestamp(t[1:])}
    if ":" in t:
        out: dict[int, int] = {}
        for part in t.split(","):
            p, _, o = part.partition(":")
            try:
                pi, oi = int(p), int(o)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"bad partition offset {part!r}: use PARTITION:OFFSET") from None
            if pi < 0 or oi < 0:
                raise argparse.ArgumentTypeError(f"partition and offset must be >= 0 in {part!r}")
            out[pi] = oi
        return out
    try:
        off = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"position must be earliest, latest, OFFSET, P:OFFSET,... or @TIMESTAMP, "
            f"got {text!r}") from None
    if off < 0:
        raise argparse.ArgumentTypeError(f"offset must be >= 0, got {text!r}")
    return off


def _timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"timestamp must be epoch seconds or ISO 8601 (2026-01-31T12:00:00Z), got {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
