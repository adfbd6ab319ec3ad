"""Codec throughput of tidemq.protocol: Publish and Deliver frames of 1000 x 100-byte messages.

Run: .venv/bin/python benchmarks/protocol_bench.py [--seconds 1.0]

Measures, in one process, pure codec work (no sockets):
- publish encode / decode / round trip of a Publish frame carrying a 1000-record batch;
- deliver encode / decode / round trip of a Deliver frame of 1000 deliveries (with ids);
- deliver decode + ``deliveries()`` (one value per message, as a client hands them out);
- small control frames (Ack of one range, Ping) per second.
Decoding feeds the stream in 64 KiB chunks, as a socket read would. Prints a table, then one
JSON object per line: {"metric", "value", "unit"}.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from tidemq import protocol as p

N = 1000
BODY = 100
CHUNK = 64 * 1024


def make_batch() -> bytes:
    try:
        from tidemq.storage import encode_bodies

        return bytes(encode_bodies([b"x" * BODY] * N))
    except ImportError:
        # Same size as a plain storage batch (64-byte header, u32 lengths, bodies); the codec
        # carries it verbatim and never looks inside.
        return b"\0" * (64 + 4 * N + BODY * N)


def make_deliver() -> p.Deliver:
    return p.Deliver(
        subscription_id=1,
        ids=[f"orders.1.{i % 4}.{1_000_000 + i}" for i in range(N)],
        partitions=[i % 4 for i in range(N)],
        offsets=list(range(1_000_000, 1_000_000 + N)),
        timestamps_us=[1_700_000_000_000_000 + i for i in range(N)],
        delivery_counts=[1] * N,
        priorities=[0] * N,
        bodies=[bytes([i % 256]) * BODY for i in range(N)],
    )


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls of ``fn`` per second over about ``seconds`` (best of 3 rounds)."""
    fn()
    best = 0.0
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            for _ in range(10):
                fn()
            calls += 10
        best = max(best, calls / elapsed)
    return best


def decode_stream(stream: bytes, expected: int) -> None:
    decoder = p.Decoder()
    got = 0
    for i in range(0, len(stream), CHUNK):
        decoder.feed(stream[i:i + CHUNK])
        got += len(decoder.frames())
    assert got == expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    s = args.seconds

    publish = p.Publish(request_id=7, topic="orders", partition=-1, batch=make_batch())
    deliver = make_deliver()
    frames_per_stream = 16
    publish_stream = p.encode(publish) * frames_per_stream
    deliver_stream = p.encode(deliver) * frames_per_stream
    ack = p.Ack(request_id=9, subscription_id=1, ranges=[(0, 1_000_000, 1_000_999)])
    ack_stream = p.encode(ack) * 1000
    ping_stream = p.encode(p.Ping(request_id=3)) * 1000

    results: list[tuple[str, float, str]] = []
    pub_enc = rate(lambda: p.encode_buffers(publish), s) * N
    pub_dec = rate(lambda: decode_stream(publish_stream, frames_per_stream), s) \
        * frames_per_stream * N
    pub_rt = rate(lambda: decode_stream(p.encode(publish), 1), s) * N
    del_enc = rate(lambda: p.encode_buffers(deliver), s) * N
    del_dec = rate(lambda: decode_stream(deliver_stream, frames_per_stream), s) \
        * frames_per_stream * N
    del_rt = rate(lambda: decode_stream(p.encode(deliver), 1), s) * N

    def deliver_rows() -> None:
        decoder = p.Decoder()
        decoder.feed(p.encode(deliver))
        frame = decoder.next_frame()
        assert isinstance(frame, p.Deliver)
        frame.deliveries()

    del_rows = rate(deliver_rows, s) * N
    ack_rt = rate(lambda: decode_stream(b"".join(p.encode(ack) for _ in range(1000)), 1000),
                  s) * 1000
    ack_dec = rate(lambda: decode_stream(ack_stream, 1000), s) * 1000
    ping_dec = rate(lambda: decode_stream(ping_stream, 1000), s) * 1000

    results += [
        ("protocol_publish_encode", pub_enc, "msgs/s"),
        ("protocol_publish_decode", pub_dec, "msgs/s"),
        ("protocol_publish_roundtrip", pub_rt, "msgs/s"),
        ("protocol_deliver_encode", del_enc, "msgs/s"),
        ("protocol_deliver_decode", del_dec, "msgs/s"),
        ("protocol_deliver_roundtrip", del_rt, "msgs/s"),
        ("protocol_deliver_roundtrip_rows", del_rows, "msgs/s"),
        ("protocol_ack_frame_roundtrip", ack_rt, "frames/s"),
        ("protocol_ack_frame_decode", ack_dec, "frames/s"),
        ("protocol_ping_frame_decode", ping_dec, "frames/s"),
    ]
    print(f"tidemq.protocol codec, {N} x {BODY}-byte messages per Publish/Deliver frame")
    print(f"Publish frame {len(p.encode(publish))} bytes, Deliver frame {len(p.encode(deliver))} bytes")
    for name, value, unit in results:
        print(f"  {name:<34} {value:>16,.0f} {unit}")
    for name, value, unit in results:
        print(json.dumps({"metric": name, "value": round(value), "unit": unit}))


if __name__ == "__main__":
    main()
