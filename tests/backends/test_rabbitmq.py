"""The ``amqp://`` backend against the machine's RabbitMQ (127.0.0.1:5672, guest/guest).

No mocks: every test connects with a prefix of its own (so exchanges, queues and the metadata
stream never meet another test's or another run's) and deletes everything it declared at the end.
The module is skipped when nothing listens on the port.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("aiormq")

import aiormq  # noqa: E402

from tidemq.backends import Capability, connect_amqp  # noqa: E402
from tidemq.backends._rabbit import RabbitTransport, _HeapReads, quantize_ms  # noqa: E402
from tidemq.backends._rabbit_capabilities import amqp_capabilities  # noqa: E402
from tidemq.backends._rabbit_codec import binding_keys, decode, encode  # noqa: E402
from tidemq.backends._reads import READ_SIZE, heap_reads  # noqa: E402
from tidemq.broker import partition_for_key  # noqa: E402
from tidemq.broker._types import Backoff, GroupSettings, TopicConfig  # noqa: E402
from tidemq.errors import (  # noqa: E402
    Closed,
    ConnectionLost,
    GroupSettingsMismatch,
    InvalidPartitionCount,
    StaleLease,
    TopicExists,
    UnknownMessage,
    UnknownTopic,
    Unsupported,
)
from tidemq.storage import Record  # noqa: E402

HOST = os.environ.get("TIDEMQ_AMQP_HOST", "127.0.0.1")
PORT = int(os.environ.get("TIDEMQ_AMQP_PORT", "5672"))
URL = os.environ.get("TIDEMQ_AMQP_URL", f"amqp://guest:guest@{HOST}:{PORT}/")


def _reachable() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1.0):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not _reachable(), reason=f"no RabbitMQ on {HOST}:{PORT}"),
    pytest.mark.timeout(120),
]


async def _cleanup(transports: list[RabbitTransport]) -> None:
    """Delete every queue and exchange the transports declared, and the metadata stream."""
    conn = await aiormq.connect(URL)
    try:
        for t in transports:
            names = sorted(t.created) + [("queue", t.meta.queue),
                                          ("exchange", t.wait_exchange)]
            for kind, name in names:
                ch = await conn.channel()
                try:
                    if kind == "queue":
                        await ch.queue_delete(name)
                    else:
                        await ch.exchange_delete(name)
                finally:
                    if not ch.is_closed:
                        await ch.close()
    finally:
        await conn.close()


def run(body: Callable[[RabbitTransport], Awaitable[Any]], **options: Any) -> Any:
    """Run ``body(transport)`` on a fresh transport with a unique prefix, then clean up."""

    async def main() -> Any:
        opts: dict[str, Any] = {"prefix": f"t{secrets.token_hex(5)}"}
        opts.update(options)
        t = await connect_amqp(URL, **opts)
        others: list[RabbitTransport] = []
        t.others = others  # type: ignore[attr-defined]
        try:
            return await asyncio.wait_for(body(t), 90)
        finally:
            try:
                await t.close()
                for o in others:
                    await o.close()
            finally:
                await _cleanup([t, *others])

    return asyncio.run(main())


async def drain(t: RabbitTransport, member: str, want: int, timeout: float = 10.0,
                ack: bool = True) -> list[Any]:
    """Receive until ``want`` deliveries (or ``timeout``), acking them unless told not to."""
    got: list[Any] = []
    end = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < end:
        batch = await t.receive(member, want - len(got), 0.5)
        if ack and batch:
            await t.ack(member, [d.id for d in batch])
        got += batch
    if ack:
        await t.flush(member)
    return got


def recs(*bodies: bytes, **fields: Any) -> list[Record]:
    return [Record(b, **fields) for b in bodies]


# -- pure parts ------------------------------------------------------------------------------


def test_capabilities_table_has_the_nats_keys_and_is_in_the_docs() -> None:
    from tidemq.backends import capabilities

    table = amqp_capabilities("3.10.8")
    assert set(table) == set(capabilities("2.9.10"))
    assert all(isinstance(c, Capability) for c in table.values())
    assert table["priority"].support == "unsupported"
    assert table["dedup"].support == "unsupported"
    assert table["mode_ordered"].support == "emulated"
    assert table["routing_filter_multi"].support == "native"
    assert table["redrive"].support == "native"
    assert {c.support for c in amqp_capabilities("3.9.29").values()} == {"unsupported"}
    assert "x-consumer-timeout" in amqp_capabilities("3.12.1")["lease"].how
    doc = (Path(__file__).resolve().parents[2] / "docs" / "backends.md").read_text()
    section = doc[doc.index("## `amqp://`"):]
    for name, cap in table.items():
        assert f"| `{name}` | {cap.support} |" in section, name


def test_codec_round_trip_and_names() -> None:
    rec = Record(b"x", b"\x00k", "a.b", {"h": "v\r\n", "ü": "ö"}, 0, 0, 5_000_000, None)
    body, props = encode(rec, "t@1:0:7", 123)
    assert props["expiration"] == "5000" and props["message_id"] == "t@1:0:7"
    d = decode(body, aiormq.spec.Basic.Properties(**props))
    assert d.record == rec and d.timestamp_us == 123 and d.message_id == "t@1:0:7"
    delayed = Record(b"x", deliver_at_us=10**16, ttl_us=1_000_000)
    assert "expiration" not in encode(delayed, "t@1:0:8", 1)[1]  # it would expire waiting
    plain = decode(b"raw", aiormq.spec.Basic.Properties(headers={"a": "1", "x-death": []}))
    assert plain.record.headers == {"a": "1"} and plain.message_id is None
    assert binding_keys(2, 3, None) == ["2.#"]
    assert binding_keys(0, 1, ["order.*", "#"]) == ["*.order.*", "*.#"]
    assert binding_keys(1, 2, ["", "a.b"]) == ["1", "1.a.b"]  # "": the empty key (exact)
    assert binding_keys(0, 1, [""]) == ["*"]
    assert [quantize_ms(x) for x in (0.0001, 0.25, 1.2345, 61.0)] == [1, 250, 1240, 61000]


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=16), key=st.none() | st.binary(max_size=8),
       rk=st.none() | st.text(max_size=8), headers=st.none() | st.dictionaries(
           st.text(min_size=1, max_size=4), st.text(max_size=4), max_size=2),
       priority=st.integers(0, 9), at=st.integers(0, 1 << 60) | st.just(0),
       ttl=st.integers(0, 1 << 40) | st.just(0), ts=st.integers(0, 1 << 62),
       count=st.integers(0, 5) | st.just(0))
def test_codec_meta_is_the_json_of_the_set_fields(body: bytes, key: bytes | None,
                                                  rk: str | None,
                                                  headers: dict[str, str] | None,
                                                  priority: int, at: int, ttl: int, ts: int,
                                                  count: int) -> None:
    """The meta header is json.dumps of the record's set fields however it is written (a bare
    body's is written out by hand), and it decodes back to the record."""
    import json

    from tidemq.backends._recmeta import record_meta

    rec = Record(body, key, rk, headers, priority, at, ttl, None)
    b, props = encode(rec, "t@1:0:7", ts, count=count)
    meta = {"ts": ts, **record_meta(rec), **({"c": count} if count else {})}
    assert props["headers"]["x-tidemq-meta"] == json.dumps(meta, separators=(",", ":"),
                                                           ensure_ascii=False)
    d = decode(b, aiormq.spec.Basic.Properties(**props))
    assert d.record == Record(body, key, rk, headers or None, priority, at, ttl, None)
    assert d.timestamp_us == ts and d.base_count == count


