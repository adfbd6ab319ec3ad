"""``tidemq publish TOPIC [BODY ...]``: from arguments, or one message per stdin line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from ._common import (
    UsageError,
    header_arg,
    nonneg_float,
    open_client,
    positive_float,
    positive_int,
    priority_arg,
)
from ._output import note

__all__ = ["register", "read_lines"]

_EPILOG = """\
examples:
  tidemq publish orders '{"id": 1}' --key user-1 --routing-key order.created
  tidemq publish orders a b c                      three messages, one batch
  tidemq publish orders hi --header region=eu --header tier=gold --priority 7
  tidemq publish reminders 'call back' --delay 3600
  seq 100000 | tidemq publish numbers --quiet      one message per line, batched

Without BODY arguments each stdin line (without its line ending) is one message; an empty
line is an empty message. Prints each message id, one per line (--quiet: only the count).
"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("publish", parents=parents, help="publish messages",
                       description="Publish messages from arguments or from stdin lines.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("topic", metavar="TOPIC",
                   help="topic to publish to (created on first publish if the broker allows)")
    p.add_argument("bodies", nargs="*", metavar="BODY",
                   help="message bodies (UTF-8); none: read stdin, one message per line")
    p.add_argument("--key", help="partition key: the same key always goes to the same partition")
    p.add_argument("--routing-key", metavar="WORDS",
                   help="dot-separated routing key, e.g. order.created")
    p.add_argument("--header", action="append", type=header_arg, default=[], metavar="K=V",
                   dest="headers", help="a header (repeatable)")
    p.add_argument("--priority", type=priority_arg, default=0, metavar="0-9",
                   help="higher is delivered first in shared mode (default 0)")
    p.add_argument("--delay", type=nonneg_float, metavar="SECONDS",
                   help="deliver no earlier than this many seconds from now")
    p.add_argument("--ttl", type=positive_float, metavar="SECONDS",
                   help="dead-letter (reason 'expired') if not delivered within this time")
    p.add_argument("--dedup-id", metavar="ID",
                   help="a repeat with the same id within the topic's dedup window is stored "
                        "once (one message only)")
    p.add_argument("--batch", type=positive_int, default=1000, metavar="N",
                   help="stdin lines per publish_batch call (default 1000)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the number of messages published")
    p.set_defaults(func=run)


def read_lines(stream: BinaryIO, batch: int) -> Iterator[list[bytes]]:
    """Lists of at most ``batch`` lines from ``stream``, each without ``\\n`` / ``\\r\\n``."""
    chunk: list[bytes] = []
    for line in stream:
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        chunk.append(line)
        if len(chunk) >= batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run(args: argparse.Namespace) -> int:
    headers = dict(args.headers) or None
    options: dict[str, Any] = dict(key=args.key, routing_key=args.routing_key, headers=headers,
                                   priority=args.priority, delay=args.delay, ttl=args.ttl)
    bodies = [b.encode() for b in args.bodies]
    if args.dedup_id is not None and len(bodies) != 1:
        raise UsageError("--dedup-id applies to exactly one message: give one BODY argument",
                         "tidemq publish")
    count = 0
    with open_client(args) as mq:
        if len(bodies) == 1:
            ids = [mq.publish(args.topic, bodies[0], dedup_id=args.dedup_id, **options)]
            count = _emit(ids, args.quiet)
        elif bodies:
            count = _emit(mq.publish_batch(args.topic, bodies, **options), args.quiet)
        else:
            stdin = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
            if getattr(stdin, "isatty", lambda: False)():
                note("reading messages from stdin, one per line; end with Ctrl-D")
            for chunk in read_lines(stdin, args.batch):  # type: ignore[arg-type]
                count += _emit(mq.publish_batch(args.topic, chunk, **options), args.quiet)
    if args.quiet:
        print(count)
    return 0


def _emit(ids: list[str], quiet: bool) -> int:
    if not quiet:
        sys.stdout.write("".join(i + "\n" for i in ids))
    return len(ids)
