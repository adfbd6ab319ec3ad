"""``tidemq serve``: run the TCP server on a data folder until SIGTERM / Ctrl-C.

The flags are the server's own (``tidemq.server._main.build_parser``), so ``tidemq serve`` and
``python -m tidemq.server`` accept the same ones (``--http-port`` among them: the HTTP API,
Prometheus metrics and the admin page, docs/http.md); this module maps failures to the CLI's
exit codes.
Settings come from defaults, then ``--config FILE`` (TOML), then flags; the limit flags
(``--max-connections``, ``--handshake-timeout``, ``--write-timeout`` ...) are listed in
docs/server.md, "Limits".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from ._common import UsageError

__all__ = ["register"]

_EPILOG = """\
examples:
  tidemq serve                                   ./tidemq-data on 127.0.0.1:7600
  tidemq serve --data /var/lib/tidemq --port 7600
  tidemq serve --config tidemq.toml --log-level DEBUG
  tidemq serve --memory --port 0                 in-memory, any free port (tests)
  tidemq serve --host 0.0.0.0 --users users.json --tls-cert c.pem --tls-key k.pem
  tidemq serve --http-port 7680                  + HTTP API, /metrics and the admin page

The server prints "tidemq listening on HOST:PORT" once it accepts connections (and
"tidemq http on HOST:PORT" with --http-port), and shuts down
gracefully on SIGTERM or Ctrl-C (stop accepting, finish requests, sync, close).
It listens on loopback unless --host says otherwise; another address needs --users (every
connection then authenticates) or --insecure. SIGHUP reloads the users file and the TLS
certificate. See docs/security.md.
"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    from ..server._main import build_parser as server_flags

    p = sub.add_parser("serve", help="run the TideMQ server",
                       description="Run the TideMQ server (binary protocol over TCP; with "
                                   "--http-port also HTTP/JSON, metrics and the admin page) "
                                   "on a data folder.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    server_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidArgument
    from ..server import serve
    from ..server._main import _loop_factory, config_from_args

    level = str(args.log_level).upper()
    if not isinstance(logging.getLevelName(level), int):
        raise UsageError(f"unknown log level {args.log_level!r}: use DEBUG, INFO, WARNING or "
                         "ERROR", "tidemq serve")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except InvalidArgument as exc:
        raise UsageError(str(exc), "tidemq serve") from None
    try:
        loop_factory = _loop_factory(config.loop)
    except ImportError:
        raise UsageError("--loop uvloop needs the uvloop package (pip install uvloop)",
                         "tidemq serve") from None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:  # --loop, as python -m
            runner.run(serve(config))
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, f"cannot listen on {config.host}:{config.port}: "
                                 f"{exc.strerror}") from None
    return 0
