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
