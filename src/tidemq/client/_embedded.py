"""The embedded driver: the broker core in this process, for ``memory://`` and data folders.

The core is deterministic and single-threaded; this driver gives it what it lacks:

- clocks: every call passes wall time and monotonic time in;
- a lock, so that any thread may call any method (the transport is thread-safe);
- a ticker thread that sleeps until the broker's next deadline (lease expiry, a delayed
  message's time, backoff), runs ``tick`` and wakes waiting receivers;
- group commit: under durability ``always`` a publish or ack appends under the lock, then waits
  for its sync token *outside* it, so writers that arrive during one fsync share the next one;
  under ``interval`` the ticker syncs every ``sync_interval``.
"""

from __future__ import annotations

import threading
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
from ..errors import BacklogFull, Closed, Timeout
from ..storage import Record, open_store

__all__ = ["EmbeddedTransport"]

_US = 1_000_000
_deliver_at = attrgetter("deliver_at_us")
_time_ns = time.time_ns
_monotonic_ns = time.monotonic_ns


def _now_us() -> int:
    return _time_ns() // 1000


def _mono_us() -> int:
    return _monotonic_ns() // 1000


class EmbeddedTransport:
    """A :class:`~tidemq.client._transport.SyncTransport` over an in-process broker.

    ``path=None`` keeps everything in memory. Thread-safe. ``block_timeout`` bounds how long a
    publish waits on a full backlog whose policy is ``block``.
    """

    def __init__(
        self,
        path: str | None,
        *,
        auto_create_topics: bool = True,
        sync_interval: float = 0.1,
        block_timeout: float = 30.0,
    ) -> None:
        self._store = open_store(path)
        try:
            self._broker = Broker.open(self._store, now_us=_now_us(), mono_us=_mono_us(),
                                       auto_create_topics=auto_create_topics)
        except BaseException:
            self._store.close()
            raise
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # Threads in _cond.wait (changed under the lock): with none, there is nobody to wake,
        # and the broker's wakeups are left to accumulate (a set of groups, bounded).
        self._waiters = 0
        self._closed = False
        self._sync_interval = sync_interval
        self._block_timeout = block_timeout
        self._kick = threading.Event()
        self._ticker = threading.Thread(target=self._run_ticker, name="tidemq-ticker", daemon=True)
        self._ticker.start()

    # -- plumbing ---------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise Closed("this client is closed; open a new one")

    def _notify(self) -> None:
        # Called with the lock held after anything that can make messages ready.
        if self._waiters and self._broker.wakeups():
            self._cond.notify_all()

    def _wait(self, timeout: float) -> None:
        # With the lock held: wait on the condition, counted for _notify.
        self._waiters += 1
        try:
            self._cond.wait(timeout)
        finally:
            self._waiters -= 1

    def _run_ticker(self) -> None:
        next_sync = time.monotonic() + self._sync_interval
        while True:
            with self._lock:
                if self._closed:
                    return
                wait = self._broker.tick(now_us=_now_us(), mono_us=_mono_us())
                self._notify()
            now = time.monotonic()
            if now >= next_sync:
                with self._lock:
                    if self._closed:
                        return
                # Outside the lock: sync_all is safe against concurrent appends (a log's sync
                # never holds its append bookkeeping across the fsync), so publishers and
                # consumers go on while the disk flushes.
                self._broker.sync_all()
                next_sync = now + self._sync_interval
            timeout = next_sync - now
            if wait is not None:
                timeout = min(timeout, max(wait, 0.0))
            self._kick.wait(timeout)
            self._kick.clear()

    def _durable(self, token: Any) -> None:
        """Wait for ``token`` to be durable if its level asks for it (outside the lock)."""
        if token is not None and self._broker.needs_sync(token):
            self._broker.sync(token)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._kick.set()
        self._ticker.join(timeout=5)
        with self._lock:
            try:
                self._broker.close()
            finally:
                self._store.close()

    # -- topics -----------------------------------------------------------------------------

    def create_topic(self, name: str, config: TopicConfig, exist_ok: bool) -> TopicInfo:
        with self._lock:
            self._check()
            return self._broker.create_topic(name, config, now_us=_now_us(), exist_ok=exist_ok)

    def delete_topic(self, name: str) -> None:
        with self._lock:
            self._check()
            self._broker.delete_topic(name, now_us=_now_us())

    def list_topics(self) -> list[TopicInfo]:
        with self._lock:
            self._check()
            return self._broker.list_topics()

    def describe_topic(self, name: str) -> TopicInfo:
        with self._lock:
            self._check()
            return self._broker.describe_topic(name)

    def set_partitions(self, name: str, partitions: int) -> TopicInfo:
        with self._lock:
            self._check()
            return self._broker.set_partitions(name, partitions, now_us=_now_us())

    # -- publishing -------------------------------------------------------------------------

    def publish_nowait(self, topic: str, records: Sequence[Record]) -> tuple[list[str], Any]:
        """Append under the lock; returns the ids and the token still to be made durable."""
        deadline: float | None = None
        with self._lock:
            while True:
                self._check()
                try:
                    result = self._broker.publish(topic, records, now_us=_now_us())
                    break
                except BacklogFull:
                    if self._broker.describe_topic(topic).config.backlog_policy != "block":
                        raise
                    now = time.monotonic()
                    deadline = deadline or now + self._block_timeout
                    if now >= deadline:
                        raise Timeout(f"topic {topic!r} stayed at its backlog limit for "
                                      f"{self._block_timeout:g} s; consume or raise the limit") from None
                    self._wait(min(0.05, deadline - now))
            self._notify()
        if any(map(_deliver_at, records)):
            self._kick.set()  # a delay may be due before the ticker's current deadline
        return result.ids, result.token

    def needs_durable(self, token: Any) -> bool:
        """Whether ``token`` must be synced before its write is confirmed (``always``)."""
        return token is not None and self._broker.needs_sync(token)

    def wait_durable(self, token: Any) -> None:
        self._durable(token)

    def publish(self, topic: str, records: Sequence[Record]) -> list[str]:
        with self._lock:
            if self._closed:
                self._check()
            try:
                result = self._broker.publish(topic, records, now_us=_time_ns() // 1000)
            except BacklogFull:
                result = None  # the waiting path below
            else:
                if self._waiters:
                    self._notify()
        if result is None:
            ids, token = self.publish_nowait(topic, records)
        else:
            ids, token = result.ids, result.token
            if any(map(_deliver_at, records)):
                self._kick.set()  # a delay may be due before the ticker's current deadline
        if token.always and self._broker.needs_sync(token):
            self._broker.sync(token)
        return ids

    # -- groups -----------------------------------------------------------------------------

    def create_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        with self._lock:
            self._check()
            return self._broker.create_group(topic, group, settings, now_us=_now_us())

    def update_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        with self._lock:
            self._check()
            return self._broker.update_group(topic, group, settings, now_us=_now_us())

    def delete_group(self, topic: str, group: str) -> None:
        with self._lock:
            self._check()
            self._broker.delete_group(topic, group)

    def list_groups(self, topic: str) -> list[GroupInfo]:
        with self._lock:
            self._check()
            return self._broker.list_groups(topic)

    def describe_group(self, topic: str, group: str) -> GroupInfo:
        with self._lock:
            self._check()
            return self._broker.describe_group(topic, group)

    def reset_group(self, topic: str, group: str, start: StartPosition) -> None:
        with self._lock:
            self._check()
            token = self._broker.reset_group(topic, group, start, now_us=_now_us())
            self._notify()
        self._durable(token)

    def redrive(self, topic: str, group: str, limit: int | None) -> int:
        with self._lock:
            self._check()
            n = self._broker.redrive(topic, group, limit=limit, now_us=_now_us())
            self._notify()
        return n

    # -- consuming --------------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, settings: GroupSettings | None, prefetch: int) -> str:
        with self._lock:
            self._check()
            return self._broker.subscribe(topic, group, settings, prefetch=prefetch,
                                          now_us=_now_us(), mono_us=_mono_us())

    def receive(self, member: str, max_messages: int, timeout: float) -> list[Delivery]:
        fetch = self._broker.fetch
        with self._lock:
            self._check()
            got = fetch(member, max_messages, now_us=_now_us(), mono_us=_mono_us())
            if got or timeout <= 0:
                if got:
                    self._kick.set()  # new leases: the ticker re-reads its deadline
                return got
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._wait(remaining)
                self._check()
                got = fetch(member, max_messages, now_us=_now_us(), mono_us=_mono_us())
                if got:
                    self._kick.set()
                    return got

    def ack_nowait(self, member: str, ids: Sequence[str]) -> Any:
        with self._lock:
            if self._closed:
                self._check()
            token = self._broker.ack(member, ids, now_us=_time_ns() // 1000,
                                     mono_us=_monotonic_ns() // 1000)
            if self._waiters:
                # An ack can unblock the next message of an ordered partition or key.
                self._notify()
        return token

    def nack_nowait(self, member: str, ids: Sequence[str], delay: float | None) -> Any:
        with self._lock:
            self._check()
            token = self._broker.nack(member, ids, delay, now_us=_now_us(), mono_us=_mono_us())
            self._notify()
        self._kick.set()
        return token

    def reject_nowait(self, member: str, ids: Sequence[str], reason: str) -> Any:
        with self._lock:
            self._check()
            token = self._broker.reject(member, ids, reason, now_us=_now_us(), mono_us=_mono_us())
            self._notify()
        return token

    def ack(self, member: str, ids: Sequence[str]) -> None:
        # ack_nowait, inlined: this is the per-message consume path.
        with self._lock:
            if self._closed:
                self._check()
            token = self._broker.ack(member, ids, now_us=_time_ns() // 1000,
                                     mono_us=_monotonic_ns() // 1000)
            if self._waiters:
                self._notify()
        if token.always and self._broker.needs_sync(token):
            self._broker.sync(token)

    def nack(self, member: str, ids: Sequence[str], delay: float | None) -> None:
        self._durable(self.nack_nowait(member, ids, delay))

    def reject(self, member: str, ids: Sequence[str], reason: str) -> None:
        self._durable(self.reject_nowait(member, ids, reason))

    def extend(self, member: str, ids: Sequence[str], seconds: float) -> None:
        with self._lock:
            self._check()
            self._broker.extend(member, ids, seconds, mono_us=_mono_us())

    def unsubscribe(self, member: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._broker.unsubscribe(member, now_us=_now_us(), mono_us=_mono_us())
            self._notify()