@settings(max_examples=500, deadline=None)
@given(raw=st.from_regex(r'\{"ts":-?[0-9]{0,21}\}', fullmatch=True) | st.text(max_size=30),
       mid=st.none() | st.text(max_size=8), body=st.binary(max_size=8))
def test_codec_decode_of_a_bare_meta_is_the_general_decode(raw: str, mid: str | None,
                                                           body: bytes) -> None:
    """decode's shortcut for a bare body's meta (the only header) answers what the general
    path answers (taken here by one more, ignored, header) for any header text."""
    def props(headers: dict[str, Any]) -> Any:
        return aiormq.spec.Basic.Properties(headers=headers, message_id=mid)

    assert decode(body, props({"x-tidemq-meta": raw})) == \
        decode(body, props({"x-tidemq-meta": raw, "x-ignored": "1"}))


# -- topics and publishing ---------------------------------------------------------------------


def test_publish_receive_ack_across_partitions() -> None:
    async def body(t: RabbitTransport) -> None:
        info = await t.create_topic("Orders.eu", TopicConfig(partitions=3), False)
        assert [p.partition for p in info.partitions] == [0, 1, 2]
        with pytest.raises(TopicExists):
            await t.create_topic("orders.EU", TopicConfig(partitions=3), False)
        member = await t.subscribe("orders.eu", "billing", None, 100)
        ids: list[str] = []
        for i in range(6):  # keyless: round-robin per publish call
            ids += await t.publish("Orders.eu", recs(f"m{i}".encode(),
                                                     headers={"i": str(i), "nl": "a\r\nb"},
                                                     routing_key="order.created"))
        assert len(set(ids)) == 6
        assert {i.split(":")[1] for i in ids} == {"0", "1", "2"}
        got = await drain(t, member, 6)
        assert sorted(d.body for d in got) == [f"m{i}".encode() for i in range(6)]
        assert {d.id for d in got} == set(ids)
        d0 = next(d for d in got if d.body == b"m0")
        assert d0.headers == {"i": "0", "nl": "a\r\nb"} and d0.routing_key == "order.created"
        assert d0.delivery_count == 1 and d0.timestamp_us > 0
        assert (await t.describe_topic("orders.eu")).groups == ["billing"]
        desc = await t.describe_group("orders.eu", "billing")
        assert desc.lag == 0 and desc.members == [member]
        assert await t.receive(member, 10, 0.3) == []
        with pytest.raises(UnknownMessage):
            await t.ack(member, [ids[0]])  # already acked
        await t.unsubscribe(member)

    run(body)


def test_key_partition_is_xxh3_and_order_per_key() -> None:
    async def body(t: RabbitTransport) -> None:
        await t.create_topic("keys", TopicConfig(partitions=4), False)
        member = await t.subscribe("keys", "g", None, 100)
        for key in (b"user-1", b"user-2", "ключ".encode(), b""):
            ids = await t.publish("keys", recs(b"a", b"b", b"c", key=key))
            assert {int(i.split(":")[1]) for i in ids} == {partition_for_key(key, 4)}
        got = await drain(t, member, 12)
        by_key: dict[bytes | None, list[bytes]] = {}
        for d in got:
            assert d.partition == partition_for_key(d.key or b"", 4)
            by_key.setdefault(d.key, []).append(d.body)
        assert all(v == [b"a", b"b", b"c"] for v in by_key.values()), by_key

    run(body)


