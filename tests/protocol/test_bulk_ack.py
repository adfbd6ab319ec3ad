"""The Ack frame's range cap (``_bulk.MAX_ACK_RANGES``): a frame declaring more ranges is
refused from its header alone, before any column is read; one at the cap decodes."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from tidemq import errors
from tidemq import protocol as p
from tidemq.broker._limits import MAX_PREFETCH
from tidemq.protocol import _bulk
from tidemq.protocol._bulk import MAX_ACK_RANGES


def ack_frame(declared: int, ranges: int, request_id: int = 7) -> bytes:
    """An Ack frame whose header declares ``declared`` ranges and that carries ``ranges``
    single-offset ranges (the worst case: nothing compresses)."""
    payload = b"".join([
        _bulk.ACK.pack(3, declared, 0),
        struct.pack(f"<{ranges}I", *(i % 5 for i in range(ranges))),
        struct.pack(f"<{ranges}q", *(2 * i for i in range(ranges))),
        struct.pack(f"<{ranges}q", *(2 * i for i in range(ranges))),
    ])
    return struct.pack("<IBBHI", 12 + len(payload), p.FrameType.ACK, 0, 0, request_id) + payload


def decode(data: bytes, chunk: int) -> p.Frame:
    decoder = p.Decoder(p.DEFAULT_MAX_FRAME_SIZE)
    for i in range(0, len(data), chunk):
        decoder.feed(data[i:i + chunk])
    frame = decoder.next_frame()
    assert frame is not p.NEED_DATA
    return frame


@pytest.fixture
def no_column_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading any column or the id list fails the test."""

    def forbidden(*_args: Any) -> Any:
        raise AssertionError("the decoder read the frame's contents")

    class _Forbidden:
        decode = staticmethod(forbidden)

    monkeypatch.setattr(_bulk, "_read_column", forbidden)
    monkeypatch.setattr(_bulk, "_IDS_DECODER", _Forbidden())


@pytest.mark.parametrize("chunk", [1 << 20, 4096])
def test_an_ack_over_the_cap_is_refused_before_anything_is_decoded(
    no_column_reads: None, chunk: int,
) -> None:
    data = ack_frame(MAX_ACK_RANGES + 1, MAX_ACK_RANGES + 1)
    with pytest.raises(errors.ProtocolError, match=f"declares {MAX_ACK_RANGES + 1} ranges"):
        decode(data, chunk)


def test_an_ack_declaring_too_many_ranges_is_refused_whatever_its_length(
    no_column_reads: None,
) -> None:
    # The cap is judged first: the frame is not even long enough for what it declares.
    with pytest.raises(errors.ProtocolError, match="at most"):
        decode(ack_frame(2**32 - 1, 1), 1 << 20)


@pytest.mark.parametrize("chunk", [1 << 20, 4096])
def test_an_ack_at_the_cap_decodes(chunk: int) -> None:
    frame = decode(ack_frame(MAX_ACK_RANGES, MAX_ACK_RANGES), chunk)
    assert isinstance(frame, p.Ack)
    assert frame.subscription_id == 3
    assert len(frame.ranges) == MAX_ACK_RANGES
    assert frame.ranges[-1] == ((MAX_ACK_RANGES - 1) % 5, 2 * (MAX_ACK_RANGES - 1),
                                2 * (MAX_ACK_RANGES - 1))


def test_an_ack_at_the_cap_round_trips_through_the_encoder() -> None:
    ranges = [(i % 3, 10 * i, 10 * i + i % 4) for i in range(MAX_ACK_RANGES)]
    frame = p.Ack(request_id=9, subscription_id=1, ranges=ranges, ids=["t@1:d:4"])
    assert decode(b"".join(p.encode_buffers(frame)), 1 << 20) == frame


def test_encoding_an_ack_over_the_cap_fails_in_the_caller() -> None:
    ranges = [(0, 2 * i, 2 * i) for i in range(MAX_ACK_RANGES + 1)]
    with pytest.raises(errors.InvalidArgument, match="split it"):
        p.encode_buffers(p.Ack(request_id=1, subscription_id=1, ranges=ranges))


def test_the_cap_holds_the_acks_of_a_full_prefetch() -> None:
    # A client holds at most MAX_PREFETCH leases per subscription, each at most one range.
    assert MAX_ACK_RANGES >= MAX_PREFETCH
