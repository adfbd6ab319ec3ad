"""The network client's batching, idempotent producer (used by ``_tcp.TcpTransport``).

Each ``publish`` call's records are split by partition (``xxh3_64(key) % partitions``; keyless
records go to the topic's *sticky* partition, which moves on each time a batch is sealed) and
appended to that partition's open batch. A batch is sealed and sent when it reaches
``max_batch_bytes`` or ``linger`` seconds after its first record, whichever comes first — so a
stream of single-message publishes travels as a few large ``Publish`` frames. When nothing is in
flight on the partition the batch is sealed at the end of the current loop iteration instead
(no linger): an idle producer adds no latency, a busy one batches (like Nagle's algorithm).

Idempotence (SPEC §2, Kafka's idempotent producer): the producer has a random 62-bit id; each
partition's batches carry consecutive sequence numbers in their header. A sealed batch keeps its
bytes until the server confirms it; after a reconnect the unconfirmed batches are sent again, byte
for byte, in order, so the broker recognises the ones it already stored and answers with their
original ids. The broker remembers the last ``MAX_IN_FLIGHT`` batches per producer and partition,
so no more than that many are ever unconfirmed on one partition: further records wait in the open
batch (which grows: larger batches under load, as in Kafka).

Every caller gets its own future, resolved with its records' ids once the batch is confirmed at
the topic's durability level, or failed with the server's typed error.

Not thread-safe: lives on the transport's event loop.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import xxhash

from ..errors import InvalidArgument
from ..storage import Record, encode_batch, encode_bodies

__all__ = ["Producer", "SealedBatch", "MAX_IN_FLIGHT"]

MAX_IN_FLIGHT = 5  # = the broker's RECENT_BATCHES: retries beyond it could not be recognised
_I32_MAX = 2**31 - 1
_RECORD_OVERHEAD = 16  # per-record bytes beyond the body, a rough bound for sizing batches

_xxh3 = xxhash.xxh3_64_intdigest
_BODY = attrgetter("body")

# A waiter: (future, first index in the batch, count): the future gets ids[first:first+count].
# (future, index of the first record in the batch, count); count -1: one record whose future
# takes the id itself, not a list (the per-message publish fast path)
Waiter = tuple["asyncio.Future[Any]", int, int]


class _NoCallback:
    """The timer of an open batch due at once while deferred (``Producer.deferred``): none."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


_DUE: Any = _NoCallback()


@dataclass(slots=True)
class SealedBatch:
    """An encoded batch waiting for (or awaiting) its PublishOk. ``payload`` never changes."""

    topic: str
    partition: int
    payload: bytes
    count: int
    waiters: list[Waiter]
    request_id: int = 0  # of the Publish frame that carries it now (changes on resend)


@dataclass(slots=True)
class _Open:
    records: list[Record] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)
    size: int = 0
    timer: asyncio.Handle | None = None
    plain: bool = True  # every record is a bare body: encoded by encode_bodies


@dataclass(slots=True)
class _PartitionState:
    open: _Open = field(default_factory=_Open)
    sealed: deque[SealedBatch] = field(default_factory=deque)  # sealed, not yet sent
    in_flight: deque[SealedBatch] = field(default_factory=deque)  # sent, not confirmed, in order
    next_sequence: int = 0