def test_unsupported_features_name_feature_backend_and_version() -> None:
    async def body(t: RabbitTransport) -> None:
        await t.create_topic("plain", TopicConfig(), False)
        for rec, feature in ((Record(b"x", priority=5), "priority"),
                             (Record(b"x", dedup_id="d-1"), "dedup_id"),
                             (Record(b"x", routing_key="é" * 126), "routing keys longer")):
            with pytest.raises(Unsupported) as err:
                await t.publish("plain", [rec])
            msg = str(err.value)
            assert feature in msg and "amqp://" in msg and f"RabbitMQ {t.server_version}" in msg
        with pytest.raises(Unsupported, match=r"backlog_limit.*amqp://.*RabbitMQ 3\."):
            await t.create_topic("ret", TopicConfig(backlog_limit=10), False)
        with pytest.raises(UnknownTopic):
            await t.describe_topic("ret")  # nothing of a refused topic exists
        with pytest.raises(Unsupported, match="replay_offset"):
            await t.subscribe("plain", "from3", GroupSettings(start=3), 10)
        with pytest.raises(Unsupported, match="replay_time"):
            await t.subscribe("plain", "t", GroupSettings(start={"timestamp": 1.0}), 10)
        g = await t.subscribe("plain", "g", None, 10)
        with pytest.raises(Unsupported, match="reset_group to 'earliest'"):
            await t.reset_group("plain", "g", "earliest")
        with pytest.raises(Unsupported, match="reset_group"):
            await t.reset_group("plain", "g", {0: 3})
        with pytest.raises(Unsupported, match=r"set_partitions of 'plain\.dlq'.*dead-letter"):
            await t.set_partitions("plain.dlq", 2)
        with pytest.raises(Unsupported, match="max_deliveries"):
            await t.update_group("plain", "g", GroupSettings(max_deliveries=7))
        # The server itself refuses priorities on a quorum queue: what the table says.
        ch = await t.conn.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="x-max-priority"):
            await ch.queue_declare(f"{t.prefix}.prio", durable=True, arguments={
                "x-queue-type": "quorum", "x-max-priority": 5})
        # ignore_priority stores it and delivers FIFO.
        t.ignore_priority = True
        await t.publish("plain", recs(b"p", priority=7))
        [d] = await drain(t, g, 1)
        assert d.priority == 7

    run(body)


def test_group_settings_mismatch_and_queue_arguments_checked_by_the_server() -> None:
    async def body(t: RabbitTransport) -> None:
        await t.subscribe("mm", "g", GroupSettings(ack_timeout=5.0), 10)
        with pytest.raises(GroupSettingsMismatch):
            await t.subscribe("mm", "g", GroupSettings(ack_timeout=6.0), 10)
        await t.subscribe("mm", "g", None, 10)  # left out: the group's settings
        # A queue declared with other arguments (another deployment, a changed setting) is
        # refused by RabbitMQ's equivalence check: nothing silently differs.
        tm = await t.topic("mm")
        q = tm.queue("g", 0)
        args = t.queue_args(tm, "g", GroupSettings(max_deliveries=9))
        with pytest.raises(GroupSettingsMismatch, match="x-delivery-limit"):
            await t.declare_queue(q, args, "groups")

    run(body)


def test_routing_and_header_filters() -> None:
    async def body(t: RabbitTransport) -> None:
        await t.create_topic("ex", TopicConfig(partitions=2), False)
        exact = await t.subscribe("ex", "exact", GroupSettings(
            filter={"routing_key": "order.*"}), 100)
        hashed = await t.subscribe("ex", "hashed", GroupSettings(
            filter={"routing_key": ["order.#"]}), 100)
        mixed = await t.subscribe("ex", "mixed", GroupSettings(
            filter={"routing_key": ["a.#.z", "b.*"], "headers": {"region": ["eu"]}}), 100)
        for rk, region in (("order", "eu"), ("order.created", "us"), ("order.created.x", "eu"),
                           ("a.z", "eu"), ("a.q.r.z", "us"), ("b.c", "eu"), ("x", "eu")):
            await t.publish("ex", recs(rk.encode(), routing_key=rk, headers={"region": region}))
        assert sorted(d.body for d in await drain(t, exact, 1, 3)) == [b"order.created"]
        assert sorted(d.body for d in await drain(t, hashed, 3, 5)) == [
            b"order", b"order.created", b"order.created.x"]
        assert sorted(d.body for d in await drain(t, mixed, 2, 5)) == [b"a.z", b"b.c"]
        # What the bindings refused never reached the queues.
        for g in ("exact", "hashed"):
            assert (await t.describe_group("ex", g)).lag == 0

    run(body)


def test_update_group_rebinds_and_keeps_progress() -> None:
    async def body(t: RabbitTransport) -> None:
        member = await t.subscribe("upd", "g", GroupSettings(ack_timeout=5.0), 10)
        await t.publish("upd", recs(b"a.x", routing_key="a.x"))
        [first] = await drain(t, member, 1)
        assert first.body == b"a.x"
        info = await t.update_group("upd", "g", GroupSettings(ack_timeout=7.0,
                                                              filter={"routing_key": "a.*"}))
        assert info.settings.ack_timeout == 7.0
        for rk in ("b.x", "a.y"):
            await t.publish("upd", recs(rk.encode(), routing_key=rk))
        assert [d.body for d in await drain(t, member, 2, timeout=2)] == [b"a.y"]

    run(body)


def test_messages_published_before_any_group_wait_for_the_first_earliest_group() -> None:
    async def body(t: RabbitTransport) -> None:
        await t.create_topic("early", TopicConfig(partitions=2, retention=3600.0), False)
        ids = []
        for rk in ("a.x", "b.x", "a.y"):
            ids += await t.publish("early", recs(rk.encode(), routing_key=rk, key=rk.encode()))
        latest = await t.subscribe("early", "latest", GroupSettings(start="latest"), 10)
        only_a = await t.subscribe("early", "a", GroupSettings(filter={"routing_key": "a.*"}),
                                   10)
        got = await drain(t, only_a, 2, timeout=3)
        assert sorted(d.body for d in got) == [b"a.x", b"a.y"]
        assert {d.id for d in got} == {ids[0], ids[2]}
        assert all(d.partition == partition_for_key(d.body, 2) for d in got)
        rest = await t.subscribe("early", "rest", None, 10)  # takes what no group took
        assert [d.body for d in await drain(t, rest, 2, timeout=2)] == [b"b.x"]
        assert await t.receive(latest, 10, 0.3) == []
        await t.publish("early", recs(b"new", routing_key="a.z"))
        for m in (latest, only_a, rest):
            assert [d.body for d in await drain(t, m, 1, timeout=3)] == [b"new"]
        ok = await t.passive((await t.topic("early")).unrouted)
        assert ok.message_count == 0

    run(body)


