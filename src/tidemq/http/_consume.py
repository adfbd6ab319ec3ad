"""Receiving and settling over HTTP: one broker member per (topic, group), opaque receipts.

HTTP has no session to hang a subscription on, so the API holds one broker member per (topic,
group) that HTTP clients receive through (created at the first receive, prefetch
:data:`MEMBER_PREFETCH`: at most that many messages leased over HTTP per group at once). A
receive fetches from it — the broker's leases, delivery counts, ordering and ``ack_timeout``
apply as for any member — and answers each message with a **receipt**: the message id and a
per-delivery serial number, signed with a key the process makes at start (HMAC-SHA-256), so a
receipt cannot be forged or moved to another message, and receipts die with the process (as
leases do).

A receipt is **stale** — an explicit error (``StaleLease``, 409) for that receipt, nothing
changed — once its delivery ended: settled, its lease expired (at ``lease_expires_at``), or the
message was delivered again (its new receipt has another serial). Unlike SQS, an old receipt
never settles a newer delivery of the same message.

Long polls: a receive that finds nothing waits (up to ``wait`` s) until the broker says the
group may have ready messages (the server's push pass hands the member's wake-ups here) —
nothing polls. A member that held no lease and served no request for :data:`IDLE_S` s leaves
the group (in ``ordered`` mode an idle member would keep its partitions from others).

Everything runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Final

import msgspec

from ..broker import Delivery, SyncToken
from ..broker._limits import MAX_PREFETCH
from ..broker._names import topic_key
from ..client._common import extend_seconds, nack_delay, reject_reason
from ..errors import ConnectionLost, InvalidArgument, StaleLease, TideMQError, UnknownMessage
from ..server._fronts import Backend

__all__ = ["HttpConsumers", "MEMBER_PREFETCH", "IDLE_S", "MAX_RECEIVE", "MAX_RECEIPTS"]

log = logging.getLogger("tidemq.http")

MEMBER_PREFETCH: Final = MAX_PREFETCH  # messages leased over HTTP per group at once
IDLE_S: Final = 60.0
MAX_RECEIVE: Final = 1000  # messages one receive may ask for
MAX_RECEIPTS: Final = 10_000  # receipts one settle request may name
_MAX_RECEIPT_CHARS: Final = 2048
_TAG: Final = 16
_receipt_decoder = msgspec.msgpack.Decoder(tuple[str, str, str, int])
_receipt_encoder = msgspec.msgpack.Encoder()


class _Held:
    """One delivery leased over HTTP: its serial (in its receipt) and when its lease ends."""

    __slots__ = ("serial", "expires_mono")

    def __init__(self, serial: int, expires_mono: int) -> None:
        self.serial = serial
        self.expires_mono = expires_mono


class _Member:
    __slots__ = ("topic", "group", "member_id", "held", "waiters", "last_used", "timer")

    def __init__(self, topic: str, group: str, member_id: str, now: float) -> None:
        self.topic = topic
        self.group = group
        self.member_id = member_id
        self.held: dict[str, _Held] = {}
        self.waiters: set[asyncio.Future[None]] = set()
        self.last_used = now
        self.timer: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)


class Receipt(msgspec.Struct, frozen=True):
    topic: str
    group: str
    message_id: str
    serial: int


class HttpConsumers:
    """The HTTP API's members and receipts (see the module docstring)."""

    def __init__(self, backend: Backend, *, idle_s: float = IDLE_S) -> None:
        self._b = backend
        self._key = secrets.token_bytes(32)
        self._serials = itertools.count(1)
        self._members: dict[tuple[str, str], _Member] = {}
        self._idle_s = idle_s
        self._closed = False

    # --- receipts ------------------------------------------------------------------------

    def receipt(self, topic: str, group: str, message_id: str, serial: int) -> str:
        payload = _receipt_encoder.encode((topic, group, message_id, serial))
        tag = hmac.new(self._key, payload, hashlib.sha256).digest()[:_TAG]
        return base64.urlsafe_b64encode(payload + tag).rstrip(b"=").decode("ascii")

    def parse_receipt(self, text: object) -> Receipt:
        """The receipt's content; InvalidArgument when it is not one this process made."""
        if not isinstance(text, str) or not 0 < len(text) <= _MAX_RECEIPT_CHARS:
            raise InvalidArgument("a receipt is a string from a receive answer")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise InvalidArgument("malformed receipt (not from a receive answer)") from None
        payload, tag = raw[:-_TAG], raw[-_TAG:]
        good = hmac.new(self._key, payload, hashlib.sha256).digest()[:_TAG]
        if len(raw) <= _TAG or not hmac.compare_digest(tag, good):
            raise InvalidArgument("unknown receipt: not made by this server process (receipts "
                                  "end with a restart, like leases)")
        topic, group, mid, serial = _receipt_decoder.decode(payload)
        return Receipt(topic, group, mid, serial)

    # --- members -------------------------------------------------------------------------

    def _member(self, topic: str, group: str) -> _Member:
        """The HTTP member of (topic, group), joining the group if needed. UnknownTopic /
        UnknownGroup when they do not exist (receiving never creates them)."""
        b = self._b
        if self._closed:
            raise ConnectionLost("the server is shutting down; retry (on another server)")
        info = b.broker.describe_group(topic, group)  # raises for unknown topic or group
        key = (topic_key(info.topic), group)
        m = self._members.get(key)
        if m is None:
            member_id = b.broker.subscribe(info.topic, group, None, prefetch=MEMBER_PREFETCH,
                                           now_us=b.now_us(), mono_us=b.mono_us())
            m = self._members[key] = _Member(info.topic, group, member_id, _now())
            b.external_members[member_id] = m.wake
        return m

    def _drop(self, m: _Member, *, unsubscribe: bool) -> None:
        key = (topic_key(m.topic), m.group)
        if self._members.get(key) is m:
            del self._members[key]
        self._b.external_members.pop(m.member_id, None)
        if m.timer is not None:
            m.timer.cancel()
            m.timer = None
        m.wake()
        if unsubscribe:
            b = self._b
            try:
                b.broker.unsubscribe(m.member_id, now_us=b.now_us(), mono_us=b.mono_us())
            except TideMQError:  # gone already (the group or topic was deleted)
                pass
            b.want_push()

    def forget_topic(self, topic: str) -> None:
        """The topic was deleted: its members went with it."""
        k = topic_key(topic)
        for m in [m for key, m in self._members.items() if key[0] == k]:
            self._drop(m, unsubscribe=False)

    def forget_group(self, topic: str, group: str) -> None:
        m = self._members.get((topic_key(topic), group))
        if m is not None:
            self._drop(m, unsubscribe=False)

    def close(self) -> None:
        """Leave every group (leases released: the messages go to other members at once)."""
        self._closed = True
        for m in list(self._members.values()):
            self._drop(m, unsubscribe=True)

    def _touch(self, m: _Member) -> None:
        m.last_used = _now()
        if m.timer is None:
            m.timer = asyncio.get_running_loop().call_later(self._idle_s, self._check_idle, m)

    def _check_idle(self, m: _Member) -> None:
        """Leave the group once idle: no waiter, no lease held, no request for idle_s."""
        m.timer = None
        mono = self._b.mono_us()
        _prune(m, mono)
        idle_for = _now() - m.last_used
        if m.waiters or m.held or idle_for < self._idle_s:
            wait = self._idle_s - idle_for if idle_for < self._idle_s else self._idle_s
            if m.held:
                last = max(h.expires_mono for h in m.held.values())
                wait = max(wait, (last - mono) / 1e6 + 0.001)
            m.timer = asyncio.get_running_loop().call_later(max(wait, 0.01), self._check_idle, m)
            return
        self._drop(m, unsubscribe=True)

    # --- receive -------------------------------------------------------------------------

    async def receive(self, topic: str, group: str, max_messages: int, wait: float,
                      lease: float | None) -> list[tuple[Delivery, str, float]]:
        """Lease up to ``max_messages``, waiting up to ``wait`` s for the first; returns
        ``(delivery, receipt, lease_expires_at)`` each (epoch seconds)."""
        b = self._b
        if isinstance(max_messages, bool) or not 1 <= max_messages <= MAX_RECEIVE:
            raise InvalidArgument(f"max_messages must be from 1 to {MAX_RECEIVE}, "
                                  f"got {max_messages!r}")
        most = b.config.http_max_wait
        if not 0 <= wait <= most:
            raise InvalidArgument(f"wait must be from 0 to {most:g} seconds (the server's "
                                  f"http_max_wait), got {wait!r}")
        if lease is not None:
            lease = extend_seconds(lease)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            m = self._member(topic, group)
            self._touch(m)
            ack_timeout = b.broker.describe_group(m.topic, group).settings.ack_timeout
            try:
                got = b.broker.fetch(m.member_id, max_messages, now_us=b.now_us(),
                                     mono_us=b.mono_us())
            except UnknownMessage:  # the group was deleted (and maybe made again) meanwhile
                self._drop(m, unsubscribe=False)
                continue
            finally:
                b.want_push()
            left = deadline - loop.time()
            if got or left <= 0 or self._closed or b.stopping():
                break
            fut: asyncio.Future[None] = loop.create_future()
            m.waiters.add(fut)
            try:
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                pass
            finally:
                m.waiters.discard(fut)
        if not got:
            return []
        return self._hand_out(m, got, lease, ack_timeout)

    def _hand_out(self, m: _Member, got: list[Delivery], lease: float | None,
                  ack_timeout: float) -> list[tuple[Delivery, str, float]]:
        b = self._b
        mono, now = b.mono_us(), b.now_us()
        seconds = ack_timeout
        if lease is not None and lease != ack_timeout:
            # A lease other than the group's: renew the leases just given to end then.
            b.broker.extend(m.member_id, [d.id for d in got], lease, now_us=now, mono_us=mono)
            seconds = lease
        expires_mono = mono + int(seconds * 1_000_000)
        expires_at = now / 1e6 + seconds
        if len(m.held) > 2 * MEMBER_PREFETCH:
            _prune(m, mono)
        out = []
        for d in got:
            serial = next(self._serials)
            m.held[d.id] = _Held(serial, expires_mono)
            out.append((d, self.receipt(m.topic, m.group, d.id, serial), expires_at))
        return out

    # --- settle --------------------------------------------------------------------------

    async def settle(self, topic: str, group: str, op: str, receipts: list[str], *,
                     delay: float | None = None, reason: str = "",
                     seconds: float = 0.0) -> list[TideMQError | None]:
        """Ack, nack, reject or extend the deliveries named by ``receipts``: per receipt None
        (done) or the error that applies to it (stale, malformed, refused). Answers after the
        settlements are durable at the topic's level."""
        b = self._b
        if len(receipts) > MAX_RECEIPTS:
            raise InvalidArgument(f"at most {MAX_RECEIPTS} receipts per request, got "
                                  f"{len(receipts)}; split it")
        if op == "nack":
            delay = nack_delay(delay)
        elif op == "reject":
            reason = reject_reason(reason)
        elif op == "extend":
            seconds = extend_seconds(seconds)
        b.broker.describe_group(topic, group)  # UnknownTopic / UnknownGroup first
        m = self._members.get((topic_key(topic), group))
        if m is None:  # no HTTP member: no delivery is held, every receipt is stale
            return [self._refuse(text) for text in receipts]
        self._touch(m)
        results: list[TideMQError | None] = [None] * len(receipts)
        mono = b.mono_us()
        todo: list[tuple[int, str]] = []  # (index, message id)
        seen: set[str] = set()
        for i, text in enumerate(receipts):
            try:
                r = self.parse_receipt(text)
                if topic_key(r.topic) != topic_key(m.topic) or r.group != group:
                    raise InvalidArgument(f"this receipt is of topic {r.topic!r} group "
                                          f"{r.group!r}, not of this route's")
                held = m.held.get(r.message_id)
                if held is None or held.serial != r.serial:
                    raise StaleLease("stale receipt: that delivery was settled, or its message "
                                     "was delivered again (use the newest receipt); nothing "
                                     "changed")
                if held.expires_mono <= mono:
                    raise StaleLease("stale receipt: its lease expired (lease_expires_at); the "
                                     "message will be delivered again; nothing changed")
                if r.message_id in seen:
                    raise InvalidArgument("this receipt is named twice in the request")
                seen.add(r.message_id)
                todo.append((i, r.message_id))
            except TideMQError as exc:
                results[i] = exc
        token = SyncToken()
        if todo:
            token = self._apply(m, op, todo, results, delay, reason, seconds)
        b.want_push()
        if token.entries:
            try:
                await b.durable(token)
            except TideMQError as exc:
                for i, _ in todo:
                    if results[i] is None:
                        results[i] = exc
        return results

    def _refuse(self, text: str) -> TideMQError:
        try:
            self.parse_receipt(text)
        except TideMQError as exc:
            return exc
        return StaleLease("stale receipt: nothing is leased over HTTP for this group now (the "
                          "lease expired, or the group was deleted); nothing changed")

    def _apply(self, m: _Member, op: str, todo: list[tuple[int, str]],
               results: list[TideMQError | None], delay: float | None, reason: str,
               seconds: float) -> SyncToken:
        """One broker call for all; if it refuses (it then changed nothing), one per id, so
        each receipt gets its own answer."""
        call = self._call(m, op, delay, reason, seconds)
        ids = [mid for _, mid in todo]
        try:
            token = call(ids)
        except TideMQError:
            token = SyncToken()
            for i, mid in todo:
                try:
                    token = token.merge(call([mid]))
                except UnknownMessage:
                    results[i] = StaleLease("stale receipt: the group was deleted or changed "
                                            "since; nothing changed")
                except TideMQError as exc:
                    results[i] = exc
        mono = self._b.mono_us()
        for i, mid in todo:
            if results[i] is not None:
                continue
            if op == "extend":
                held = m.held.get(mid)
                if held is not None:
                    held.expires_mono = mono + int(seconds * 1_000_000)
            else:
                m.held.pop(mid, None)
        return token

    def _call(self, m: _Member, op: str, delay: float | None, reason: str,
              seconds: float) -> Callable[[list[str]], SyncToken]:
        b = self._b
        broker, member = b.broker, m.member_id
        if op == "ack":
            return lambda ids: broker.ack(member, ids, now_us=b.now_us(), mono_us=b.mono_us())
        if op == "nack":
            return lambda ids: broker.nack(member, ids, delay, now_us=b.now_us(),
                                           mono_us=b.mono_us())
        if op == "reject":
            return lambda ids: broker.reject(member, ids, reason, now_us=b.now_us(),
                                             mono_us=b.mono_us())
        if op == "extend":
            return lambda ids: broker.extend(member, ids, seconds, now_us=b.now_us(),
                                             mono_us=b.mono_us())
        raise InvalidArgument(f"unknown settlement {op!r}")

    # --- introspection -------------------------------------------------------------------

    def held(self, topic: str, group: str) -> int:
        """Deliveries leased over HTTP for (topic, group) (tests, the admin page)."""
        m = self._members.get((topic_key(topic), group))
        return 0 if m is None else len(m.held)


def _prune(m: _Member, mono: int) -> None:
    """Forget deliveries whose lease expired: their receipts are stale anyway."""
    for mid in [mid for mid, h in m.held.items() if h.expires_mono <= mono]:
        del m.held[mid]


def _now() -> float:
    return asyncio.get_running_loop().time()
