"""``tidemq topic create|list|describe|delete``."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from ._common import nonneg_float, open_client, positive_int
from ._output import json_line, table

__all__ = ["register"]

_EPILOG = """\
examples:
  tidemq topic create orders --partitions 3 --durability always
  tidemq topic create events --retention 86400 --exist-ok
  tidemq topic list
  tidemq topic describe orders --json
  tidemq topic delete orders
"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("topic", help="create, list, describe and delete topics",
                       description="Manage topics.", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ts = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    c = ts.add_parser("create", parents=parents, help="create a topic",
                      description="Create a topic. Topics are also created on first publish "
                                  "(with default settings) unless the broker disables it.",
                      epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("name", metavar="NAME", help="1-200 chars of A-Z a-z 0-9 _ - and dots")
    c.add_argument("--partitions", type=positive_int, default=1, metavar="N",
                   help="number of partitions (default 1; may grow later, never shrink)")
    c.add_argument("--durability", choices=("always", "interval", "never"), default=None,
                   help="always: fsync before confirming; interval (default): fsync every "
                        "100 ms; never: leave it to the OS")
    c.add_argument("--retention", type=nonneg_float, default=None, metavar="SECONDS",
                   help="keep messages at least this long (default: forever)")
    c.add_argument("--retention-bytes", type=positive_int, default=None, metavar="N",
                   help="cap each partition's size on disk")
    c.add_argument("--log-retention", action="store_true", default=None,
                   help="pure log retention (Kafka): delete old data even if a group still "
                        "has to deliver it")
    c.add_argument("--max-message-bytes", type=positive_int, default=None, metavar="N",
                   help="largest message accepted (default 1 MiB)")
    c.add_argument("--exist-ok", action="store_true",
                   help="succeed if the topic already exists")
    c.set_defaults(func=_create)

    ls = ts.add_parser("list", parents=parents, help="list topics",
                       description="List topics with their partitions, messages and groups.")
    ls.add_argument("--json", action="store_true", help="one JSON object per topic")
    ls.set_defaults(func=_list)

    d = ts.add_parser("describe", parents=parents, help="show one topic",
                      description="Show a topic's settings, partitions (offsets) and groups.")
    d.add_argument("name", metavar="NAME")
    d.add_argument("--json", action="store_true", help="print the topic as one JSON object")
    d.set_defaults(func=_describe)

    rm = ts.add_parser("delete", parents=parents, help="delete a topic and its messages",
                       description="Delete a topic, its messages and its groups. A topic "
                                   "created again later with the same name is a new one.")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=_delete)


def _messages(info: Any) -> int:
    return sum(p.end_offset - p.start_offset for p in info.partitions)


def _create(args: argparse.Namespace) -> int:
    config = {
        "durability": args.durability,
        "retention": args.retention,
        "retention_bytes": args.retention_bytes,
        "log_retention": args.log_retention,
        "max_message_bytes": args.max_message_bytes,
    }
    with open_client(args) as mq:
        info = mq.create_topic(args.name, args.partitions, exist_ok=args.exist_ok,
                               **{k: v for k, v in config.items() if v is not None})
    print(f"topic {info.name}: {len(info.partitions)} partition(s), "
          f"durability {info.config.durability}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_client(args) as mq:
        topics = sorted(mq.list_topics(), key=lambda t: t.name)
    if args.json:
        for t in topics:
            json_line(msgspec.to_builtins(t))
        return 0
    table(("TOPIC", "PARTITIONS", "MESSAGES", "GROUPS", "DURABILITY"),
          [(t.name, len(t.partitions), _messages(t), len(t.groups), t.config.durability)
           for t in topics])
    return 0


def _describe(args: argparse.Namespace) -> int:
    with open_client(args) as mq:
        t = mq.describe_topic(args.name)
    if args.json:
        json_line(msgspec.to_builtins(t))
        return 0
    cfg = t.config
    print(f"topic:        {t.name}")
    print(f"incarnation:  {t.incarnation}")
    print(f"durability:   {cfg.durability}")
    print(f"retention:    {_seconds(cfg.retention)}"
          + (f", {cfg.retention_bytes} bytes" if cfg.retention_bytes else "")
          + (" (log retention)" if cfg.log_retention else ""))
    print(f"max message:  {cfg.max_message_bytes} bytes")
    print(f"messages:     {_messages(t)}" + (f" (+{t.delayed} delayed)" if t.delayed else ""))
    print(f"groups:       {', '.join(sorted(t.groups)) or '-'}")
    print()
    table(("PARTITION", "START", "END", "MESSAGES"),
          [(p.partition, p.start_offset, p.end_offset, p.end_offset - p.start_offset)
           for p in t.partitions])
    return 0


def _seconds(value: float | None) -> str:
    return "forever" if value is None else f"{value:g} s"


def _delete(args: argparse.Namespace) -> int:
    with open_client(args) as mq:
        mq.delete_topic(args.name)
    print(f"deleted topic {args.name}")
    return 0
