"""``tidemq consume TOPIC --group G``: print each message (or run a command for it) and ack it.

A message is acknowledged only after it was written to stdout (and stdout flushed) or after
its ``--exec`` command exited 0, so a crash or Ctrl-C in between means it comes again
(at-least-once). Printed messages are acked one batch at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import msgspec

from ._common import (
    UsageError,
    nonneg_float,
    open_client,
    parse_position,
    positive_float,
    positive_int,
)
from ._output import message_json, note, write_body_lines, write_raw

_JSON = msgspec.json.Encoder()

__all__ = ["register", "exec_env"]

_EPILOG = """\
examples:
  tidemq consume orders --group billing                 until Ctrl-C
  tidemq consume orders --group billing --count 10 --format json
  tidemq consume orders --group audit --filter 'order.*' --start latest
  tidemq consume orders --group mailer --exec './send-mail.sh' --timeout 5

--format text prints each body followed by a newline; json prints one object per line with
id, topic, partition, offset, timestamp, key, routing_key, headers, priority, delivery_count
and body (a field is "body_base64" / "key_base64" instead when it is not UTF-8).

--exec runs CMD through the shell for each message with the body on stdin and these variables
set: TIDEMQ_ID, TIDEMQ_TOPIC, TIDEMQ_GROUP, TIDEMQ_PARTITION, TIDEMQ_OFFSET, TIDEMQ_KEY,
TIDEMQ_ROUTING_KEY, TIDEMQ_PRIORITY, TIDEMQ_DELIVERY_COUNT, TIDEMQ_TIMESTAMP, TIDEMQ_HEADERS
(JSON) and TIDEMQ_HEADER_<NAME> per header (NAME upper-cased, other characters as _).
Exit 0 acks the message; any other status nacks it (redelivered after the group's backoff,
or --nack-delay). The lease is extended while CMD runs.

