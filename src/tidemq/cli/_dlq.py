"""``tidemq dlq list|redrive``: inspect and hand back dead letters.

``dlq list`` reads the dead-letter topic without consuming anything for real: it joins a
throwaway group (``tidemq-cli-peek-<random>``, ``start=earliest``) on ``<topic>.dlq``, receives
up to ``--limit`` messages, leaves without acking and deletes that group. No other group's
progress changes. The dead-letter topic is an append-only log, so the list also shows dead
letters that were redriven already.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from ._common import open_client, positive_int
from ._output import fmt_bytes, message_json, table

__all__ = ["register", "ORIGIN"]

ORIGIN = "x-tidemq-origin-"  # the broker's dead-letter header prefix

_EPILOG = """\
examples:
  tidemq dlq list orders                      dead letters in orders.dlq
  tidemq dlq list orders --limit 5 --format json
  tidemq dlq redrive orders billing           hand billing's dead letters back to billing
  tidemq dlq redrive orders billing --limit 100

Redrive delivers the dead letters again only to the group they failed in; other groups do not
see them again. A dead letter is never redriven twice.
"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dlq", help="inspect and redrive dead letters",
                       description="Inspect and redrive dead-lettered messages.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ds = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    ls = ds.add_parser("list", parents=parents, help="show dead letters without consuming them",
                       description="Show the dead letters of TOPIC (in TOPIC.dlq) with the "
                                   "group, reason and delivery count they failed with. Nothing "
                                   "is consumed: a throwaway group peeks and is deleted.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("topic", metavar="TOPIC")
    ls.add_argument("--limit", type=positive_int, default=50, metavar="N",
                    help="show at most N dead letters (default 50)")
    ls.add_argument("--dlq-topic", metavar="NAME",
                    help="the dead-letter topic, if the group set its own (default TOPIC.dlq)")
    ls.add_argument("--format", choices=("text", "json"), default="text",
                    help="text: a table; json: one object per dead letter (as consume prints)")
    ls.set_defaults(func=_list)

    r = ds.add_parser("redrive", parents=parents, help="hand dead letters back to their group",
                      description="Append GROUP's dead letters of TOPIC back to TOPIC, for GROUP "
                                  "only.", epilog=_EPILOG,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("topic", metavar="TOPIC")
    r.add_argument("group", metavar="GROUP")
    r.add_argument("--limit", type=positive_int, metavar="N", help="redrive at most N (default all)")
    r.set_defaults(func=_redrive)


def _list(args: argparse.Namespace) -> int:
    from ..errors import UnknownTopic

    dlq = args.dlq_topic or f"{args.topic}.dlq"
    with open_client(args) as mq:
        try:
            info = mq.describe_topic(dlq)
        except UnknownTopic:
            mq.describe_topic(args.topic)  # a typo in TOPIC is an error, not "no dead letters"
            info = None
        letters = [] if info is None else _peek(mq, dlq, args.limit)
    if args.format == "json":
        for m in letters:
            print(json.dumps(message_json(m), ensure_ascii=False))
        return 0
    h = ORIGIN
    table(("ID", "GROUP", "REASON", "DELIVERIES", "ORIGIN", "BODY"),
          [(m.id, m.headers.get(h + "group"), m.headers.get(h + "reason"),
            m.headers.get(h + "delivery-count"),
            f"{m.headers.get(h + 'partition', '?')}:{m.headers.get(h + 'offset', '?')}",
            fmt_bytes(m.body, 40)) for m in letters])
    return 0


def _peek(mq: Any, dlq: str, limit: int) -> list[Any]:
    from ..errors import UnknownGroup

    group = f"tidemq-cli-peek-{uuid.uuid4().hex[:12]}"
    out: list[Any] = []
    try:
        with mq.subscribe(dlq, group, start="earliest", prefetch=min(limit, 10_000)) as sub:
            while len(out) < limit:
                got = sub.receive(max_messages=limit - len(out), timeout=0.3)
                if not got:
                    break
                out.extend(got)
    finally:
        try:
            mq.delete_group(dlq, group)
        except UnknownGroup:  # subscribe failed before creating it; keep its error
            pass
    out.sort(key=lambda m: (m.timestamp, m.partition, m.offset))
    return out


def _redrive(args: argparse.Namespace) -> int:
    with open_client(args) as mq:
        n = mq.redrive(args.topic, args.group, limit=args.limit)
    print(f"redrove {n} dead letter(s) to group {args.group} of {args.topic}")
    return 0