class Producer:
    """Batches records per (topic, partition) and tracks them until confirmed.

    ``send`` is called with each batch to put on the wire (it sets ``request_id``); it must not
    raise. The owner calls :meth:`confirmed` / :meth:`failed` with answers and
    :meth:`resend_all` after a reconnect.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[SealedBatch], None], *,
                 linger: float = 0.001, max_batch_bytes: int = 1024 * 1024,
                 producer_id: int | None = None) -> None:
        if linger < 0:
            raise InvalidArgument("linger must be >= 0 seconds")
        if max_batch_bytes < 1024:
            raise InvalidArgument("max_batch_bytes must be >= 1024")
        self._loop = loop
        self._send = send
        self.linger = linger
        self.max_batch_bytes = max_batch_bytes
        self.producer_id = producer_id if producer_id is not None else secrets.randbits(62)
        self.epoch = 0
        self._parts: dict[tuple[str, int], _PartitionState] = {}
        self._sticky: dict[str, int] = {}
        self._due: list[tuple[str, int]] = []  # partitions whose batch is sealed "soon"
        self.connected = False  # batches are only sent while connected
        # The transport's blocking caller seals what is due itself (seal_due) before it waits,
        # or has it scheduled (schedule_due): no callback per batch meanwhile.
        self.deferred = False

    # --- adding records ---------------------------------------------------------------------

    def add(self, topic: str, partitions: int, records: Sequence[Record], *,
            plain: bool = False) -> asyncio.Future[list[str]]:
        """Queue ``records`` of ``topic`` (which has ``partitions`` partitions); the future gets
        their ids, in order, once every one of them is confirmed. ``plain``: the caller knows
        every record is a bare body (no key, headers ...), so its batch is encoded as bodies."""
        fut: asyncio.Future[list[str]] = self._loop.create_future()
        if len(records) == 1 or partitions == 1:
            rec = records[0]
            if partitions == 1:
                p = 0
            elif rec.key is not None:
                p = _xxh3(rec.key) % partitions
            else:
                p = self._sticky_partition(topic, partitions)
            self._append(topic, p, records, fut, plain=plain)
            return fut
        # Records spread over several partitions: one sub-future per partition share.
        shares: dict[int, list[int]] = {}
        sticky = self._sticky_partition(topic, partitions)
        for i, rec in enumerate(records):
            p = sticky if rec.key is None else _xxh3(rec.key) % partitions
            shares.setdefault(p, []).append(i)
        if len(shares) == 1:
            self._append(topic, next(iter(shares)), records, fut, plain=plain)
            return fut
        subs: list[tuple[list[int], asyncio.Future[list[str]]]] = []
        for p, idx in shares.items():
            sub: asyncio.Future[list[str]] = self._loop.create_future()
            self._append(topic, p, [records[i] for i in idx], sub, plain=plain)
            subs.append((idx, sub))
        self._loop.create_task(_gather(fut, subs, len(records)))
        return fut

    def add_one(self, topic: str, partitions: int, rec: Record) -> asyncio.Future[str]:
        """Queue one record; the future gets its id. No list, no sub-futures: the per-message
        ``publish`` path costs one future."""
        fut: asyncio.Future[str] = self._loop.create_future()
        if partitions == 1:
            p = 0
        elif rec.key is not None:
            p = _xxh3(rec.key) % partitions
        else:
            p = self._sticky_partition(topic, partitions)
        self._append(topic, p, (rec,), fut, single=True)
        return fut

    def _sticky_partition(self, topic: str, partitions: int) -> int:
        p = self._sticky.get(topic)
        if p is None or p >= partitions:
            p = self._sticky[topic] = secrets.randbelow(partitions)
        return p

    def _append(self, topic: str, partition: int, records: Sequence[Record],
                fut: asyncio.Future[Any], *, single: bool = False, plain: bool = False) -> None:
        st = self._parts.get((topic, partition))
        if st is None:
            st = self._parts[(topic, partition)] = _PartitionState()
        op = st.open
        if not plain:
            op.plain = False
        op.waiters.append((fut, len(op.records), -1 if single else len(records)))
        if len(records) == 1:
            rec = records[0]
            op.records.append(rec)
            op.size += len(rec.body) + _RECORD_OVERHEAD
        else:
            op.records += records
            op.size += sum(map(len, map(_BODY, records))) + _RECORD_OVERHEAD * len(records)
        if op.size >= self.max_batch_bytes or len(records) > 1 and self.linger == 0:
            self._seal(topic, partition, st)
            self._pump(st)
        elif op.timer is None:
            if self.linger == 0 or not st.in_flight:
                # Nothing in flight on this partition: waiting would only add latency. What is
                # published during this loop iteration still shares the batch (or until
                # seal_due(): a blocking caller seals before it waits).
                if self.deferred:
                    op.timer = _DUE
                    self._due.append((topic, partition))
                else:
                    op.timer = self._loop.call_soon(self._on_linger, topic, partition)
            else:
                op.timer = self._loop.call_later(self.linger, self._on_linger, topic, partition)

    def seal_due(self) -> None:
        """Seal and send now the batches queued while deferred (due at the end of this loop
        iteration)."""
        due, self._due = self._due, []
        for topic, partition in due:
            st = self._parts[(topic, partition)]
            if st.open.timer is not None and st.open.records:
                self._on_linger(topic, partition)

    def schedule_due(self) -> None:
        """The batches due that no callback seals (queued while deferred): seal them at the end
        of this loop iteration."""
        due, self._due = self._due, []
        for topic, partition in due:
            op = self._parts[(topic, partition)].open
            if op.timer is _DUE:
                op.timer = self._loop.call_soon(self._on_linger, topic, partition)

    def _on_linger(self, topic: str, partition: int) -> None:
        st = self._parts[(topic, partition)]
        if st.open.timer is not None:
            st.open.timer.cancel()
        st.open.timer = None
        if len(st.in_flight) < MAX_IN_FLIGHT or not self.connected:
            self._seal(topic, partition, st)
            self._pump(st)
        # else: keep filling the open batch; a confirmation seals it (see confirmed()).

    def _seal(self, topic: str, partition: int, st: _PartitionState) -> None:
        op = st.open
        if not op.records:
            return
        if op.timer is not None:
            op.timer.cancel()
        st.open = _Open()
        count = len(op.records)
        if st.next_sequence + count > _I32_MAX:  # sequences are i32: start a new epoch
            self.epoch += 1
            for other in self._parts.values():
                other.next_sequence = 0
        seq = st.next_sequence
        st.next_sequence += count
        try:
            if op.plain:
                payload = encode_bodies(list(map(_BODY, op.records)),
                                        producer_id=self.producer_id,
                                        producer_epoch=self.epoch, base_sequence=seq)
            else:
                payload = encode_batch(op.records, producer_id=self.producer_id,
                                       producer_epoch=self.epoch, base_sequence=seq)
        except Exception as exc:
            # A record the format refuses (the client layer validates first, so rare): fail
            # its callers; the sequence numbers stay consumed, which the broker allows.
            for fut, _, _ in op.waiters:
                if not fut.done():
                    fut.set_exception(exc)
            return
        if topic in self._sticky:  # a keyless stream moves on to the next partition
            self._sticky[topic] += 1
        st.sealed.append(SealedBatch(topic, partition, payload, count, op.waiters))

    def _pump(self, st: _PartitionState) -> None:
        """Send sealed batches while the partition has room in flight."""
        if not self.connected:
            return
        while st.sealed and len(st.in_flight) < MAX_IN_FLIGHT:
            batch = st.sealed.popleft()
            st.in_flight.append(batch)
            self._send(batch)

    # --- answers ----------------------------------------------------------------------------

    def confirmed(self, batch: SealedBatch, ids: list[str]) -> None:
        """The server stored ``batch``; resolve its callers and send what waited for room."""
        self._retire(batch)
        for fut, first, n in batch.waiters:
            if not fut.done():
                if n < 0:
                    fut.set_result(ids[first])
                else:
                    fut.set_result(ids[first:first + n] if n != len(ids) else ids)

    def failed(self, batch: SealedBatch, exc: BaseException) -> None:
        """The server refused ``batch`` (a typed error): fail its callers."""
        self._retire(batch)
        for fut, _, _ in batch.waiters:
            if not fut.done():
                fut.set_exception(exc)

    def _retire(self, batch: SealedBatch) -> None:
        st = self._parts[(batch.topic, batch.partition)]
        try:
            st.in_flight.remove(batch)
        except ValueError:
            return
        if st.open.records and st.open.timer is None:
            self._seal(batch.topic, batch.partition, st)  # the batch that waited for room
        self._pump(st)

    # --- connection changes -----------------------------------------------------------------

    def disconnected(self) -> None:
        """Stop sending; what is in flight stays, to be resent by :meth:`resend_all`."""
        self.connected = False

    def resend_all(self) -> None:
        """After a reconnect: resend every unconfirmed batch, oldest first per partition."""
        self.connected = True
        for (topic, partition), st in self._parts.items():
            for batch in st.in_flight:
                self._send(batch)
            if st.open.records and st.open.timer is None:
                self._seal(topic, partition, st)
            self._pump(st)

    def fail_all(self, exc: BaseException) -> None:
        """Closing without a connection: every waiting caller gets ``exc``."""
        for st in self._parts.values():
            batches = [*st.in_flight, *st.sealed]
            st.in_flight.clear()
            st.sealed.clear()
            if st.open.timer is not None:
                st.open.timer.cancel()
            waiters = [w for b in batches for w in b.waiters] + st.open.waiters
            st.open = _Open()
            for fut, _, _ in waiters:
                if not fut.done():
                    fut.set_exception(exc)

    def flush_now(self) -> None:
        """Seal every open batch now (before closing) and send what fits."""
        for (topic, partition), st in self._parts.items():
            self._seal(topic, partition, st)
            self._pump(st)

    def waiting(self) -> list[asyncio.Future[Any]]:
        """The futures of every caller whose records are not confirmed yet."""
        out: list[asyncio.Future[Any]] = []
        for st in self._parts.values():
            for batch in (*st.in_flight, *st.sealed):
                out += [w[0] for w in batch.waiters if not w[0].done()]
            out += [w[0] for w in st.open.waiters if not w[0].done()]
        return out

    @property
    def pending(self) -> int:
        """Batches not yet confirmed (open ones count as one each)."""
        return sum(len(st.in_flight) + len(st.sealed) + (1 if st.open.records else 0)
                   for st in self._parts.values())


async def _gather(fut: asyncio.Future[list[str]],
                  subs: list[tuple[list[int], asyncio.Future[list[str]]]], n: int) -> None:
    out: list[str] = [""] * n
    try:
        for idx, sub in subs:
            ids = await sub
            for i, mid in zip(idx, ids, strict=True):
                out[i] = mid
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's future
        if not fut.done():
            fut.set_exception(exc)
        return
    if not fut.done():
        fut.set_result(out)
