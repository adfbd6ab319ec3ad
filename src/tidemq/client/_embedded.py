"""The embedded transport: the broker core in this process, for ``memory://`` and data folders.

A thin layer over :class:`tidemq.driver.ThreadDriver`, which gives the deterministic core its
clocks, lock, timers, group commit and background snapshot I/O (see ``docs/architecture.md``).
Each method here is one broker call under the driver's lock; writes under durability ``always``
wait for their sync token outside the lock, so writers that arrive during one fsync share the
next one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from ..broker import Broker
from ..broker._types import (
    Delivery,
    GroupInfo,
    GroupSettings,
    StartPosition,
    TopicConfig,
    TopicInfo,
)
from ..driver import BLOCK_TIMEOUT, DriverConfig, ThreadDriver, mono_us, now_us
from ..errors import BacklogFull
from ..storage import Record, open_store

__all__ = ["EmbeddedTransport"]

REDRIVE_BATCH = 10_000  # dead letters moved per broker call (bounded work under the lock)

_deliver_at = attrgetter("deliver_at_us")
_time_ns = time.time_ns
_monotonic_ns = time.monotonic_ns


class EmbeddedTransport:
    """A :class:`~tidemq.client._transport.SyncTransport` over an in-process broker.

    ``path=None`` keeps everything in memory. Thread-safe. ``block_timeout`` bounds how long a
    publish waits on a full backlog whose policy is ``block`` (then ``BacklogFull``, as on the
    server).
    """

    def __init__(
        self,
        path: str | None,
        *,
        auto_create_topics: bool = True,
        sync_interval: float = 0.1,
        block_timeout: float = BLOCK_TIMEOUT,
    ) -> None:
        store = open_store(path)
        try:
            broker = Broker.open(store, now_us=now_us(), mono_us=mono_us(),
                                 auto_create_topics=auto_create_topics)
        except BaseException:
            store.close()
            raise
        self._broker = broker
        self._driver = d = ThreadDriver(
            broker, DriverConfig(sync_interval=sync_interval, block_timeout=block_timeout),
            on_close=store.close)
        self._lock = d.lock

    def close(self) -> None:
        self._driver.close()

    # -- topics -----------------------------------------------------------------------------

    def create_topic(self, name: str, config: TopicConfig, exist_ok: bool) -> TopicInfo:
        b = self._broker
        return self._driver.call(lambda: b.create_topic(name, config, now_us=now_us(),
                                                         exist_ok=exist_ok))

    def delete_topic(self, name: str) -> None:
        b = self._broker
        self._driver.call(lambda: b.delete_topic(name, now_us=now_us()))

    def list_topics(self) -> list[TopicInfo]:
        return self._driver.read(self._broker.list_topics)

    def describe_topic(self, name: str) -> TopicInfo:
        b = self._broker
        return self._driver.read(lambda: b.describe_topic(name))

    def set_partitions(self, name: str, partitions: int) -> TopicInfo:
        b = self._broker
        return self._driver.call(lambda: b.set_partitions(name, partitions, now_us=now_us()))

    # -- publishing -------------------------------------------------------------------------

    def publish_nowait(self, topic: str, records: Sequence[Record]) -> tuple[list[str], Any]:
        """Append under the lock; returns the ids and the token still to be made durable."""
        b = self._broker
        result = self._driver.call_blocking(topic, lambda: b.publish(topic, records, now_us=now_us()))
        return result.ids, result.token

    def needs_durable(self, token: Any) -> bool:
        """Whether ``token`` must be synced before its write is confirmed (``always``)."""
        return token is not None and self._broker.needs_sync(token)

    def wait_durable(self, token: Any) -> None:
        self._driver.durable(token)

    def publish(self, topic: str, records: Sequence[Record]) -> list[str]:
        d = self._driver
        with self._lock:
            if d.closed:
                d.check()
            try:
                result = self._broker.publish(topic, records, now_us=_time_ns() // 1000)
            except BacklogFull:
                result = None  # the waiting path below
            else:
                if d._waiters or any(map(_deliver_at, records)):
                    d.after_call()
        if result is None:
            ids, token = self.publish_nowait(topic, records)
        else:
            ids, token = result.ids, result.token
        if token.always and token.entries:
            self._broker.sync(token)
        return ids

    # -- groups -----------------------------------------------------------------------------

    def _barrier(self, topic: str) -> None:
        """Under ``always``, return only once the group change just made is durable."""
        self._driver.durable(self._driver.read(lambda: self._broker.barrier(topic)))

    def create_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        b = self._broker
        info = self._driver.call(lambda: b.create_group(topic, group, settings, now_us=now_us()))
        self._barrier(topic)
        return info

    def update_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        b = self._broker
        info = self._driver.call(lambda: b.update_group(topic, group, settings, **self._driver.clocks()))
        self._barrier(topic)
        return info

    def delete_group(self, topic: str, group: str) -> None:
        b = self._broker
        self._driver.call(lambda: b.delete_group(topic, group, now_us=now_us()))
        self._barrier(topic)

    def list_groups(self, topic: str) -> list[GroupInfo]:
        b = self._broker
        return self._driver.read(lambda: b.list_groups(topic))

    def describe_group(self, topic: str, group: str) -> GroupInfo:
        b = self._broker
        return self._driver.read(lambda: b.describe_group(topic, group))

    def reset_group(self, topic: str, group: str, start: StartPosition) -> None:
        b = self._broker
        self._driver.call(lambda: b.reset_group(topic, group, start, now_us=now_us()))
        self._barrier(topic)

    def redrive(self, topic: str, group: str, limit: int | None) -> int:
        """Redrive in bounded steps (the broker moves at most ``REDRIVE_BATCH`` per call), the
        lock released between them so other callers go on."""
        b = self._broker
        moved = 0
        while limit is None or moved < limit:
            want = None if limit is None else limit - moved

            def step(want: int | None = want) -> int:
                return b.redrive(topic, group, limit=want, now_us=now_us(), max_batch=REDRIVE_BATCH)

            n = self._driver.call(step)
            moved += n
            if n < REDRIVE_BATCH:
                break
        self._barrier(topic)
        return moved

    # -- consuming --------------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, settings: GroupSettings | None, prefetch: int) -> str:
        b = self._broker
        member = self._driver.call(lambda: b.subscribe(topic, group, settings, prefetch=prefetch,
                                                       **self._driver.clocks()))
        self._barrier(topic)
        return member

    def receive(self, member: str, max_messages: int, timeout: float) -> list[Delivery]:
        fetch = self._broker.fetch
        d = self._driver
        with self._lock:
            d.check()
            got = fetch(member, max_messages, now_us=now_us(), mono_us=mono_us())
            if got or timeout <= 0:
                if got:
                    d.after_call()  # new leases: the timer may have to wake earlier
                return got
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                d.wait(remaining)
                d.check()
                got = fetch(member, max_messages, now_us=now_us(), mono_us=mono_us())
                if got:
                    d.after_call()
                    return got

    def ack_nowait(self, member: str, ids: Sequence[str]) -> Any:
        d = self._driver
        with self._lock:
            if d.closed:
                d.check()
            token = self._broker.ack(member, ids, now_us=_time_ns() // 1000,
                                     mono_us=_monotonic_ns() // 1000)
            if d._waiters:
                # An ack can unblock the next message of an ordered partition or key.
                d.after_call()
        return token

    def nack_nowait(self, member: str, ids: Sequence[str], delay: float | None) -> Any:
        b = self._broker
        return self._driver.call(lambda: b.nack(member, ids, delay, **self._driver.clocks()))

    def reject_nowait(self, member: str, ids: Sequence[str], reason: str) -> Any:
        b = self._broker
        return self._driver.call(lambda: b.reject(member, ids, reason, **self._driver.clocks()))

    def ack(self, member: str, ids: Sequence[str]) -> None:
        # ack_nowait, inlined: this is the per-message consume path.
        d = self._driver
        with self._lock:
            if d.closed:
                d.check()
            token = self._broker.ack(member, ids, now_us=_time_ns() // 1000,
                                     mono_us=_monotonic_ns() // 1000)
            if d._waiters:
                d.after_call()
        if token.always and token.entries:
            self._broker.sync(token)

    def flush(self, member: str) -> None:
        """Nothing to wait for: an embedded ack is applied, and durable at the topic's level,
        before ``ack`` returns (errors are raised by ``ack`` itself)."""
        self._driver.check()

    def nack(self, member: str, ids: Sequence[str], delay: float | None) -> None:
        self._driver.durable(self.nack_nowait(member, ids, delay))

    def reject(self, member: str, ids: Sequence[str], reason: str) -> None:
        self._driver.durable(self.reject_nowait(member, ids, reason))

    def extend(self, member: str, ids: Sequence[str], seconds: float) -> None:
        b = self._broker
        self._driver.call(lambda: b.extend(member, ids, seconds, **self._driver.clocks()))

    def unsubscribe(self, member: str) -> None:
        d = self._driver
        with self._lock:
            if d.closed:
                return
            self._broker.unsubscribe(member, now_us=now_us(), mono_us=mono_us())
            d.after_call()
