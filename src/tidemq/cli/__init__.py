"""The ``tidemq`` command line: a thin layer over :class:`tidemq.Client`.

``main(argv) -> int`` parses, runs one subcommand and turns every failure into one line on
stderr and an exit status a script can rely on:

====  ==========================================================================
0     success
1     a TideMQ error (unknown topic, bad topic name, message too large, ...)
2     usage: the command line is wrong
3     cannot connect: no server at the URL, or the data folder is locked by another process
130   interrupted (Ctrl-C)
141   stdout was closed early (``tidemq consume ... | head``)
143   terminated (SIGTERM), after leaving the group cleanly
====  ==========================================================================

Each subcommand lives in its own module (``_topic``, ``_publish`` ...) exposing
``register(subparsers, parents)``; the parser stores the module's ``run(args) -> int`` as
``args.func``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import _bench, _consume, _dlq, _group, _publish, _security, _serve, _top, _topic
from ._common import (
    DEFAULT_URL,
    Parser,
    Terminated,
    UsageError,
    default_url,
    sigterm_unwinds,
    url_parent,
)
from ._output import error

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_CONNECT",
           "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
EXIT_TERMINATED = 143

_EPILOG = f"""\
examples:
  tidemq serve --data ./tidemq-data
  tidemq topic create orders --partitions 3
  tidemq publish orders 'hello' --key user-1
  seq 1000 | tidemq publish orders --quiet
  tidemq consume orders --group billing --count 10
  tidemq --url ./tidemq-data topic list        (embedded: no server needed)

The URL comes from --url, else $TIDEMQ_URL, else {DEFAULT_URL}.
Exit status: 0 ok, 1 TideMQ error, 2 usage, 3 cannot connect, 130 Ctrl-C,
141 stdout closed, 143 SIGTERM. Errors are one line on stderr.
"""


def build_parser() -> argparse.ArgumentParser:
    """The full ``tidemq`` parser (exposed for documentation and tests)."""
    parser = Parser(
        prog="tidemq",
        description="TideMQ: a durable message broker, embedded or served.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=None, metavar="URL",
                        help="tidemq://HOST:PORT, a data folder path, file://PATH, memory://, "
                             "nats://HOST:4222 or amqp://USER:PASSWORD@HOST "
                             f"(default: $TIDEMQ_URL, else {DEFAULT_URL})")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"tidemq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=Parser)
    parents = [url_parent()]
    for module in (_serve, _topic, _publish, _consume, _group, _dlq, _bench, _security, _top):
        module.register(sub, parents)
    return parser


def _connect_error(exc: BaseException) -> bool:
    from ..errors import ConnectionLost, DataDirLocked

    return isinstance(exc, ConnectionLost | DataDirLocked | ConnectionError | TimeoutError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tidemq`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from ..errors import TideMQError

    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        error(f"{exc} (see '{exc.prog} --help')")
        return EXIT_USAGE
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if getattr(args, "url", None) is None:
        args.url = default_url()
    try:
        if args.command == "serve":  # the server handles SIGTERM itself (graceful shutdown)
            code: int = args.func(args)
        else:
            with sigterm_unwinds():
                code = args.func(args)
        sys.stdout.flush()
        return code
    except UsageError as exc:
        error(f"{exc} (see '{exc.prog} --help')")
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the ^C line
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_TERMINATED
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing, and keep Python from complaining
        # about the unflushable stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
            pass
        return EXIT_BROKEN_PIPE
    except TideMQError as exc:
        if _connect_error(exc):
            error(_connect_message(args.url, exc))
            return EXIT_CONNECT
        error(str(exc) or type(exc).__name__)
        return EXIT_ERROR
    except OSError as exc:
        if _connect_error(exc):
            error(_connect_message(args.url, exc))
            return EXIT_CONNECT
        error(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return EXIT_ERROR


def _connect_message(url: str, exc: BaseException) -> str:
    from ..client._common import redact
    from ..errors import DataDirLocked

    url = redact(url)  # never print a password given in the URL

    if isinstance(exc, DataDirLocked):
        return (f"cannot open {url}: {exc} (a running server owns it: use "
                f"--url tidemq://HOST:PORT to go through the server)")
    detail = str(exc) or type(exc).__name__
    if url in detail:  # the transport's message already names the URL and the remedy
        return detail
    if url.split("://", 1)[0].lower() in ("nats", "amqp", "amqps"):  # another engine's
        return f"cannot connect to {url}: {detail}"
    return f"cannot connect to {url}: {detail} (is 'tidemq serve' running there?)"