def test_replay_from_a_time_reads_the_publishers_clock_not_the_servers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay from a time starts from the publishers' stamps, not from RabbitMQ's clock
    (which stamps stream chunks): with this client's clock two minutes ahead of the server's
    — as with a server whose clock is behind — it copies exactly what was published from the
    cut on. (Found with the server's Erlang clock 4 s behind: a timestamp x-stream-offset
    started the replay after the messages.)"""
    import tidemq.backends._rabbit as rabbit_module

    ahead_ns = 120 * 1_000_000_000

    class Ahead:
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        @staticmethod
        def time_ns() -> int:
            return time.time_ns() + ahead_ns

    monkeypatch.setattr(rabbit_module, "time", Ahead())

    async def body(t: RabbitTransport) -> None:
        await t.create_topic("log", TopicConfig(partitions=2, log_retention=True,
                                                retention=3600.0), False)
        for i in range(40):
            await t.publish("log", recs(f"{i}".encode(), key=f"k{i % 3}".encode()))
        await asyncio.sleep(0.05)
        cut = (time.time_ns() + ahead_ns) / 1e9
        await asyncio.sleep(0.05)
        for i in range(40, 43):
            await t.publish("log", recs(f"{i}".encode(), key=f"k{i % 3}".encode()))
        m = await t.subscribe("log", "t", GroupSettings(start={"timestamp": cut}), 10)
        got = await drain(t, m, 3)
        assert sorted(d.body for d in got) == [b"40", b"41", b"42"]
        assert await t.receive(m, 10, 0.3) == []

    run(body)


def test_log_retention_topic_replays_from_the_start_or_a_time() -> None:
    async def body(t: RabbitTransport) -> None:
        await t.create_topic("log", TopicConfig(partitions=2, log_retention=True,
                                                retention=3600.0), False)
        first = await t.subscribe("log", "first", None, 10)
        for i in range(4):
            await t.publish("log", recs(f"{i}".encode(), key=b"k", routing_key=f"r.{i}"))
        assert len(await drain(t, first, 4)) == 4  # taken by a group: still in the log
        await asyncio.sleep(1.2)
        cut = time.time()
        await asyncio.sleep(0.05)
        for i in range(4, 6):
            await t.publish("log", recs(f"{i}".encode(), key=b"k", routing_key=f"r.{i}"))
        everything = await t.subscribe("log", "all", None, 10)
        assert [d.body for d in await drain(t, everything, 6)] == [
            f"{i}".encode() for i in range(6)]
        odd = await t.subscribe("log", "odd", GroupSettings(
            filter={"routing_key": ["r.1", "r.3", "r.5"]}), 10)
        assert [d.body for d in await drain(t, odd, 3)] == [b"1", b"3", b"5"]
        by_time = await t.subscribe("log", "t", GroupSettings(start={"timestamp": cut}), 10)
        assert [d.body for d in await drain(t, by_time, 2)] == [b"4", b"5"]
        assert await t.receive(by_time, 10, 0.3) == []
        latest = await t.subscribe("log", "latest", GroupSettings(start="latest"), 10)
        assert await t.receive(latest, 10, 0.3) == []
        # Reset: to a time (purge, then copy from the log), and to latest (purge).
        await t.reset_group("log", "latest", {"timestamp": cut})
        assert [d.body for d in await drain(t, latest, 2)] == [b"4", b"5"]
        await t.unsubscribe(latest)
        await t.publish("log", recs(b"6", key=b"k"))
        await t.reset_group("log", "latest", "latest")
        latest = await t.subscribe("log", "latest", None, 10)
        await t.publish("log", recs(b"7", key=b"k"))
        assert [d.body for d in await drain(t, latest, 2, timeout=2)] == [b"7"]
        with pytest.raises(Unsupported, match="replay_time"):
            await t.subscribe("plain", "t", GroupSettings(start={"timestamp": cut}), 10)

    run(body)


# -- acks, nacks, leases ----------------------------------------------------------------------


def test_nack_redelivers_with_delivery_count_and_delay() -> None:
    async def body(t: RabbitTransport) -> None:
        member = await t.subscribe("nk", "g", None, 10)
        await t.publish("nk", recs(b"x"))
        [d] = await drain(t, member, 1, ack=False)
        await t.nack(member, [d.id], 0)
        [again] = await drain(t, member, 1, ack=False)
        assert again.id == d.id and again.delivery_count == 2
        t0 = time.monotonic()
        await t.nack(member, [again.id], 1.5)  # through a wait queue
        [third] = await drain(t, member, 1, ack=False, timeout=6)
        waited = time.monotonic() - t0
        assert third.id == d.id and third.delivery_count == 3
        assert 1.4 <= waited < 5.0, waited
        await t.nack(member, [third.id], 0)
        [fourth] = await drain(t, member, 1, timeout=3)
        assert fourth.delivery_count == 4

    run(body)


def test_batched_acks_use_one_frame_only_when_it_covers_nothing_else() -> None:
    """``basic.ack(multiple)`` for a batch is used only when no other message up to its
    tag is still held, buffered or being settled; partial and interleaved acks and nacks keep
    the channel alive (an ack of an unknown tag would close it)."""

    async def body(t: RabbitTransport) -> None:
        member = await t.subscribe("acks", "g", None, 20)
        await t.publish("acks", recs(*[f"{i}".encode() for i in range(10)]))
        got = await drain(t, member, 10, ack=False)
        assert [d.body for d in got] == [f"{i}".encode() for i in range(10)]
        m = t.member(member)
        tags = {h.id: h.tag for h in m.held.values()}
        assert m._covers(tags[got[4].id]) is False  # 0-4 are still held
        await t.ack(member, [d.id for d in got[:5]])  # one multiple ack
        await t.ack(member, [got[7].id, got[8].id])  # 5, 6 held below: one ack each
        await t.nack(member, [got[5].id, got[6].id], 0)
        await t.ack(member, [got[9].id])
        await t.flush(member)
        again = await drain(t, member, 2)
        assert sorted(d.body for d in again) == [b"5", b"6"]
        assert all(d.delivery_count == 2 for d in again)
        assert m.ch is not None and not m.ch.is_closed
        assert await t.receive(member, 10, 0.5) == []
        assert (await t.describe_group("acks", "g")).lag == 0

    run(body)


def test_lease_expiry_returns_the_message_and_stale_ack_is_refused() -> None:
    async def body(t: RabbitTransport) -> None:
        a = await t.subscribe("ls", "g", GroupSettings(ack_timeout=1.0), 10)
        await t.publish("ls", recs(b"x"))
        [d] = await drain(t, a, 1, ack=False)
        await t.extend(a, [d.id], 2.5)
        assert await t.receive(a, 1, 1.5) == []  # extended: still ours
        [again] = await drain(t, a, 1, ack=False, timeout=4)  # then returned and redelivered
        assert again.id == d.id and again.delivery_count == 2
        await t.ack(a, [again.id])
        await t.flush(a)
        await t.publish("ls", recs(b"y"))
        [y] = await drain(t, a, 1, ack=False)
        b = await t.subscribe("ls", "g", None, 10)
        await t.unsubscribe(a)  # closing releases at once
        [y2] = await drain(t, b, 1, timeout=3)
        assert y2.id == y.id and y2.delivery_count == 2
        await t.publish("ls", recs(b"z"))
        [z] = await drain(t, b, 1, ack=False)
        await asyncio.sleep(1.3)
        with pytest.raises(StaleLease):
            await t.ack(b, [z.id])
        [z2] = await drain(t, b, 1, timeout=3)
        assert z2.id == z.id

    run(body)


def test_max_deliveries_dead_letters_with_spec_headers_then_redrive() -> None:
    async def body(t: RabbitTransport) -> None:
        await t.create_topic("pay", TopicConfig(partitions=2), False)
        s = GroupSettings(max_deliveries=2, ack_timeout=1.0)
        member = await t.subscribe("pay", "billing", s, 10)
        other = await t.subscribe("pay", "audit", None, 10)
        dlq = await t.subscribe("pay.dlq", "inspect", None, 10)
        [mid] = await t.publish("pay", recs(b"poison", key=b"k", headers={"h": "v"},
                                            routing_key="pay.in"))
        await t.publish("pay", recs(b"fine", key=b"k"))
        assert sorted(d.body for d in await drain(t, other, 2)) == [b"fine", b"poison"]
        got = await drain(t, member, 2, ack=False)
        poison = next(d for d in got if d.body == b"poison")
        await t.ack(member, [d.id for d in got if d.body == b"fine"])
        await t.nack(member, [poison.id], 0)  # delivery 1 failed
        [second] = await drain(t, member, 1, ack=False)
        assert second.delivery_count == 2
        # Delivery 2 (the last) is not settled: its lease runs out, and the delivery after it
        # is dead-lettered by the member instead of handed out.
        assert await t.receive(member, 1, 2.5) == []
        [dead] = await drain(t, dlq, 1)
        assert dead.body == b"poison" and dead.key == b"k" and dead.routing_key == "pay.in"
        h = dead.headers
        assert h["h"] == "v"
        assert h["x-tidemq-origin-topic"] == "pay"
        assert h["x-tidemq-origin-partition"] == str(partition_for_key(b"k", 2))
        assert h["x-tidemq-origin-offset"] == mid.rsplit(":", 1)[1]
        assert h["x-tidemq-origin-group"] == "billing"
        assert h["x-tidemq-origin-delivery-count"] == "2"
        assert h["x-tidemq-origin-reason"] == "max_deliveries"
        assert h["x-tidemq-origin-id"] == mid
        assert dead.id.startswith("pay.dlq@")
        # reject: at once, with the reason.
        await t.publish("pay", recs(b"bad"))
        [bad] = await drain(t, member, 1, ack=False)
        await t.reject(member, [bad.id], "schema")
        [dead2] = await drain(t, dlq, 1)
        assert dead2.headers["x-tidemq-origin-reason"] == "schema"
        assert [d.body for d in await drain(t, other, 1)] == [b"bad"]
        # Redrive: back to billing only; audit does not see them again.
        assert await t.redrive("pay", "billing", None) == 2
        back = await drain(t, member, 2)
        assert sorted(d.body for d in back) == [b"bad", b"poison"]
        assert all(d.delivery_count == 1 and {k for k in d.headers if k.startswith("x-tidemq")}
                   == {"x-tidemq-deaths"} for d in back)  # only the history stays
        assert {d.id for d in back} == {mid, bad.id}
        assert await t.receive(other, 10, 1.0) == []
        assert await t.redrive("pay", "billing", None) == 0

    run(body)


def test_server_dead_letters_after_a_crash_get_spec_headers() -> None:
    """The x-delivery-limit backstop: members that vanish without acking (connection closed)
    until the server gives up; the dead letter RabbitMQ makes is read with SPEC's headers."""

    async def body(t: RabbitTransport) -> None:
        s = GroupSettings(max_deliveries=1)
        await t.create_topic("crash", TopicConfig(), False)
        await t.create_group("crash", "g", s)
        dlq = await t.subscribe("crash.dlq", "inspect", None, 10)
        [mid] = await t.publish("crash", recs(b"boom", headers={"h": "v"}))
        for _ in range(2):  # x-delivery-limit 1: two deliveries, then dead-lettered
            other = await connect_amqp(URL, prefix=t.prefix)
            t.others.append(other)  # type: ignore[attr-defined]
            m = await other.subscribe("crash", "g", None, 10)
            member = other.member(m)
            end = time.monotonic() + 5
            while not any(member.buffers) and time.monotonic() < end:
                await asyncio.sleep(0.05)
            assert any(member.buffers)
            await other.conn.close()  # a crash: nothing acked, nothing nacked
        [dead] = await drain(t, dlq, 1, timeout=5)
        h = dead.headers
        assert dead.body == b"boom" and h["h"] == "v"
        assert h["x-tidemq-origin-id"] == mid and h["x-tidemq-origin-group"] == "g"
        assert h["x-tidemq-origin-reason"] == "max_deliveries"
        assert h["x-tidemq-origin-delivery-count"] == "1"
        assert await t.redrive("crash", "g", None) == 1

    run(body)