--mode, --filter and --start only matter when the group is created by this command; an
existing group keeps its settings (asking for different ones is an error).
"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("consume", parents=parents, help="print messages or run a command per message",
                       description="Consume messages as a member of a consumer group and "
                                   "acknowledge each one once handled.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("topic", metavar="TOPIC", help="topic to consume (must exist)")
    p.add_argument("-g", "--group", required=True, metavar="GROUP", help="consumer group name")
    p.add_argument("-n", "--count", type=positive_int, metavar="N",
                   help="stop after handling N deliveries; a redelivered message counts again "
                        "(default: no limit)")
    p.add_argument("-t", "--timeout", type=positive_float, metavar="SECONDS",
                   help="stop after this long without a message (default: wait forever)")
    p.add_argument("--mode", choices=("shared", "ordered", "key_ordered"),
                   help="group mode when creating the group (default shared)")
    p.add_argument("--filter", action="append", metavar="PATTERN", dest="filters",
                   help="routing-key pattern (* one word, # any words); repeatable, ORed")
    p.add_argument("--start", type=parse_position, metavar="POS",
                   help="where a new group starts: earliest (default), latest, OFFSET, "
                        "P:OFFSET,... or @TIMESTAMP")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="how to print messages (default text)")
    p.add_argument("--exec", metavar="CMD", dest="exec_cmd",
                   help="run CMD per message (body on stdin): exit 0 acks, otherwise nacks")
    p.add_argument("--nack-delay", type=nonneg_float, metavar="SECONDS",
                   help="with --exec: redeliver a failed message after this long "
                        "(default: the group's backoff)")
    p.add_argument("--prefetch", type=positive_int, default=100, metavar="N",
                   help="most unacked messages held at once (default 100; 1 with --exec)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.nack_delay is not None and args.exec_cmd is None:
        raise UsageError("--nack-delay only applies with --exec", "tidemq consume")
    prefetch = 1 if args.exec_cmd is not None else args.prefetch
    if args.count is not None:
        prefetch = min(prefetch, args.count)  # never lease more than we will handle
    filter_ = {"routing_key": args.filters} if args.filters else None
    with open_client(args) as mq:
        # Consuming must not create a topic by accident (a typo would wait forever).
        mq.describe_topic(args.topic)
        with mq.subscribe(args.topic, args.group, mode=args.mode, filter=filter_,
                          start=args.start, prefetch=prefetch) as sub:
            if args.exec_cmd is not None:
                ack_timeout = mq.describe_group(args.topic, args.group).settings.ack_timeout
                _loop(sub, args, lambda batch: _exec_batch(sub, batch, args, ack_timeout))
            else:
                _loop(sub, args, lambda batch: _print_batch(sub, batch, args.format))
    return 0


def _loop(sub: Any, args: argparse.Namespace, handle: Any) -> None:
    """Receive until ``--count`` messages were handled or ``--timeout`` passed idle."""
    done = 0
    idle_since = time.monotonic()
    while args.count is None or done < args.count:
        wait = 1.0  # short waits keep Ctrl-C responsive on every transport
        if args.timeout is not None:
            left = args.timeout - (time.monotonic() - idle_since)
            if left <= 0:
                return
            wait = min(wait, left)
        want = 100 if args.count is None else min(100, args.count - done)
        batch = sub.receive(max_messages=want, timeout=wait)
        if batch:
            handle(batch)
            done += len(batch)
            idle_since = time.monotonic()


def _print_batch(sub: Any, batch: list[Any], fmt: str) -> None:
    if fmt == "json":
        write_raw(_JSON.encode_lines([message_json(m) for m in batch]))
    else:
        write_body_lines([m.body for m in batch])
    sys.stdout.flush()  # written before acked: at-least-once even if we die right here
    sub.ack(batch)


def _env_name(header: str) -> str:
    return "TIDEMQ_HEADER_" + re.sub(r"[^A-Z0-9]", "_", header.upper())


def exec_env(msg: Any, group: str) -> dict[str, str]:
    """The TIDEMQ_* variables ``--exec`` sets for ``msg`` (on top of the inherited ones)."""
    env = {
        "TIDEMQ_ID": msg.id,
        "TIDEMQ_TOPIC": msg.topic,
        "TIDEMQ_GROUP": group,
        "TIDEMQ_PARTITION": str(msg.partition),
        "TIDEMQ_OFFSET": str(msg.offset),
        "TIDEMQ_KEY": msg.key.decode("utf-8", "replace") if msg.key is not None else "",
        "TIDEMQ_ROUTING_KEY": msg.routing_key or "",
        "TIDEMQ_PRIORITY": str(msg.priority),
        "TIDEMQ_DELIVERY_COUNT": str(msg.delivery_count),
        "TIDEMQ_TIMESTAMP": f"{msg.timestamp:.6f}",
        "TIDEMQ_HEADERS": json.dumps(dict(msg.headers), ensure_ascii=False),
    }
    for k, v in msg.headers.items():
        env[_env_name(k)] = v
    return env


def _exec_batch(sub: Any, batch: list[Any], args: argparse.Namespace, ack_timeout: float) -> None:
    for m in batch:
        status = _run_command(sub, m, args, ack_timeout)
        if status == 0:
            sub.ack(m)
        else:
            note(f"command exited with status {status} for message {m.id}; nacked")
            sub.nack(m, delay=args.nack_delay)


def _run_command(sub: Any, msg: Any, args: argparse.Namespace, ack_timeout: float) -> int:
    sys.stdout.flush()  # keep our output and the command's in order
    env = {**os.environ, **exec_env(msg, args.group)}
    every = max(ack_timeout / 3, 0.05)
    proc = subprocess.Popen(args.exec_cmd, shell=True, stdin=subprocess.PIPE, env=env)
    try:
        body: bytes | None = msg.body
        while True:
            try:
                # communicate may be called again after a timeout without losing input
                proc.communicate(body, timeout=every)
                return proc.returncode
            except subprocess.TimeoutExpired:
                body = None
                sub.extend(msg, ack_timeout)  # a slow command must not lose its lease
    except BaseException:
        proc.kill()
        proc.wait()
        raise
