"""Every frame survives encode -> decode, whole, split at any byte and in random sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemq import errors
from tidemq import protocol as p

from .protocol_strategies import ANY_FRAME, FRAME_STRATEGIES

SAMPLES: list[p.FrameBase] = [
    p.Hello(request_id=1, versions=[1, 2], client_id="c-1", client_name="tests",
            max_frame_size=1 << 20, heartbeat_ms=5000, auth_mechanism="token", auth_data=b"\x00k"),
    p.HelloOk(request_id=1, version=1, server_name="tide", max_frame_size=1 << 20, heartbeat_ms=500),
    p.HelloOk(request_id=1, version=1, server_name="tide", max_frame_size=1 << 20, heartbeat_ms=0,
              user="alice", auth_data=b"v=abc"),
    p.AuthChallenge(request_id=1, data=b"r=nonce,s=salt,i=4096"),
    p.AuthResponse(request_id=1, data=b"c=biws,r=nonce,p=proof"),
    p.Ping(request_id=7),
    p.Pong(request_id=7),
    p.Error(request_id=9, code=errors.UnknownTopic.code, message="no topic 'x'", fatal=False),
    p.GoAway(code=0, message="shutting down"),
    p.Result(request_id=2, value={"topics": [{"name": "a", "partitions": 3}], "n": None}),
    p.CreateTopic(request_id=3, name="orders", partitions=3, config={"durability": "always"}),
    p.DeleteTopic(request_id=4, name="orders"),
    p.ListTopics(request_id=5),
    p.DescribeTopic(request_id=6, name="orders"),
    p.SetPartitions(request_id=7, name="orders", partitions=8),
    p.GroupList(request_id=8, topic="orders"),
    p.GroupDescribe(request_id=9, topic="orders", group="billing"),
    p.GroupReset(request_id=10, topic="orders", group="billing", start={"0": 5}),
    p.DlqList(request_id=11, topic="orders", group="billing", limit=10),
    p.DlqRedrive(request_id=12, topic="orders", group="billing", limit=None,
                 filter={"reason": "expired"}),
    p.Call(request_id=13, method="update_group", args={"group": "g", "max_deliveries": 3}),
    p.Publish(request_id=14, topic="orders", partition=-1, batch=b"\x01" * 64 + b"body"),
    p.PublishOk(request_id=14, partition=2, base_offset=100, last_offset=101, ids=["a", "b"]),
    p.Subscribe(request_id=15, topic="orders", group="billing",
                settings={"mode": "shared", "filter": {"routing_key": ["order.*"]}}, prefetch=64),
    p.SubscribeOk(request_id=15, subscription_id=4, settings={"mode": "shared"}),
    p.Credit(subscription_id=4, n=32),
    p.Deliver(subscription_id=4, ids=["m1", "m2"], partitions=[0, 1], offsets=[10, 20],
              timestamps_us=[1_700_000_000_000_000, 1_700_000_000_000_001],
              delivery_counts=[1, 3], priorities=[0, 9], bodies=[b"hello", b""],
              keys=[b"k", None], routing_keys=None, headers=[None, {"h": "v"}]),
    p.Ack(request_id=16, subscription_id=4, ranges=[(0, 10, 19), (1, 20, 20)], ids=["m9"]),
    p.AckOk(request_id=16, settled=11, failures=[("m9", errors.StaleLease.code, "stale")]),
    p.Nack(request_id=17, subscription_id=4, ids=["m1"], delay=0.5),
    p.Extend(request_id=18, subscription_id=4, ids=["m1", "m2"], seconds=30.0),
    p.Reject(request_id=19, subscription_id=4, ids=["m2"], reason="bad json"),
    p.CloseSubscription(request_id=20, subscription_id=4),
    p.SubscriptionEnded(subscription_id=4, code=errors.UnknownTopic.code, message="deleted"),
]


def decode_all(data: bytes, chunk: int | None = None) -> list[p.Frame]:
    decoder = p.Decoder()
    out: list[p.Frame] = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        decoder.feed(data[i:i + step])
        out.extend(decoder.frames())
    assert decoder.buffered == 0
    assert decoder.next_frame() is p.NEED_DATA
    return out


def test_samples_cover_every_frame_type() -> None:
    assert {type(f) for f in SAMPLES} == set(p.ALL_FRAME_TYPES)
    assert {cls.TYPE for cls in p.ALL_FRAME_TYPES} == set(p.FrameType)


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_every_frame_round_trips(frame: p.FrameBase) -> None:
    data = p.encode(frame)  # type: ignore[arg-type]
    assert int.from_bytes(data[:4], "little") == len(data)
    assert data[4] == frame.TYPE
    assert int.from_bytes(data[8:12], "little") == frame.request_id
    assert decode_all(data) == [frame]
    assert b"".join(p.encode_buffers(frame)) == data  # type: ignore[arg-type]


def test_one_byte_at_a_time_equals_whole() -> None:
    stream = b"".join(p.encode(f) for f in SAMPLES)  # type: ignore[arg-type]
    assert decode_all(stream, chunk=1) == decode_all(stream) == SAMPLES


def test_bulk_payloads_are_not_copied_on_encode() -> None:
    batch = b"B" * 1000
    parts = p.encode_buffers(p.Publish(request_id=1, topic="t", batch=batch))
    assert parts[-1] is batch
    deliver = next(f for f in SAMPLES if isinstance(f, p.Deliver))
    assert isinstance(deliver, p.Deliver)
    assert p.encode_buffers(deliver)[1] is deliver.bodies[0]


def test_deliver_rows_and_from_deliveries_agree() -> None:
    deliver = next(f for f in SAMPLES if isinstance(f, p.Deliver))
    assert isinstance(deliver, p.Deliver)
    rows = deliver.deliveries()
    assert len(deliver) == 2
    assert rows[1] == p.Delivery(id="m2", partition=1, offset=20,
                                 timestamp_us=1_700_000_000_000_001, delivery_count=3,
                                 priority=9, body=b"", headers={"h": "v"})
    assert p.Deliver.from_deliveries(4, rows) == deliver


def test_error_frame_maps_to_catalogue_exception() -> None:
    exc = p.Error(request_id=3, code=errors.StaleLease.code, message="lease gone").to_exception()
    assert type(exc) is errors.StaleLease and exc.message == "lease gone"
    assert type(p.Error(code=9999, message="?").to_exception()) is errors.TideMQError
    frame = p.Error.from_exception(errors.BacklogFull("full"), 5, fatal=True)
    assert decode_all(p.encode(frame)) == [frame]
    assert type(frame.to_exception()) is errors.BacklogFull


def test_pipelined_requests_keep_their_ids_and_order() -> None:
    requests = [p.Ping(request_id=i) for i in range(1, 200)]
    replies = decode_all(b"".join(p.encode(r) for r in requests), chunk=7)
    assert [f.request_id for f in replies] == list(range(1, 200))


def test_extra_trailing_fields_are_ignored_for_forward_compatibility() -> None:
    # A later minor revision may append optional fields to a control frame.
    import msgspec

    payload = msgspec.msgpack.encode(["orders", "extra", 42])
    header = p.FrameType.DESCRIBE_TOPIC.to_bytes(1, "little") + b"\0\0\0" + (5).to_bytes(4, "little")
    data = (12 + len(payload)).to_bytes(4, "little") + header + payload
    assert decode_all(data) == [p.DescribeTopic(request_id=5, name="orders")]


@pytest.mark.parametrize("cls", p.ALL_FRAME_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_frames_of_each_type_round_trip(cls: type[p.FrameBase], data: st.DataObject) -> None:
    frame = data.draw(FRAME_STRATEGIES[cls])
    assert decode_all(p.encode(frame)) == [frame]


@settings(max_examples=60, deadline=None)
@given(frames=st.lists(ANY_FRAME, max_size=8), chunk=st.integers(1, 64))
def test_random_frame_sequences_round_trip_in_any_chunking(
    frames: list[p.FrameBase], chunk: int
) -> None:
    stream = b"".join(p.encode(f) for f in frames)  # type: ignore[arg-type]
    assert decode_all(stream, chunk=chunk) == frames


def test_missing_trailing_optional_fields_take_their_defaults() -> None:
    import msgspec

    payload = msgspec.msgpack.encode(["orders"])
    header = p.FrameType.CREATE_TOPIC.to_bytes(1, "little") + b"\0\0\0" + (6).to_bytes(4, "little")
    data = (12 + len(payload)).to_bytes(4, "little") + header + payload
    assert decode_all(data) == [p.CreateTopic(request_id=6, name="orders", partitions=1, config={})]