def test_ttl_expired_message_is_dead_lettered() -> None:
    async def body(t: RabbitTransport) -> None:
        member = await t.subscribe("ttl", "g", None, 10)
        dlq = await t.subscribe("ttl.dlq", "x", None, 10)
        await t.publish("ttl", recs(b"old", ttl_us=200_000))
        await t.publish("ttl", recs(b"new"))
        await asyncio.sleep(0.5)
        # The server expired "old" in the queue while the member was not looking?  Either
        # the server (x-death, reason expired) or the member dead-letters it: never delivered.
        got = await drain(t, member, 2, timeout=2)
        assert [d.body for d in got] == [b"new"]
        [dead] = await drain(t, dlq, 1)
        assert dead.body == b"old" and dead.headers["x-tidemq-origin-reason"] == "expired"
        assert dead.headers["x-tidemq-origin-group"] == "g"

    run(body)


def test_delayed_publish_is_held_back_until_due() -> None:
    async def body(t: RabbitTransport) -> None:
        member = await t.subscribe("dly", "g", None, 10)
        due = time.time() + 1.5
        await t.publish("dly", recs(b"later", deliver_at_us=int(due * 1e6),
                                    routing_key="r.k"))
        await t.publish("dly", recs(b"now"))
        [first] = await drain(t, member, 1, timeout=1.0)
        assert first.body == b"now"
        [later] = await drain(t, member, 1, timeout=5.0)
        assert later.body == b"later" and time.time() >= due - 0.01
        assert later.delivery_count == 1 and later.routing_key == "r.k"

    run(body)


