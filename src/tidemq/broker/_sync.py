"""Sync tokens: what a write must fsync before the driver may confirm it (SPEC §6)."""

from __future__ import annotations

from dataclasses import dataclass

from ..storage import PartitionLog

__all__ = ["SyncToken", "EMPTY_TOKEN", "TokenBuilder"]


@dataclass(frozen=True, slots=True)
class SyncToken:
    """The ``(log, position)`` pairs a write touched, in append order, and whether the topic's
    durability is ``always`` (the driver must then ``Broker.sync(token)`` before confirming).

    Data logs come before the journal that describes them, so syncing in order never makes
    state durable ahead of the data (SPEC §6). A token is immutable and may be handed to another
    thread; ``Broker.sync`` is safe to call there.
    """

    entries: tuple[tuple[PartitionLog, int], ...] = ()
    always: bool = False

    def __bool__(self) -> bool:
        return bool(self.entries)

    def merge(self, other: SyncToken) -> SyncToken:
        """One token covering both (order kept: ``self`` first)."""
        if not other.entries:
            return self
        if not self.entries:
            return other
        return SyncToken(self.entries + other.entries, self.always or other.always)


EMPTY_TOKEN = SyncToken()


class TokenBuilder:
    """Collects appended positions during one broker call; keeps the largest per log."""

    __slots__ = ("_entries", "always", "later")

    def __init__(self) -> None:
        self._entries: dict[int, tuple[PartitionLog, int]] = {}
        self.always = False
        # Appends nobody waits for but the periodic sync must cover (journal records that
        # recovery could rebuild from the data, J3): not in the token, recorded by the broker.
        self.later: list[tuple[PartitionLog, int]] = []

    def add(self, log: PartitionLog, position: int, always: bool) -> None:
        key = id(log)
        prev = self._entries.get(key)
        if prev is None:
            self._entries[key] = (log, position)
        elif position > prev[1]:
            # Re-inserting moves it to the end: a log written again after others is synced
            # after them, keeping data-before-journal order.
            del self._entries[key]
            self._entries[key] = (log, position)
        self.always = self.always or always

    def build(self) -> SyncToken:
        if not self._entries:
            return EMPTY_TOKEN
        return SyncToken(tuple(self._entries.values()), self.always)
