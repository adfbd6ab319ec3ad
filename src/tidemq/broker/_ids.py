"""Message ids (SPEC §1): opaque to clients, naming topic, incarnation, partition and offset.

Form: ``<topic>@<incarnation>:<partition>:<offset>``. Topic names never contain ``@`` or ``:``
(SPEC §1), so the id parses back unambiguously; a re-created topic has a new incarnation, so an
id never names two messages. Messages waiting in a topic's delay store have partition ``d``
and their delay-store sequence as offset: they keep that id when they are delivered.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import UnknownMessage

__all__ = ["MessageRef", "make_id", "make_ids", "parse_id", "DELAY_PARTITION"]

DELAY_PARTITION = -1


class MessageRef(NamedTuple):
    topic: str
    incarnation: int
    partition: int  # DELAY_PARTITION for the delay store
    offset: int


def make_id(topic: str, incarnation: int, partition: int, offset: int) -> str:
    p = "d" if partition == DELAY_PARTITION else partition
    return f"{topic}@{incarnation}:{p}:{offset}"


def make_ids(topic: str, incarnation: int, partition: int, first: int, count: int) -> list[str]:
    """Ids of ``count`` consecutive offsets: one format call per message, nothing else."""
    p = "d" if partition == DELAY_PARTITION else partition
    prefix = f"{topic}@{incarnation}:{p}:"
    return [prefix + str(o) for o in range(first, first + count)]


def parse_id(message_id: str) -> MessageRef:
    """Parse an id; raises :class:`UnknownMessage` if it is not one of ours."""
    try:
        topic, rest = message_id.rsplit("@", 1)
        inc, part, off = rest.split(":")
        partition = DELAY_PARTITION if part == "d" else int(part)
        ref = MessageRef(topic, int(inc), partition, int(off))
    except (ValueError, AttributeError):
        raise UnknownMessage(f"{message_id!r} is not a TideMQ message id") from None
    if not topic or ref.offset < 0 or ref.incarnation < 0 or ref.partition < DELAY_PARTITION:
        raise UnknownMessage(f"{message_id!r} is not a TideMQ message id")
    return ref