def test_ordered_single_active_consumer_and_head_of_line() -> None:
    async def body(t: RabbitTransport) -> None:
        await t.create_topic("ord", TopicConfig(partitions=2), False)
        s = GroupSettings(mode="ordered", ack_timeout=30.0)
        # prefetch is split over the partition queues: 6 each, so all 6 can be held.
        a = await t.subscribe("ord", "g", s, 12)
        b = await t.subscribe("ord", "g", None, 12)
        for i in range(6):
            await t.publish("ord", recs(f"{i}".encode(), key=b"k"))
        # Single active consumer: the first member owns the partitions; the second stands by.
        got_a = await drain(t, a, 1, ack=False)
        assert [d.body for d in got_a] == [b"0"]
        assert await t.receive(b, 10, 0.5) == []
        # Head of line: a nacked message comes again before any later one.
        await t.nack(a, [got_a[0].id], 0.5)
        got = await drain(t, a, 6, timeout=10, ack=False)
        assert [d.body for d in got] == [f"{i}".encode() for i in range(6)]
        assert got[0].delivery_count == 2
        await t.ack(a, [d.id for d in got[:3]])
        await t.flush(a)
        # The owner leaves: the standby takes over, in order, from the first unacked.
        await t.unsubscribe(a)
        rest = await drain(t, b, 3, timeout=5)
        assert [d.body for d in rest] == [b"3", b"4", b"5"]

    run(body)


# -- through tidemq.Client (the blocking client and its runner) -----------------------------------


def with_client(body: Callable[[Any], None]) -> None:
    """Run ``body(client)`` on ``tidemq.Client`` over ``amqp://`` with a prefix of its own,
    then delete what its transport declared."""
    import tidemq

    prefix = f"c{secrets.token_hex(5)}"
    sep = "&" if "?" in URL else "?"
    mq = tidemq.Client(f"{URL}{sep}prefix={prefix}")
    transport = mq._ac._t
    assert isinstance(transport, RabbitTransport)
    try:
        body(mq)
    finally:
        mq.close()
        asyncio.run(_cleanup([transport]))


def take(sub: Any, n: int, timeout: float = 5.0) -> list[Any]:
    got: list[Any] = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        got += sub.receive(max_messages=n - len(got), timeout=0.2)
    return got


def test_blocking_client_round_trip_leases_and_late_acks() -> None:
    def body(mq: Any) -> None:
        assert mq.capabilities()["priority"].support == "unsupported"
        mq.create_topic("orders", partitions=3)
        mid = mq.publish("orders", b"1", key="user-1", routing_key="order.created",
                         headers={"region": "eu"})
        sub = mq.subscribe("orders", "billing")  # published before the group: it waited
        [msg] = sub.receive(max_messages=10, timeout=3)
        assert (msg.id, msg.body, msg.key, msg.headers) == (mid, b"1", b"user-1",
                                                            {"region": "eu"})
        msg.ack()
        sub.flush()
        assert mq.describe_group("orders", "billing").lag == 0
        # Lease expiry: the message goes to the other member; the first one's ack is stale,
        # and once the other acked it, a late ack is accepted (idempotent).
        s1 = mq.subscribe("orders", "w", ack_timeout=0.3, prefetch=1)
        mq.publish("orders", b"m")
        [m] = s1.receive(timeout=3)
        s2 = mq.subscribe("orders", "w")
        end = time.monotonic() + 5
        got: list[Any] = []
        while not got and time.monotonic() < end:
            got = s2.receive(timeout=0.2)
        assert [x.body for x in got] == [b"m"] and got[0].delivery_count == 2
        with pytest.raises(StaleLease):
            s1.ack(m.id)
        got[0].ack()
        s1.ack(m.id)

    with_client(body)


def test_blocking_client_ordered_head_of_line_with_prefetch() -> None:
    def body(mq: Any) -> None:
        mq.create_topic("hol")
        mq.publish_batch("hol", [b"m%d" % i for i in range(5)], key="k")
        sub = mq.subscribe("hol", "g", mode="key_ordered", prefetch=100,
                           backoff={"initial": 0.05, "multiplier": 1.0, "max": 0.05})
        seen: list[bytes] = []
        nacked: set[bytes] = set()
        end = time.monotonic() + 10
        while b"m4" not in seen and time.monotonic() < end:
            for msg in sub.receive(max_messages=1, timeout=0.2):
                seen.append(msg.body)
                if msg.body in (b"m1", b"m3") and msg.body not in nacked:
                    nacked.add(msg.body)
                    msg.nack()
                else:
                    msg.ack()
        assert seen == [b"m0", b"m1", b"m1", b"m2", b"m3", b"m3", b"m4"], seen
        # A message taken back behind a failed head cannot be acked before its turn.
        o = mq.subscribe("hol", "o", mode="ordered", backoff={"initial": 5.0,
                                                              "multiplier": 1.0, "max": 5.0})
        mq.publish_batch("hol", [b"a", b"b"], key="k")
        a, b = take(o, 2)
        assert (a.body, b.body) == (b"a", b"b")
        a.nack()
        with pytest.raises(StaleLease):
            b.ack(wait=True)

    with_client(body)


