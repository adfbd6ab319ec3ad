"""Publisher confirms as the wire carries them: a pipelined batch is confirmed by one
``basic.ack`` with ``multiple`` (as RabbitMQ does), and never a tag that is not yet confirmed."""

from __future__ import annotations

import socket
import struct
import time

from pamqp import body as body_frame
from pamqp import commands as C
from pamqp import frame, header

from .conftest import InProcess, handshake, read_until, unique


def _open(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    handshake(s)
    s.sendall(frame.marshal(C.Channel.Open(), 1))
    read_until(s, C.Channel.OpenOk)
    s.sendall(frame.marshal(C.Confirm.Select(), 1))
    read_until(s, C.Confirm.SelectOk)
    return s


def _publish(routing_key: str, body: bytes) -> bytes:
    return (frame.marshal(C.Basic.Publish(exchange="", routing_key=routing_key), 1)
            + frame.marshal(header.ContentHeader(0, len(body), C.Basic.Properties()), 1)
            + frame.marshal(body_frame.ContentBody(body), 1))


def _confirms(s: socket.socket, want: set[int], done: frozenset[int] = frozenset(),
              timeout: float = 10.0) -> list[object]:
    """Confirm frames until every tag in ``want`` is confirmed (as a client counts them;
    ``done``: the tags confirmed before)."""
    got: list[object] = []
    seen: set[int] = set(done)
    buf = b""
    deadline = time.monotonic() + timeout
    while not want <= seen:
        assert time.monotonic() < deadline, f"confirmed {sorted(seen)}, want {sorted(want)}"
        while len(buf) >= 7 and len(buf) >= struct.unpack(">I", buf[3:7])[0] + 8:
            size = struct.unpack(">I", buf[3:7])[0]
            _, _, f = frame.unmarshal(buf[:size + 8])
            buf = buf[size + 8:]
            if isinstance(f, (C.Basic.Ack, C.Basic.Nack)):
                got.append(f)
                tags = set(range(1, f.delivery_tag + 1)) - seen if f.multiple \
                    else {f.delivery_tag}
                assert tags and tags <= want, f"{f} confirms {sorted(tags)}: not published"
                assert f.delivery_tag not in seen, f"{f}: confirmed twice"
                seen |= tags
        if not want <= seen:
            buf += s.recv(65536)
    return got


def test_a_pipelined_batch_is_confirmed_by_one_multiple_ack(amqp_server: InProcess) -> None:
    q = unique("q")
    with _open(amqp_server.port) as s:
        s.sendall(frame.marshal(C.Queue.Declare(queue=q), 1))
        read_until(s, C.Queue.DeclareOk)
        s.sendall(b"".join(_publish(q, b"m%d" % i) for i in range(20)))  # one write
        acks = _confirms(s, set(range(1, 21)))
    assert all(isinstance(a, C.Basic.Ack) for a in acks)
    assert len(acks) < 20 and any(a.multiple for a in acks)  # type: ignore[attr-defined]


def test_confirms_out_of_order_are_one_frame_each(amqp_server: InProcess) -> None:
    # 2 and 4 route nowhere: confirmed at once, before 1 and 3 are stored; 1, 3 and 5 then
    # one at a time (a multiple ack for 5 would be right, but 1..5 are not in a row when
    # their batch is confirmed) and no ack ever covers a tag that is not yet confirmed.
    q = unique("q")
    with _open(amqp_server.port) as s:
        s.sendall(frame.marshal(C.Queue.Declare(queue=q), 1))
        read_until(s, C.Queue.DeclareOk)
        nowhere = unique("nowhere")
        s.sendall(b"".join(_publish(q if i % 2 else nowhere, b"m%d" % i)
                           for i in range(1, 6)))
        acks = _confirms(s, {1, 2, 3, 4, 5})
        # the bookkeeping caught up: the next batch is one multiple ack again
        s.sendall(b"".join(_publish(q, b"n%d" % i) for i in range(10)))
        later = _confirms(s, set(range(6, 16)), frozenset(range(1, 6)))
    assert [a.delivery_tag for a in acks][:2] == [2, 4]  # type: ignore[attr-defined]
    assert not any(a.multiple for a in acks)  # type: ignore[attr-defined]
    assert len(later) < 10 and later[-1].delivery_tag == 15  # type: ignore[attr-defined]


def _deliveries(s: socket.socket, n: int, timeout: float = 10.0) -> list[int]:
    """Read frames until ``n`` basic.deliver arrived; their delivery tags."""
    tags: list[int] = []
    buf = b""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while len(tags) < n:
        assert time.monotonic() < deadline, f"{len(tags)} of {n} deliveries"
        while len(buf) >= 7 and len(buf) >= struct.unpack(">I", buf[3:7])[0] + 8:
            size = struct.unpack(">I", buf[3:7])[0]
            _, _, f = frame.unmarshal(buf[:size + 8])
            buf = buf[size + 8:]
            if isinstance(f, C.Basic.Deliver):
                tags.append(f.delivery_tag)
        if len(tags) < n:
            buf += s.recv(65536)
    return tags


def test_the_acks_of_one_read_are_one_broker_call_and_survive_a_channel_close(
        amqp_server: InProcess) -> None:
    # A consumer acking each message sends a basic.ack each: those that arrive together are
    # applied together. The channel then closes (its unacked messages are requeued): the
    # acks sent before the close must stay acks.
    broker = amqp_server.server.broker  # type: ignore[union-attr]
    q = unique("q")
    with _open(amqp_server.port) as s:
        s.sendall(frame.marshal(C.Queue.Declare(queue=q), 1))
        read_until(s, C.Queue.DeclareOk)
        s.sendall(b"".join(_publish(q, b"m%d" % i) for i in range(30)))
        _confirms(s, set(range(1, 31)))
        s.sendall(frame.marshal(C.Basic.Qos(prefetch_count=50), 1))
        read_until(s, C.Basic.QosOk)
        s.sendall(frame.marshal(C.Basic.Consume(queue=q, consumer_tag="c"), 1))
        tags = _deliveries(s, 30)
        calls: list[int] = []
        ack = broker.ack

        def counting(member: str, ids: list[str], **kw: int) -> object:
            calls.append(len(ids))
            return ack(member, ids, **kw)

        broker.ack = counting
        try:
            s.sendall(b"".join(frame.marshal(C.Basic.Ack(delivery_tag=t), 1)
                               for t in tags[:20])  # 20 acks in one write, 10 left unacked
                      + frame.marshal(C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 1))
            read_until(s, C.Channel.CloseOk)
        finally:
            del broker.ack
    assert sum(calls) == 20 and len(calls) <= 2, calls  # one per read: not 20
    desc = broker.describe_group(f"amqp.q.{q}", q)
    assert desc.lag == 10, desc  # the 10 unacked are back; the 20 acked are gone
