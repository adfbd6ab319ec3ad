"""``deliver_frame`` / ``deliver_frames`` build the same ``Deliver`` frames as a plain
per-delivery transposition (the reference below), whatever mix of optional fields, delay-store
partitions and frame limits the deliveries have."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tidemq import protocol as P
from tidemq.broker import DELAY_PARTITION, Delivery
from tidemq.protocol import WIRE_DELAY_PARTITION
from tidemq.server._push import deliver_frame, deliver_frames


def reference(sub_id: int, ds: list[Delivery]) -> P.Deliver:
    n = len(ds)
    keys = [d.key for d in ds]
    rks = [d.routing_key for d in ds]
    hdrs = [d.headers for d in ds]
    return P.Deliver(
        subscription_id=sub_id, ids=[d.id for d in ds],
        partitions=[WIRE_DELAY_PARTITION if d.partition == DELAY_PARTITION else d.partition
                    for d in ds],
        offsets=[d.offset for d in ds], timestamps_us=[d.timestamp_us for d in ds],
        delivery_counts=[d.delivery_count for d in ds], priorities=[d.priority for d in ds],
        bodies=[d.body for d in ds],
        keys=keys if keys.count(None) != n else None,
        routing_keys=rks if rks.count(None) != n else None,
        headers=[h or None for h in hdrs] if any(hdrs) else None,
    )


@st.composite
def deliveries(draw: st.DrawFn) -> list[Delivery]:
    n = draw(st.integers(1, 12))
    extras = draw(st.booleans())
    out = []
    for i in range(n):
        delayed = draw(st.booleans()) and draw(st.booleans())
        kw: dict[str, Any] = {}
        if extras:
            kw = {"key": draw(st.none() | st.binary(max_size=5)),
                  "routing_key": draw(st.none() | st.text(max_size=5)),
                  "headers": draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3),
                                                  max_size=2))}
        out.append(Delivery(
            id=f"t@1:{'d' if delayed else 0}:{i}", topic="t",
            partition=DELAY_PARTITION if delayed else draw(st.integers(0, 3)),
            offset=draw(st.integers(0, 2**40)), timestamp_us=draw(st.integers(0, 2**60)),
            body=draw(st.binary(max_size=40)), priority=draw(st.integers(0, 9)),
            delivery_count=draw(st.integers(1, 5)), **kw))
    return out


@settings(max_examples=200, deadline=None)
@given(deliveries(), st.sampled_from([P.MIN_MAX_FRAME_SIZE, 16 << 20]))
def test_frames_match_the_reference(ds: list[Delivery], limit: int) -> None:
    assert deliver_frame(5, ds) == reference(5, ds)
    frames, too_large = deliver_frames(5, ds, limit)
    assert too_large == []
    assert frames == [reference(5, ds)]
    # and they survive the codec unchanged
    for f in frames:
        d = P.Decoder(max_frame_size=limit)
        d.feed(P.encode(f, max_frame_size=limit))
        assert d.next_frame() == f