def test_blocking_client_consume_workers_extend_their_leases() -> None:
    def body(mq: Any) -> None:
        import threading

        mq.create_topic("pool")
        lock = threading.Lock()
        seen: list[tuple[bytes, int]] = []

        def handle(msg: Any) -> None:
            time.sleep(0.6 if msg.body == b"slow" else 0.1)  # "slow" outlives its lease
            with lock:
                seen.append((msg.body, msg.delivery_count))

        mq.publish_batch("pool", [b"slow"] + [b"m%d" % i for i in range(5)])
        consumer = mq.consume("pool", "pool", callback=handle, workers=3, ack_timeout=0.3)
        end = time.monotonic() + 10
        while len(seen) < 6 and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)
        consumer.stop()
        assert sorted(b for b, _ in seen) == sorted([b"slow"] + [b"m%d" % i for i in range(5)])
        assert all(c == 1 for _, c in seen), seen

    with_client(body)


def test_blocking_client_ttl_without_member_is_dead_lettered() -> None:
    def body(mq: Any) -> None:
        mq.create_topic("ttl")
        mq.create_group("ttl", "g")  # the group exists, but no member takes it in time
        mq.publish("ttl", b"stale", ttl=0.2)
        mq.publish("ttl", b"fresh", ttl=60)
        time.sleep(0.5)
        sub = mq.subscribe("ttl", "g")
        got = take(sub, 2, timeout=1)
        assert [m.body for m in got] == [b"fresh"]
        sub.ack(got)
        dl = take(mq.subscribe("ttl.dlq", "x"), 1, timeout=3)
        assert [(m.body, m.headers["x-tidemq-origin-reason"]) for m in dl] == [
            (b"stale", "expired")]

    with_client(body)


# -- lifecycle ---------------------------------------------------------------------------------


def test_close_and_reconnect_see_the_same_topics_and_groups() -> None:
    async def body(t: RabbitTransport) -> None:
        await t.create_topic("life", TopicConfig(partitions=2), False)
        await t.create_group("life", "g", GroupSettings(max_deliveries=3,
                                                        backoff=Backoff(0.1, 2, 1)))
        [mid] = await t.publish("life", recs(b"kept"))
        other = await connect_amqp(URL, prefix=t.prefix)
        t.others.append(other)  # type: ignore[attr-defined]
        info = await other.describe_group("life", "g")
        assert info.settings.max_deliveries == 3 and info.lag == 1
        assert [x.name for x in await other.list_topics()] == ["life", "life.dlq"]
        await other.close()
        with pytest.raises(Closed):
            await other.publish("life", recs(b"x"))
        again = await connect_amqp(URL, prefix=t.prefix)
        t.others.append(again)  # type: ignore[attr-defined]
        m = await again.subscribe("life", "g", None, 10)
        [d] = await drain(again, m, 1)
        assert d.id == mid and d.body == b"kept"
        # A lost connection: an ack on it fails (the message comes again), the next call
        # connects again and the member consumes again.
        [x] = await again.publish("life", recs(b"x"))
        [held] = await drain(again, m, 1, ack=False)
        await again.conn.close()
        with pytest.raises(ConnectionLost):
            await again.ack(m, [held.id])
        [y] = await again.publish("life", recs(b"y"))
        assert again.reconnects == 1
        back = await drain(again, m, 2)
        assert sorted((d.id, d.delivery_count) for d in back) == sorted([(x, 2), (y, 1)])
        await again.close()
        with pytest.raises(Closed):
            await again.receive(m, 1, 0.1)

    run(body)


def test_two_clients_creating_one_topic_agree_on_the_winner() -> None:
    async def body(t: RabbitTransport) -> None:
        other = await connect_amqp(URL, prefix=t.prefix)
        t.others.append(other)  # type: ignore[attr-defined]
        results = await asyncio.gather(
            t.create_topic("race", TopicConfig(partitions=2), False),
            other.create_topic("race", TopicConfig(partitions=3), False),
            return_exceptions=True)
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], TopicExists)
        mine, theirs = await t.describe_topic("race"), await other.describe_topic("race")
        assert mine.incarnation == theirs.incarnation == won[0].incarnation
        assert len(mine.partitions) == len(theirs.partitions) == len(won[0].partitions)

    run(body)


def test_several_hosts_the_first_that_answers_is_used() -> None:
    from tidemq.backends._rabbit import host_urls

    assert host_urls("amqp://u:p@h1:1,h2:2/v?heartbeat=5") == [
        "amqp://u:p@h1:1/v?heartbeat=5", "amqp://u:p@h2:2/v?heartbeat=5"]
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # a port nobody listens on
    port = dead.getsockname()[1]
    dead.close()
    creds = URL.split("://", 1)[1].rsplit("@", 1)[0]

    async def body(t: RabbitTransport) -> None:
        two = URL.replace(f"{creds}@", f"{creds}@127.0.0.1:{port},", 1)
        other = await connect_amqp(two, prefix=t.prefix, connect_timeout=2)
        t.others.append(other)  # type: ignore[attr-defined]
        assert len(other.urls) == 2
        await other.create_topic("hosts", TopicConfig(), False)
        assert [x.name for x in await t.list_topics()] == ["hosts"]

    run(body)


