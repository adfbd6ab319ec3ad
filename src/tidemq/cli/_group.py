"""``tidemq group list|describe|reset``."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from ._common import open_client, parse_position
from ._output import json_line, table

__all__ = ["register"]

_EPILOG = """\
examples:
  tidemq group list orders
  tidemq group describe orders billing
  tidemq group reset orders billing --to earliest          replay everything retained
  tidemq group reset orders billing --to latest            skip the backlog
  tidemq group reset orders billing --to 0:120,1:98        per partition
  tidemq group reset orders billing --to @2026-01-31T12:00:00Z

Resetting drops the group's in-flight leases; messages before the new position count as done.
"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("group", help="list, describe and reset consumer groups",
                       description="Inspect consumer groups and move their position (replay).",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    gs = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    ls = gs.add_parser("list", parents=parents, help="list a topic's groups",
                       description="List a topic's consumer groups with members, lag and "
                                   "in-flight messages.")
    ls.add_argument("topic", metavar="TOPIC")
    ls.add_argument("--json", action="store_true", help="one JSON object per group")
    ls.set_defaults(func=_list)

    d = gs.add_parser("describe", parents=parents, help="show one group",
                      description="Show a group's settings and, per partition, its committed "
                                  "offset, lag and in-flight messages.")
    d.add_argument("topic", metavar="TOPIC")
    d.add_argument("group", metavar="GROUP")
    d.add_argument("--json", action="store_true", help="print the group as one JSON object")
    d.set_defaults(func=_describe)

    r = gs.add_parser("reset", parents=parents, help="move a group to a position (replay)",
                      description="Move a group to a new position. Its in-flight leases are "
                                  "dropped; members keep consuming from there.",
                      epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("topic", metavar="TOPIC")
    r.add_argument("group", metavar="GROUP")
    r.add_argument("--to", required=True, type=parse_position, metavar="POS", dest="position",
                   help="earliest, latest, OFFSET (every partition), P:OFFSET,... or "
                        "@TIMESTAMP (epoch seconds or ISO 8601; UTC if no zone)")
    r.set_defaults(func=_reset)


def _list(args: argparse.Namespace) -> int:
    with open_client(args) as mq:
        groups = sorted(mq.list_groups(args.topic), key=lambda g: g.name)
    if args.json:
        for g in groups:
            json_line(msgspec.to_builtins(g))
        return 0
    table(("GROUP", "MODE", "MEMBERS", "LAG", "IN-FLIGHT", "DELAYED"),
          [(g.name, g.settings.mode, len(g.members), g.lag, g.in_flight, g.delayed)
           for g in groups])
    return 0


def _describe(args: argparse.Namespace) -> int:
    with open_client(args) as mq:
        g = mq.describe_group(args.topic, args.group)
    if args.json:
        json_line(msgspec.to_builtins(g))
        return 0
    s = g.settings
    print(f"group:           {g.name}")
    print(f"topic:           {g.topic}")
    print(f"mode:            {s.mode}")
    print(f"filter:          {_compact(s.filter) if s.filter else '-'}")
    print(f"start:           {_compact(s.start)}")
    print(f"ack timeout:     {s.ack_timeout:g} s")
    print(f"max deliveries:  {s.max_deliveries}")
    print(f"backoff:         {s.backoff.initial:g} s x{s.backoff.multiplier:g}, "
          f"max {s.backoff.max:g} s")
    rk = "" if s.dead_letter_routing_key is None else f" (key {s.dead_letter_routing_key!r})"
    print(f"dead letters to: {s.dead_letter_topic or g.topic + '.dlq'}{rk}")
    print(f"message ttl:     {f'{s.message_ttl:g} s' if s.message_ttl else '-'}")
    print(f"members:         {len(g.members)}")
    print(f"lag:             {g.lag} (in flight {g.in_flight}, delayed {g.delayed})")
    print()
    table(("PARTITION", "COMMITTED", "LAG", "IN-FLIGHT"),
          [(p.partition, p.committed, p.lag, p.in_flight) for p in g.partitions])
    return 0


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.encode(msgspec.to_builtins(value)).decode()


def _reset(args: argparse.Namespace) -> int:
    with open_client(args) as mq:
        mq.reset_group(args.topic, args.group, args.position)
    print(f"group {args.group} of {args.topic} reset to {_compact(args.position)}")
    return 0
