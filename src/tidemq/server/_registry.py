"""The server's subscription registry: every open subscription, by broker member id (for the
push pass) and by ``(connection, subscription id)`` (for a connection's requests).

One object, owned by the server; connections and request handlers go through it, never through
each other. Ending a subscription here is the one way to end it:

- :meth:`Subscriptions.close` (a ``CloseSubscription`` frame) and
  :meth:`Subscriptions.close_connection` (the connection ended) hand each member to the
  ``unsubscribe`` callable the server gave, which releases its leases in the broker at once;
- :meth:`Subscriptions.end_topic` (the topic was deleted: the broker already forgot its members)
  only tells each subscriber, with a ``SubscriptionEnded`` frame.

Not thread-safe: lives on the server's event loop, like the connections.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .. import protocol as P
from ..errors import InvalidArgument, UnknownTopic
from ._push import Peer, Subscription

__all__ = ["Subscriptions"]


class _Opened:
    """One connection's subscriptions, and its next subscription id (ids are never reused on a
    connection, so a late ``Credit`` for a closed subscription cannot reach a new one)."""

    __slots__ = ("by_id", "next_id")

    def __init__(self) -> None:
        self.by_id: dict[int, Subscription] = {}
        self.next_id = 1


class Subscriptions:
    """Every open subscription of the server (see the module docstring)."""

    def __init__(self, unsubscribe: Callable[[str], None]) -> None:
        self._unsubscribe = unsubscribe
        self._by_member: dict[str, Subscription] = {}
        self._by_conn: dict[Peer, _Opened] = {}

    @property
    def members(self) -> Mapping[str, Subscription]:
        """Broker member id -> subscription (read-only view; insertion order)."""
        return self._by_member

    def open(self, conn: Peer, member: str, topic: str, incarnation: int,
             prefetch: int, group: str = "") -> Subscription:
        """Register the subscription of ``member`` (just subscribed in the broker) on ``conn``;
        it gets the connection's next subscription id and ``prefetch`` credit."""
        opened = self._by_conn.get(conn)
        if opened is None:
            opened = self._by_conn[conn] = _Opened()
        sub = Subscription(conn, opened.next_id, member, topic, incarnation, prefetch, group)
        opened.next_id += 1
        opened.by_id[sub.sub_id] = sub
        self._by_member[member] = sub
        return sub

    def get(self, conn: Peer, sub_id: int) -> Subscription | None:
        """Subscription ``sub_id`` of ``conn``, or ``None`` when it is not open."""
        opened = self._by_conn.get(conn)
        return None if opened is None else opened.by_id.get(sub_id)

    def require(self, conn: Peer, sub_id: int) -> Subscription:
        """Like :meth:`get`; raises ``InvalidArgument`` when it is not open."""
        sub = self.get(conn, sub_id)
        if sub is None:
            raise InvalidArgument(f"subscription {sub_id} is not open on this connection")
        return sub

    def by_member(self, member: str) -> Subscription | None:
        return self._by_member.get(member)

    def count(self, conn: Peer) -> int:
        """How many subscriptions ``conn`` has open (``max_subscriptions_per_connection``)."""
        opened = self._by_conn.get(conn)
        return 0 if opened is None else len(opened.by_id)

    def of_connection(self, conn: Peer) -> list[Subscription]:
        """The open subscriptions of ``conn``, oldest first."""
        opened = self._by_conn.get(conn)
        return [] if opened is None else list(opened.by_id.values())

    def close(self, conn: Peer, sub_id: int) -> None:
        """End subscription ``sub_id`` of ``conn`` and unsubscribe its member (leases released
        now). Nothing happens when it is not open."""
        opened = self._by_conn.get(conn)
        sub = None if opened is None else opened.by_id.pop(sub_id, None)
        if sub is not None:
            self._end_member(sub.member)

    def close_connection(self, conn: Peer) -> None:
        """End every subscription of ``conn`` (it has ended) and unsubscribe their members."""
        opened = self._by_conn.pop(conn, None)
        if opened is None:
            return
        for sub in opened.by_id.values():
            self._end_member(sub.member)

    def end_topic(self, topic: str) -> None:
        """After ``topic`` was deleted: forget its subscriptions and tell each subscriber with a
        ``SubscriptionEnded`` frame. No unsubscribe: the broker dropped the members with the
        topic."""
        key = topic.lower()
        for member, sub in list(self._by_member.items()):
            if sub.topic.lower() != key:
                continue
            del self._by_member[member]
            opened = self._by_conn.get(sub.conn)
            if opened is not None:
                opened.by_id.pop(sub.sub_id, None)
            exc = UnknownTopic(f"topic {topic!r} was deleted")
            sub.conn.send(P.SubscriptionEnded(subscription_id=sub.sub_id, code=exc.code,
                                              message=exc.message))

    def _end_member(self, member: str) -> None:
        if self._by_member.pop(member, None) is not None:
            self._unsubscribe(member)