def test_set_partitions_adds_queues_and_members_follow() -> None:
    async def body(t: RabbitTransport) -> None:
        a = await t.create_topic("grow", TopicConfig(partitions=1), False)
        member = await t.subscribe("grow", "g", GroupSettings(
            filter={"routing_key": "order.*"}), 10)
        [old] = await t.publish("grow", recs(b"before", routing_key="order.a"))
        with pytest.raises(InvalidPartitionCount):
            await t.set_partitions("grow", 0)
        info = await t.set_partitions("grow", 3)
        assert len(info.partitions) == 3 and info.incarnation == a.incarnation
        ids = await t.publish("grow", recs(b"x", key=b"user-9", routing_key="order.b"))
        await t.publish("grow", recs(b"skip", key=b"user-9", routing_key="invoice.b"))
        assert ids[0].split(":")[1] == str(partition_for_key(b"user-9", 3))
        got = await drain(t, member, 2, timeout=5)
        assert sorted(d.body for d in got) == [b"before", b"x"]
        assert {d.id for d in got} == {old, ids[0]}
        late = await t.subscribe("grow", "late", None, 10)  # takes what no group took
        await t.publish("grow", recs(b"y", key=b"user-9"))
        assert [d.body for d in await drain(t, late, 2)] == [b"skip", b"y"]

    run(body)


def test_delete_topic_and_recreate_is_a_new_incarnation() -> None:
    async def body(t: RabbitTransport) -> None:
        a = await t.create_topic("gone", TopicConfig(), False)
        await t.subscribe("gone", "g", None, 10)
        [old] = await t.publish("gone", recs(b"x"))
        await t.delete_topic("gone")
        with pytest.raises(UnknownTopic):
            await t.describe_topic("gone")
        b = await t.create_topic("gone", TopicConfig(), False)
        assert b.incarnation != a.incarnation and b.groups == []
        [new] = await t.publish("gone", recs(b"y"))
        assert new != old
        assert "gone" in [x.name for x in await t.list_topics()]

    run(body)


# -- the hot path: what the latency figures of benchmarks/backends_overhead.py rest on --------


def test_ack_start_sends_at_once_and_flush_confirms() -> None:
    """``ack_start`` returns None (the ack leaves with the next write, as over tidemq://), so
    a consumer never waits for it before its next receive; flush still waits until the
    channel processed it, and an unknown id still raises at once."""

    async def body(t: RabbitTransport) -> None:
        member = await t.subscribe("acknow", "g", None, 10)
        await t.publish("acknow", recs(b"a", b"b"))
        got = await drain(t, member, 2, ack=False)
        assert t.ack_start(member, [got[0].id]) is None
        assert t.ack_start(member, [got[1].id]) is None
        with pytest.raises(UnknownMessage):
            t.ack_start(member, [got[0].id])  # already acked
        await t.flush(member)
        assert (await t.describe_group("acknow", "g")).lag == 0
        assert await t.receive(member, 10, 0.3) == []

    run(body)


def test_publish_one_fast_path_once_the_topic_is_known() -> None:
    """``publish_one`` (one coroutine, the confirm awaited in the caller's task) once this
    client has used the topic; None (the client takes ``publish``) before, after a delete,
    and for a delayed message. Concurrent ones keep their call order in a partition."""

    async def body(t: RabbitTransport) -> None:
        assert t.publish_one("fast", Record(b"x")) is None  # unknown yet
        member = await t.subscribe("fast", "g", None, 100)
        [first] = await t.publish("fast", recs(b"0"))  # (also opens the confirm channel)
        aw = t.publish_one("fast", Record(b"1"))
        assert aw is not None
        one = await aw
        assert one.startswith("fast@") and one != first
        assert t.publish_one("fast", Record(b"d", deliver_at_us=time.time_ns() // 1000
                                            + 5_000_000)) is None
        ones = [t.publish_one("fast", Record(f"{i}".encode(), key=b"k")) for i in range(2, 30)]
        assert all(o is not None for o in ones)
        ids = await asyncio.gather(*ones)  # type: ignore[arg-type]
        got = await drain(t, member, 30)
        assert {d.id for d in got} == {first, one, *ids}
        keyed = [d.body for d in got if d.body not in (b"0", b"1")]
        assert keyed == [f"{i}".encode() for i in range(2, 30)]  # one partition: in order
        await t.unsubscribe(member)
        await t.delete_topic("fast")
        assert t.publish_one("fast", Record(b"x")) is None

    run(body)


def test_a_shorter_ack_timeout_wakes_the_lease_keeper() -> None:
    """The keeper is woken by a receive only when the new leases may end before the time it
    sleeps until: after ack_timeout is made shorter, they do."""

    async def body(t: RabbitTransport) -> None:
        member = await t.subscribe("keeper", "g", GroupSettings(ack_timeout=30.0), 10)
        await t.publish("keeper", recs(b"long"))
        [long] = await drain(t, member, 1, ack=False)
        await asyncio.sleep(0.1)
        m = t.member(member)
        assert m.keeper_due is not None and m.keeper_due > time.monotonic() + 25
        await t.update_group("keeper", "g", GroupSettings(ack_timeout=1.0))
        await t.publish("keeper", recs(b"short"))
        [short] = await drain(t, member, 1, ack=False)
        assert short.body == b"short"
        again = await drain(t, member, 1, ack=False, timeout=4)  # returned after ~1 s
        assert [d.id for d in again] == [short.id]
        await t.ack(member, [long.id, again[0].id])
        await t.flush(member)

    run(body)


def test_aiormq_socket_reads_come_from_the_heap() -> None:
    # asyncio's default 256 KiB read is an mmap + mremap + munmap per read (_reads.py): an
    # amqp:// connection is made through a transport factory that sizes them down.
    async def main() -> None:
        _, writer = await _HeapReads().create(aiormq.connection.URL(URL))
        try:
            assert writer.transport.max_size == READ_SIZE
        finally:
            writer.close()
        assert not heap_reads(object())  # anything else is left alone
        t = await connect_amqp(URL, prefix=f"t{secrets.token_hex(5)}")
        try:
            assert isinstance(t.conn._transport_factory, _HeapReads)
        finally:
            await t.close()
            await _cleanup([t])

    asyncio.run(main())
