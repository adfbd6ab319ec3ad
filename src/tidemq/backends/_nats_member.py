"""One group member on NATS: pulls, leases, acks, dead letters and partition ownership.

**Pulling.** One puller task per partition the member reads sends pull requests
(``$JS.API.CONSUMER.MSG.NEXT``, ``expires`` = ``pull_wait``) to a private inbox; nats-py's
reader puts what arrives straight in the member's buffer and wakes a waiting
:meth:`Member.receive` (``_Direct``: no subscription callback task in between). A request
ends when its batch came, at the server's status (408 at its expiry), or ``_EXPIRY_SLACK``
after its expiry without a word (nats-server 2.9 does not always send the 408). Credit: the
buffer, the messages handed out and the messages requested but not yet arrived never exceed
``prefetch`` together (SPEC §3 flow control).
A message that waited in the buffer past its lease is dropped (the server gives it again).

**Admission** (in :meth:`Member.receive`), per message, before the user sees it:
the group filter (client-side for header conditions, several routing patterns, ``#`` before
the last word, and the hidden ``x-tidemq-group`` of redriven messages: rejected messages are
acked), a due time in the future (NAK with the remaining delay), TTL (dead letter
``expired``), and the delivery count from the message metadata beyond ``max_deliveries``
(dead letter ``max_deliveries``).

**Dead letters** are emulated (JetStream only emits an advisory): publish to the dead-letter
topic, wait for its ack, then TERM the original. Crash window: between the two the message comes
back after its lease and is dead-lettered again; the dead letter's ``Nats-Msg-Id``
(``dl:<group>:<message id>``) makes that copy a duplicate within the dead-letter topic's duplicate
window.

**Leases.** JetStream's AckWait is the lease. ``extend`` sends ``+WPI`` (the lease restarts at
``ack_timeout``); an extension longer than that is kept alive by further ``+WPI`` from
:meth:`Member._keeper`, which sleeps until the next one is due.

**Ownership** (ordered and key_ordered): the member registers as ``m.<topic>.<group>.<id>`` in the
owners bucket (entries expire after ``owner_ttl``) and every ``owner_ttl / 3`` refreshes that
entry and its partition claims ``o.<topic>.<group>.<p>`` (compare-and-set on the revision: a
claim lost to expiry is noticed and dropped), gives up claims above its fair share
``ceil(partitions / members)`` once it holds no message of them, and claims free partitions up to
that share (create-if-absent). The consumers of such groups have ``max_ack_pending = 1``, so even
two members that both believe they own a partition (one paused past ``owner_ttl``) never get two
of its messages at once: the order is kept by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from nats.aio.msg import Msg

from ..broker._deadletters import dead_letter_records
from ..broker._filters import compile_filter
from ..broker._groupcore import DeadLetter
from ..broker._ids import make_id, parse_id
from ..broker._limits import GROUP_HEADER
from ..broker._names import dead_letter_name
from ..broker._types import Delivery, GroupSettings
from ..errors import Closed, TideMQError, UnknownMessage
from ._arrival import wait_arrival, wake
from ._nats_codec import META, decode_meta, to_record
from ._nats_groups import ensure_consumer
from ._nats_names import group_token

if TYPE_CHECKING:
    from ._nats import NatsTransport, TopicMeta

__all__ = ["Member"]

log = logging.getLogger("tidemq.nats")

_US: Final = 1_000_000
_MAX_BATCH: Final = 256  # messages asked for in one pull request
_NO_LIMIT: Final = 1 << 62  # pending bytes: a _Direct subscription keeps nothing pending
# How long after its ``expires`` a pull request counts as ended without the server's word. The
# server does not always say (nats-server 2.9 drops an expired request unannounced when a
# message comes for it before its expiry sweep): waiting longer left the partition unread.
_EXPIRY_SLACK: Final = 0.05


def ack_info(reply: str) -> tuple[int, int, int]:
    """(delivery count, stream sequence, timestamp ns) from a JetStream ack subject, in the
    2.9 form ``$JS.ACK.<stream>.<consumer>.<dc>.<sseq>.<cseq>.<ts>.<pending>`` or the newer one
    with domain and account hash after ``$JS.ACK``."""
    t = reply.split(".")
    if len(t) == 9:
        return int(t[4]), int(t[5]), int(t[7])
    if len(t) >= 12:
        return int(t[6]), int(t[7]), int(t[9])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


class _Direct(asyncio.Queue):  # type: ignore[type-arg]
    """A subscription's message queue that keeps nothing: nats-py's reader puts each message
    of the subscription here (``put_nowait``; ``put`` calls it too) and it is handed to
    ``take`` there and then. Empty for every other use (``qsize``, ``join`` in a drain)."""

    def __init__(self, take: Callable[[Msg], None]) -> None:
        super().__init__()
        self._take = take

    def put_nowait(self, item: Msg) -> None:
        self._take(item)


async def _nak(msg: Msg) -> None:
    with contextlib.suppress(Exception):
        await msg.nak()


def _retrieved(fut: asyncio.Future[Any]) -> None:
    # Failures are reported by flush(); mark them seen so asyncio does not log them too.
    if not fut.cancelled():
        fut.exception()


class Held:
    """A message handed to the user and not yet settled."""

    __slots__ = ("msg", "partition", "offset", "count", "record", "deadline", "until")

    def __init__(self, msg: Msg, partition: int, offset: int, count: int, record: Any,
                 deadline: float) -> None:
        self.msg = msg
        self.partition = partition
        self.offset = offset
        self.count = count
        self.record = record
        self.deadline = deadline  # monotonic end of the lease as the server counts it
        self.until = 0.0  # monotonic end of an extension beyond ack_timeout (0: none)


class _Puller:
    """Pull requests for one partition's consumer, into the member's buffer."""

    def __init__(self, member: Member, partition: int) -> None:
        self.member = member
        self.partition = partition
        t = member.t
        self.next_subject = (f"$JS.API.CONSUMER.MSG.NEXT."
                             f"{member.tm.stream(t.prefix, partition)}.{member.consumer}")
        # Each request answers to ``<inbox>.<n>``, so a status that comes for a request this
        # side already counted as ended is told from one that ends the current request.
        self.inbox = t.nc.new_inbox()
        self.requests = 0  # requests sent
        self.reply = ""  # the current request's reply subject
        self.sub: Any = None
        self.task: asyncio.Task[None] | None = None
        self.outstanding = 0  # asked for in the current request, not arrived
        self.done = asyncio.Event()
        self.request_ends = 0.0  # monotonic: no message of ours comes after this
        self.status = ""  # the status that ended the last request ("": none)
        self.stopped = False

    async def start(self) -> None:
        nc = self.member.t.nc
        # Without a callback, and with a queue that hands each message on as nats-py's
        # reader puts it there (_Direct): with a callback, nats-py queues every message for
        # a task of the subscription's that then calls it, one more loop iteration between
        # the socket and a waiting receive (latency) and a task step per message (CPU).
        sub = await nc.subscribe(self.inbox + ".*", pending_bytes_limit=_NO_LIMIT)
        if isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue):
            sub._pending_queue = _Direct(self._take)
        else:  # a nats-py without that queue: its callback
            await sub.unsubscribe()
            sub = await nc.subscribe(self.inbox + ".*", cb=self._on_msg)
        self.sub = sub
        self.task = asyncio.ensure_future(self._run())

    async def _on_msg(self, msg: Msg) -> None:
        self._take(msg)

    def _take(self, msg: Msg) -> None:
        """A message of this puller's inbox (called by nats-py's reader: never raises)."""
        try:
            m = self.member
            status = msg.headers.get("Status") if msg.headers else None
            if status and not msg.reply:
                # 100: an idle heartbeat. Anything else ends its request, unless that one
                # ended here already, at its expiry (a status comes on its request's reply
                # subject; a message on its own).
                if status != "100" and msg.subject == self.reply:
                    m.give_back(self.outstanding)
                    self.outstanding = 0
                    self.status = status
                    self.done.set()
                return
            if self.outstanding > 0:
                self.outstanding -= 1
                m.reserved -= 1
            if self.outstanding == 0:
                self.done.set()
            if self.stopped or m.closed:
                m.t.spawn(_nak(msg))
                return
            m.arrive(self.partition, msg)
        except Exception:  # never into nats-py's reader
            log.exception("pull subscription %s: a message could not be taken", self.inbox)

    async def _run(self) -> None:
        m = self.member
        cap = 1 if m.settings.mode != "shared" else _MAX_BATCH
        wait = m.t.pull_wait
        body_expires = int(wait * 1e9)
        while not self.stopped:
            k = await m.reserve(cap)
            if self.stopped:
                m.give_back(k)
                return
            self.outstanding = k
            self.status = ""
            self.done.clear()
            self.requests += 1
            self.reply = f"{self.inbox}.{self.requests}"
            self.request_ends = time.monotonic() + wait + _EXPIRY_SLACK
            try:
                await m.t.nc.publish(self.next_subject, json.dumps(
                    {"batch": k, "expires": body_expires}).encode(), reply=self.reply)
                await asyncio.wait_for(self.done.wait(), wait + _EXPIRY_SLACK)
            except TimeoutError:
                pass
            except Exception as exc:  # disconnected: the client reconnects
                log.debug("pull request for %s failed: %r", self.next_subject, exc)
                await asyncio.sleep(min(wait, 0.25))
            if self.outstanding:
                m.give_back(self.outstanding)
                self.outstanding = 0
            if self.status not in ("", "408"):
                # 409 (consumer deleted, too many waiting requests) or another refusal: the
                # next request would be refused at once too, so pause instead of spinning.
                log.debug("pull request for %s ended with status %s", self.next_subject,
                          self.status)
                await asyncio.sleep(min(wait, 0.5))

    async def stop(self) -> None:
        """Stop asking; the subscription stays until the last request has ended, NAKing
        stragglers, then goes (in the background)."""
        self.stopped = True
        if self.task is not None:
            self.task.cancel()
        linger = max(0.0, self.request_ends - time.monotonic())

        async def finish() -> None:
            if linger:
                await asyncio.sleep(linger)
            if self.sub is not None:
                with contextlib.suppress(Exception):
                    await self.sub.unsubscribe()

        self.member.t.spawn(finish())


class Member:
    """A subscription of one group on one client (see the module docstring)."""

    def __init__(self, transport: NatsTransport, tm: TopicMeta, group: str,
                 settings: GroupSettings, prefetch: int, member_id: str) -> None:
        self.t = transport
        self.tm = tm
        self.group = group
        self.settings = settings
        self.prefetch = prefetch
        self.id = member_id
        self.consumer = group_token(group)
        self.filter = compile_filter(settings.filter, group=group)
        self.dlq = dead_letter_name(tm.name, settings.dead_letter_topic)
        self.key = f"m.{tm.token}.{self.consumer}.{member_id.rsplit('#', 1)[1]}"
        self.buffer: deque[tuple[int, Msg, float]] = deque()
        self.held: dict[str, Held] = {}
        self.late: dict[str, Held] = {}  # leases that ran out here: a late ack is still sent
        # (partition, stream seq) -> delivery count of messages this member nacked: a floor
        # for the count the server reports (nats-server 2.9.10 sometimes says 1 again for a
        # redelivery after a NAK with delay).
        self.nacked: dict[tuple[int, int], int] = {}
        # (partition, stream seq) of messages acked here, recently: a redelivery of one that
        # was already on its way (its lease ran out while the ack was held up, e.g. during a
        # leader election) is acked again, not handed out a second time.
        self.acked: dict[tuple[int, int], None] = {}
        self.pullers: dict[int, _Puller] = {}
        self.owned: dict[int, int] = {}  # ordered modes: partition -> claim revision
        self.reserved = 0
        self.credit = asyncio.Event()
        self.waiter: asyncio.Future[None] | None = None  # a receive waiting for an arrival
        self.wake_keeper = asyncio.Event()
        self.acks: list[asyncio.Future[Any]] = []
        self.closed = False
        self.tasks: list[asyncio.Task[Any]] = []

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self._beat()
        self.tasks.append(asyncio.ensure_future(self._heartbeat()))
        self.tasks.append(asyncio.ensure_future(self._keeper()))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Wait for them to end: a blocking Client closes its loop right after, and a task
        # still cancelling then is destroyed pending (asyncio logs it at exit). A cancel can
        # be lost: Python 3.11's wait_for (nats-py's request) returns the answer instead of
        # raising CancelledError when both come in one iteration, and the heartbeat went on
        # for ever (close() hung; seen in benchmarks/backends_overhead.py). So cancel again
        # until they are done; the loops also stop at ``closed``.
        pending = list(self.tasks)
        while pending:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.05)
            pending = [task for task in pending if not task.done()]
        self.tasks.clear()
        for p in list(self.pullers):
            await self._stop_puller(p)
        # Closing releases the leases at once (SPEC §3).
        for h in list(self.held.values()):
            with contextlib.suppress(Exception):
                await h.msg.nak()
        self.held.clear()
        while self.buffer:
            _, msg, _ = self.buffer.popleft()
            with contextlib.suppress(Exception):
                await msg.nak()
        with contextlib.suppress(Exception):
            await self.flush()
        with contextlib.suppress(TideMQError):
            for p, rev in list(self.owned.items()):
                await self.t.owners.delete(self._claim(p), last=rev)
            await self.t.owners.forget(self.key)
        self.owned.clear()

    def settings_changed(self, settings: GroupSettings) -> None:
        self.settings = settings
        self.filter = compile_filter(settings.filter, group=self.group)
        self.dlq = dead_letter_name(self.tm.name, settings.dead_letter_topic)

    def _claim(self, p: int) -> str:
        return f"o.{self.tm.token}.{self.consumer}.{p}"

    async def _heartbeat(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.t.owner_ttl / 3)
            if self.closed:
                return
            try:
                await self._beat()
            except TideMQError as exc:
                log.warning("member %s: refresh failed (%s); retrying", self.id, exc.message)
            except Exception as exc:  # never let the refresher die
                log.warning("member %s: refresh failed (%r); retrying", self.id, exc)

    async def _beat(self) -> None:
        """Register, follow partition growth, and (ordered modes) claim a fair share."""
        t = self.t
        await t.owners.put(self.key, json.dumps({"member": self.id}).encode())
        tm = await t.topic(self.tm.name)
        if tm.incarnation == self.tm.incarnation and tm.partitions > self.tm.partitions:
            for p in range(self.tm.partitions, tm.partitions):
                await ensure_consumer(t, tm, self.group, self.settings, p, new_partition=True)
            self.tm = tm
        n = self.tm.partitions
        if self.settings.mode == "shared":
            for p in range(n):
                if p not in self.pullers:
                    await self._start_puller(p)
            return
        members = await t.owners.keys(f"m.{self.tm.token}.{self.consumer}")
        share = math.ceil(n / max(1, len(members)))
        for p, rev in list(self.owned.items()):
            new = await t.owners.put(self._claim(p), self.id.encode(), last=rev)
            if new is None:
                log.info("member %s lost partition %d", self.id, p)
                del self.owned[p]
                await self._stop_puller(p)
            else:
                self.owned[p] = new
        for p in sorted(self.owned, reverse=True):
            if len(self.owned) <= share:
                break
            if any(h.partition == p for h in self.held.values()) \
                    or any(b[0] == p for b in self.buffer):
                continue
            await self._stop_puller(p)
            await t.owners.delete(self._claim(p), last=self.owned.pop(p))
        for p in range(n):
            if len(self.owned) >= share:
                break
            if p in self.owned:
                continue
            claim = await t.owners.create(self._claim(p), self.id.encode())
            if claim is not None:
                self.owned[p] = claim
                await self._start_puller(p)

    async def _start_puller(self, p: int) -> None:
        if p in self.pullers or self.closed:
            return
        puller = _Puller(self, p)
        self.pullers[p] = puller
        await puller.start()

    async def _stop_puller(self, p: int) -> None:
        puller = self.pullers.pop(p, None)
        if puller is not None:
            await puller.stop()

    # -- credit -----------------------------------------------------------------------------

    def free(self) -> int:
        return self.prefetch - len(self.buffer) - len(self.held) - self.reserved

    async def reserve(self, cap: int) -> int:
        """Take up to ``cap`` credits, waiting until there is at least one."""
        while True:
            f = self.free()
            if f > 0:
                k = min(f, cap, max(1, math.ceil(self.prefetch / max(1, len(self.pullers)))))
                self.reserved += k
                return k
            self.credit.clear()
            await self.credit.wait()

    def give_back(self, n: int) -> None:
        if n:
            self.reserved = max(0, self.reserved - n)
            self.credit.set()

    def arrive(self, partition: int, msg: Msg) -> None:
        self.buffer.append((partition, msg, time.monotonic()))
        wake(self.waiter)

    def _freed(self) -> None:
        self.credit.set()

    # -- receiving --------------------------------------------------------------------------

    def _check(self) -> None:
        if self.closed:
            raise Closed("this subscription is closed")

    def _expire(self, now: float) -> None:
        gone = [mid for mid, h in self.held.items() if h.deadline <= now and not h.until]
        for mid in gone:
            self.late[mid] = self.held.pop(mid)
        if len(self.late) > 4 * self.prefetch:
            for mid in list(self.late)[: len(self.late) - 2 * self.prefetch]:
                del self.late[mid]
        if gone:
            self._freed()

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        self._check()
        deadline = time.monotonic() + timeout
        out: list[Delivery] = []
        while True:
            now = time.monotonic()
            self._expire(now)
            while self.buffer and len(out) < max_messages:
                p, msg, arrived = self.buffer.popleft()
                d = await self._admit(p, msg, arrived)
                if d is not None:
                    out.append(d)
                else:
                    self._freed()
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            await wait_arrival(self, self.t.loop, remaining)
            self._check()

    async def _admit(self, p: int, msg: Msg, arrived: float) -> Delivery | None:
        s = self.settings
        now = time.monotonic()
        if arrived + s.ack_timeout <= now:
            return None  # its lease ran out in the buffer: the server delivers it again
        try:
            raw_count, seq, ts_ns = ack_info(msg.reply)
        except ValueError:
            return None
        headers = msg.headers or {}
        dec = decode_meta(headers.get(META))
        rec = to_record(msg.data, dec)
        offset = seq - 1
        mid = make_id(self.tm.name, self.tm.incarnation, p, offset)
        user_headers = dec.headers
        if (not self.filter.trivial or GROUP_HEADER in user_headers) \
                and not self.filter.matches(dec.routing_key, user_headers):
            await msg.ack()  # filtered out: as if acknowledged (SPEC §5)
            return None
        now_us = time.time_ns() // 1000
        ts_us = ts_ns // 1000
        early = 0
        if dec.deliver_at_us:
            if dec.deliver_at_us > now_us:
                await msg.nak(delay=(dec.deliver_at_us - now_us) / _US)
                return None
            early = 1 if dec.deliver_at_us > ts_us and raw_count > 1 else 0
        if raw_count > 1 and (p, seq) in self.acked:
            await msg.ack()
            return None
        self.acked.pop((p, seq), None)  # a first delivery (a replay after a reset) is new
        count = max(1, raw_count - early, self.nacked.pop((p, seq), 0) + 1)
        ttl = s.ttl_us(dec.ttl_us)
        if ttl and now_us > max(ts_us, dec.deliver_at_us) + ttl:
            await self._dead_letter(msg, p, offset, rec, max(0, count - 1), "expired")
            return None
        if count > s.max_deliveries:
            await self._dead_letter(msg, p, offset, rec, count - 1, "max_deliveries")
            return None
        self.held[mid] = Held(msg, p, offset, count, rec, arrived + s.ack_timeout)
        shown = user_headers
        if GROUP_HEADER in shown:
            shown = {k: v for k, v in shown.items() if k != GROUP_HEADER}
        return Delivery(mid, self.tm.name, p, offset, ts_us, rec.body, dec.key, dec.routing_key,
                        shown, dec.priority, count)

    async def _dead_letter(self, msg: Msg, p: int, offset: int, rec: Any, count: int,
                           reason: str) -> None:
        """Publish the dead letter, then TERM the original (see the module docstring)."""
        mid = make_id(self.tm.name, self.tm.incarnation, p, offset)
        letter = dead_letter_records(self.tm.name, self.group,
                                     [DeadLetter(rec, p, offset, count, reason)], [mid],
                                     time.time_ns() // 1000,
                                     self.settings.dead_letter_routing_key)[0]
        await self.t.publish_dead_letter(self.dlq, self.tm, letter,
                                         f"dl:{self.consumer}:{mid}")
        await msg.term()

    # -- settling ---------------------------------------------------------------------------

    def _take(self, ids: Sequence[str]) -> list[Held]:
        """The held messages named by ``ids`` (removed); UnknownMessage if one is not ours."""
        self._check()
        out = []
        missing = None
        for mid in ids:
            h = self.held.pop(mid, None) or self.late.pop(mid, None)
            if h is None:
                parse_id(mid)  # a malformed id raises UnknownMessage itself
                missing = mid
                continue
            out.append(h)
        if out:
            self._freed()
        if missing is not None:
            raise UnknownMessage(f"message {missing!r} is not held by this subscription "
                                 "(already settled, or its lease ended)")
        return out

    def ack(self, ids: Sequence[str]) -> asyncio.Future[None]:
        """Send the acks now (raising UnknownMessage at once for an id not held) and return a
        future of the server's confirmation (double ack); :meth:`flush` waits for all of them
        and raises the first failure."""
        held = self._take(ids)
        acked = self.acked
        for h in held:
            acked[(h.partition, h.offset + 1)] = None
        while len(acked) > 8 * self.prefetch + 1000:
            del acked[next(iter(acked))]
        confirm = asyncio.ensure_future(self._confirm([h.msg for h in held]), loop=self.t.loop)
        confirm.add_done_callback(_retrieved)
        self.acks.append(confirm)
        if len(self.acks) > 64:
            self.acks = [a for a in self.acks if not a.done() or a.exception() is not None]
        return confirm

    async def _confirm(self, msgs: list[Msg]) -> None:
        timeout = self.t.js.timeout

        async def one(m: Msg) -> None:
            for attempt in range(3):
                try:
                    await m.ack_sync(timeout=timeout)
                    return
                except Exception as exc:
                    if attempt == 2:
                        raise TideMQError(
                            f"an ack was not confirmed by the NATS server ({exc!r}); the "
                            "message may be delivered again") from None
        if len(msgs) == 1:  # the common case at low rates: no task for one request
            await one(msgs[0])
        else:
            await asyncio.gather(*map(one, msgs))

    async def flush(self) -> None:
        acks, self.acks = self.acks, []
        first: BaseException | None = None
        for a in acks:
            try:
                await a
            except TideMQError as exc:
                first = first or exc
        if first is not None:
            raise first

    async def nack(self, ids: Sequence[str], delay: float | None) -> None:
        for h in self._take(ids):
            if h.count >= self.settings.max_deliveries:
                await self._dead_letter(h.msg, h.partition, h.offset, h.record, h.count,
                                        "max_deliveries")
                continue
            d = self.settings.backoff.delay(h.count) if delay is None else delay
            self.nacked[(h.partition, h.offset + 1)] = h.count
            if len(self.nacked) > 4 * self.prefetch + 1000:
                del self.nacked[next(iter(self.nacked))]
            await h.msg.nak(delay=d if d > 0 else None)

    async def reject(self, ids: Sequence[str], reason: str) -> None:
        for h in self._take(ids):
            await self._dead_letter(h.msg, h.partition, h.offset, h.record, h.count, reason)

    async def extend(self, ids: Sequence[str], seconds: float) -> None:
        self._check()
        now = time.monotonic()
        lease = self.settings.ack_timeout
        for mid in ids:
            h = self.held.get(mid)
            if h is None:
                parse_id(mid)
                raise UnknownMessage(f"message {mid!r} is not held by this subscription")
            await h.msg.in_progress()
            h.deadline = now + lease
            h.until = now + seconds if seconds > lease else 0.0
        self.wake_keeper.set()

    async def _keeper(self) -> None:
        """Send +WPI for extensions longer than ack_timeout, a third of a lease before it
        would end; sleeps until the next one is due."""
        lease = self.settings.ack_timeout
        while not self.closed:
            now = time.monotonic()
            due = None
            for h in list(self.held.values()):
                if not h.until:
                    continue
                if h.until <= h.deadline:
                    h.until = 0.0
                    continue
                at = h.deadline - lease / 3
                if at <= now:
                    with contextlib.suppress(Exception):
                        await h.msg.in_progress()
                    h.deadline = now + lease
                    at = h.deadline - lease / 3
                due = at if due is None else min(due, at)
            self.wake_keeper.clear()
            wait = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self.wake_keeper.wait(), wait)
