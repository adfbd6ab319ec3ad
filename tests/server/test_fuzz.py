"""Codec fuzzing against a live server: garbage, truncated and oversized frames.

Each example opens its own connection, optionally completes the handshake, sends hostile bytes
and half-closes. The server must answer with ``Error`` frames or close that connection — never
crash or hang — while a second, well-behaved connection keeps working and the store stays intact.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tidemq
from tidemq import errors
from tidemq import protocol as P
from tidemq.storage import encode_bodies

from .conftest import ServerProcess

HEADER = struct.Struct("<IBBHI")
FRAME_TYPES = [int(t) for t in P.FrameType]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("fuzz")) / "data",
                         args=("--max-frame-bytes", str(1 << 20))).start()
    with tidemq.Client(proc.url) as mq:
        mq.create_topic("kept", partitions=2)
        mq.publish_batch("kept", [b"kept-%d" % i for i in range(50)])
    try:
        yield proc
    finally:
        proc.close()


def _hello() -> bytes:
    return P.encode(P.Hello(request_id=1, versions=[1], client_id="fuzz",
                            max_frame_size=1 << 20))


def _exchange(port: int, payload: bytes, *, handshake: bool) -> list[object]:
    """Send ``payload`` (after a Hello if asked), half-close, and decode all that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((_hello() if handshake else b"") + payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    dec = P.Decoder(1 << 24)
    dec.feed(data)
    return dec.frames()


def _check_answers(frames: list[object], handshake: bool) -> None:
    if handshake:
        assert isinstance(frames[0], P.HelloOk)
        frames = frames[1:]
    for f in frames:
        # Answers to whatever the garbage happened to decode as; errors are typed.
        assert isinstance(f, P.Error | P.Pong | P.Result | P.PublishOk | P.AckOk | P.SubscribeOk
                          | P.Deliver | P.GoAway | P.Ping)
        if isinstance(f, P.Error):
            assert f.code in errors.CATALOGUE


def _healthy(port: int) -> None:
    frames = _exchange(port, P.encode(P.Ping(request_id=7)), handshake=True)
    assert [type(f) for f in frames] == [P.HelloOk, P.Pong]


frame_bytes = st.one_of(
    st.binary(max_size=300),  # pure garbage
    st.builds(  # a well-formed header over a random payload, possibly truncated
        lambda t, rid, payload, cut: (
            HEADER.pack(12 + len(payload), t, 0, 0, rid) + payload)[: len(payload) + 12 - cut],
        st.sampled_from(FRAME_TYPES), st.integers(0, 2**32 - 1), st.binary(max_size=200),
        st.integers(0, 5)),
    st.builds(  # headers that lie: oversized lengths, bad flags, unknown types
        lambda length, t, flags: HEADER.pack(length, t, flags, 0, 1) + b"\0" * 16,
        st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 255)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=frame_bytes, handshake=st.booleans())
def test_hostile_bytes_affect_only_their_connection(live: ServerProcess, payload: bytes,
                                                    handshake: bool) -> None:
    frames = _exchange(live.port, payload, handshake=handshake)
    _check_answers(frames, handshake)
    _healthy(live.port)


def test_oversized_frame_gets_error_and_close(live: ServerProcess) -> None:
    frames = _exchange(live.port, HEADER.pack(2**31, int(P.FrameType.PING), 0, 0, 1),
                       handshake=True)
    assert isinstance(frames[-1], P.Error) and frames[-1].fatal
    assert frames[-1].code == errors.FrameTooLarge.code
    _healthy(live.port)


def test_corrupt_batch_is_refused_and_the_connection_goes_on(live: ServerProcess) -> None:
    batch = bytearray(encode_bodies([b"x" * 10]))
    batch[-1] ^= 0xFF  # breaks the body CRC
    bad = P.encode(P.Publish(request_id=2, topic="kept", partition=0, batch=bytes(batch)))
    ping = P.encode(P.Ping(request_id=3))
    frames = _exchange(live.port, bad + ping, handshake=True)
    assert isinstance(frames[1], P.Error) and not frames[1].fatal and frames[1].request_id == 2
    assert isinstance(frames[2], P.Pong)


def test_no_hello_first_is_fatal(live: ServerProcess) -> None:
    frames = _exchange(live.port, P.encode(P.Ping(request_id=3)), handshake=False)
    assert len(frames) == 1 and isinstance(frames[0], P.Error) and frames[0].fatal


def test_store_intact_after_fuzzing(live: ServerProcess) -> None:
    # Runs last in this module (pytest keeps file order): the data published before is whole.
    with tidemq.Client(live.url) as mq:
        sub = mq.subscribe("kept", "after-fuzz")
        got: list[bytes] = []
        for _ in range(40):
            batch = sub.receive(max_messages=100, timeout=0.2)
            sub.ack(batch)
            got += [m.body for m in batch]
            if len(got) >= 50:
                break
        assert sorted(got) == sorted(b"kept-%d" % i for i in range(50))
        info = mq.describe_topic("kept")
        assert sum(p.end_offset for p in info.partitions) >= 50
    assert live.proc is not None and live.proc.poll() is None
