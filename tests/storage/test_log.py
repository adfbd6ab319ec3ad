"""One suite, two implementations: FileLog and MemoryLog behave the same (NATS store_test.go)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.storage.helpers import LogFactory, all_bodies, batch, bodies
from tidemq.errors import Closed, InvalidArgument
from tidemq.storage import (
    FileLog,
    LogConfig,
    MemoryLog,
    PartitionLog,
    Record,
    encode_batch,
    encode_bodies,
    verify,
)

T0 = 1_700_000_000_000_000  # µs


def test_both_implement_the_protocol(factory: LogFactory) -> None:
    log = factory.open()
    assert isinstance(log, PartitionLog)
    assert isinstance(log, FileLog if factory.kind == "file" else MemoryLog)
    assert (log.start_offset, log.end_offset) == (0, 0)
    assert log.read(0) == []
    assert log.offset_for_time(0) is None


def test_append_assigns_dense_offsets_and_reads_back(factory: LogFactory) -> None:
    log = factory.open()
    r1 = log.append(batch(0, 3), T0)
    r2 = log.append_records([Record(b"a", key=b"k", headers={"h": "v"}, priority=5)], T0 + 1)
    r3 = log.append(batch(4, 2), T0 + 2)
    assert (r1.base_offset, r1.last_offset, r1.position) == (0, 2, 3)
    assert (r2.base_offset, r2.last_offset) == (3, 3)
    assert (r3.base_offset, r3.last_offset, r3.position) == (4, 5, 6)
    assert log.end_offset == 6
    views = log.read(0)
    assert [v.base_offset for v in views] == [0, 3, 4]
    assert views[1].records() == [Record(b"a", key=b"k", headers={"h": "v"}, priority=5)]
    assert all_bodies(log) == bodies(0, 3) + [b"a"] + bodies(4, 2)


def test_pre_encoded_batch_is_stored_without_re_encoding(factory: LogFactory) -> None:
    log = factory.open()
    log.append(batch(0, 5), T0)
    original = encode_bodies(bodies(100, 7), producer_id=42, producer_epoch=3, base_sequence=9)
    log.append(original, T0 + 5)
    stored = log.read(5)[0]
    raw = bytes(stored.raw)
    assert raw[37:] == original[37:]  # body and everything under the body CRC: byte for byte
    assert raw[33:37] == original[33:37]  # the producer's body CRC is kept
    assert (stored.base_offset, stored.first_timestamp_us, stored.max_timestamp_us) == (
        5,
        T0 + 5,
        T0 + 5,
    )
    assert (stored.producer_id, stored.producer_epoch, stored.base_sequence) == (42, 3, 9)
    verify(raw)  # still a valid batch


def test_bad_batch_is_refused_and_nothing_stored(factory: LogFactory) -> None:
    log = factory.open()
    good = bytearray(batch(0, 3))
    good[-1] ^= 1
    with pytest.raises(InvalidArgument):
        log.append(good, T0)
    with pytest.raises(InvalidArgument):
        log.append(b"short", T0)
    assert log.end_offset == 0
    log.append(batch(0, 3), T0)
    assert all_bodies(log) == bodies(0, 3)


def test_read_bounds(factory: LogFactory) -> None:
    log = factory.open()
    for i in range(10):
        log.append(batch(10 * i, 10), T0 + i)
    # The first batch may start before the offset; counts round up to whole batches.
    views = log.read(25, max_records=15)
    assert [v.base_offset for v in views] == [20, 30]
    # A byte budget smaller than one batch still returns that batch.
    assert [v.base_offset for v in log.read(0, max_bytes=1)] == [0]
    size = log.read(0)[0].size
    assert len(log.read(0, max_bytes=3 * size)) == 3
    assert log.read(100) == []
    assert log.read(10**9) == []
    with pytest.raises(InvalidArgument):
        log.read(0, max_records=0)


def test_timestamps_never_go_backwards(factory: LogFactory) -> None:
    log = factory.open()
    log.append(batch(0, 1), T0 + 100)
    log.append(batch(1, 1), T0)  # the caller's clock stepped back
    views = log.read(0)
    assert [v.first_timestamp_us for v in views] == [T0 + 100, T0 + 100]


def test_offset_for_time(factory: LogFactory) -> None:
    log = factory.open(LogConfig(segment_bytes=1024, index_interval_bytes=64))
    for i in range(40):
        log.append(batch(5 * i, 5), T0 + 1000 * i)
    assert log.offset_for_time(0) == 0
    assert log.offset_for_time(T0) == 0
    assert log.offset_for_time(T0 + 1) == 5
    assert log.offset_for_time(T0 + 17_000) == 85
    assert log.offset_for_time(T0 + 16_500) == 85
    assert log.offset_for_time(T0 + 39_000) == 195
    assert log.offset_for_time(T0 + 39_001) is None


def test_roll_by_size(factory: LogFactory) -> None:
    log = factory.open(LogConfig(segment_bytes=1024))
    size = len(batch(0, 10))
    for i in range(30):
        log.append(batch(10 * i, 10), T0)
    per_segment = 1024 // size
    assert log.statistics().segments == -(-30 // per_segment)
    assert all_bodies(log) == bodies(0, 300)
    # A batch larger than a segment gets a segment of its own.
    log.append(batch(300, 100), T0)
    assert all_bodies(log, 300) == bodies(300, 100)


def test_roll_by_age_uses_the_callers_clock(factory: LogFactory) -> None:
    log = factory.open(LogConfig(segment_ms=10))
    log.append(batch(0, 1), T0)
    log.append(batch(1, 1), T0 + 9_999)
    assert log.statistics().segments == 1
    log.append(batch(2, 1), T0 + 10_000)
    assert log.statistics().segments == 2
    assert all_bodies(log) == bodies(0, 3)


def _segmented(factory: LogFactory, config: LogConfig) -> PartitionLog:
    """A log with 5 segments of 10 records each (2 batches per segment), one hour apart."""
    log = factory.open(config)
    for i in range(10):
        log.append(batch(5 * i, 5), T0 + 3_600_000_000 * (i // 2) + i)
    assert log.statistics().segments == 5
    return log


def test_retention_by_size_deletes_whole_old_segments(factory: LogFactory) -> None:
    seg = 2 * len(batch(0, 5))
    log = _segmented(factory, LogConfig(segment_bytes=seg, retention_bytes=2 * seg))
    assert log.apply_retention(T0) == 3
    assert log.start_offset == 30
    assert all_bodies(log) == bodies(30, 20)
    assert log.read(0)[0].base_offset == 30  # before the start reads from the start
    assert log.apply_retention(T0) == 0


def test_retention_by_age(factory: LogFactory) -> None:
    seg = 2 * len(batch(0, 5))
    hour_ms = 3_600_000
    log = _segmented(factory, LogConfig(segment_bytes=seg, retention_ms=hour_ms))
    now = T0 + 3 * hour_ms * 1000
    # Segments 0 and 1 ended more than an hour before now; segment 2 did not.
    assert log.apply_retention(now) == 2
    assert log.start_offset == 20
    assert log.apply_retention(now + 10**12) == 2  # never the active segment
    assert log.start_offset == 40
    assert all_bodies(log) == bodies(40, 10)


def test_retention_veto(factory: LogFactory) -> None:
    seg = 2 * len(batch(0, 5))
    log = _segmented(factory, LogConfig(segment_bytes=seg, retention_bytes=0))
    # A consumer still needs offset 15: segment [10, 20) holds it and must stay.
    assert log.apply_retention(T0, keep_from=15) == 1
    assert log.start_offset == 10
    assert log.apply_retention(T0, keep_from=20) == 1
    assert log.apply_retention(T0, keep_from=20) == 0
    assert log.start_offset == 20


def test_no_retention_configured_keeps_everything(factory: LogFactory) -> None:
    seg = 2 * len(batch(0, 5))
    log = _segmented(factory, LogConfig(segment_bytes=seg))
    assert log.apply_retention(T0 + 10**15) == 0
    assert log.start_offset == 0


def test_reopen_keeps_everything(factory: LogFactory) -> None:
    config = LogConfig(segment_bytes=1024, index_interval_bytes=100)
    log = factory.open(config)
    for i in range(20):
        log.append(batch(10 * i, 10), T0 + i)
    log.sync(log.end_offset)
    log = factory.reopen(log)
    assert log.recovery.clean
    assert log.end_offset == 200
    assert all_bodies(log) == bodies(0, 200)
    assert log.append(batch(200, 1), T0).base_offset == 200
    assert log.offset_for_time(T0 + 19) == 190


def test_sync_and_needs_sync(factory: LogFactory) -> None:
    log = factory.open()
    r = log.append(batch(0, 2), T0)
    if factory.kind == "file":
        assert log.needs_sync
    log.sync(r.position)
    assert not log.needs_sync
    assert log.synced_position >= r.position
    log.sync(r.position)  # already durable: returns at once
    assert log.durability == "interval"


def test_closed_log_refuses_calls(factory: LogFactory) -> None:
    log = factory.open()
    log.append(batch(0, 1), T0)
    log.close()
    log.close()  # idempotent
    with pytest.raises(Closed):
        log.append(batch(1, 1), T0)
    with pytest.raises(Closed):
        log.read(0)


def test_config_is_checked() -> None:
    with pytest.raises(InvalidArgument):
        LogConfig(durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        LogConfig(segment_bytes=10)
    with pytest.raises(InvalidArgument):
        LogConfig(on_corruption="ignore")  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=25),
    segment_bytes=st.integers(1024, 4096),
    interval=st.sampled_from([1, 200, 4096]),
    start=st.integers(0, 400),
)
def test_model_reads_match_appends(
    tmp_path_factory: pytest.TempPathFactory,
    counts: list[int],
    segment_bytes: int,
    interval: int,
    start: int,
) -> None:
    """Any sequence of batches reads back in order from any offset, on both logs, also after reopen."""
    config = LogConfig(segment_bytes=segment_bytes, index_interval_bytes=interval)
    expected: list[bytes] = []
    for kind in ("file", "memory"):
        factory = LogFactory(kind, tmp_path_factory.mktemp("model"))
        try:
            log = factory.open(config)
            expected = []
            for i, n in enumerate(counts):
                log.append(batch(len(expected), n), T0 + i)
                expected += bodies(len(expected), n)
            assert all_bodies(log, start) == expected[start:]
            log = factory.reopen(log)
            assert all_bodies(log, start) == expected[start:]
        finally:
            factory.close()


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.lists(st.integers(0, 9), min_size=1, max_size=4)),
        min_size=1,
        max_size=12,
    ),
)
def test_priority_free_from_bounds_the_batches_with_a_priority(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[bool, list[int]]]
) -> None:
    """No batch from ``priority_free_from`` to the end carries a priority, whichever way it
    was appended (an encoded batch or records); it stays at the start while none was
    appended, moves to the end with each one that has a priority, and is the end after a
    reopen (what was there is not known)."""
    for kind in ("file", "memory"):
        factory = LogFactory(kind, tmp_path_factory.mktemp("prio"))
        try:
            log = factory.open()
            any_priority = False
            for as_records, prios in steps:
                records = [Record(b"p%d" % p, priority=p) for p in prios]
                if as_records:
                    log.append_records(records, T0)
                else:
                    log.append(encode_batch(records), T0)
                if max(prios):
                    any_priority = True
                    assert log.priority_free_from == log.end_offset
                free = log.priority_free_from
                assert 0 <= free <= log.end_offset
                if not any_priority:
                    assert free == 0
                views = log.read(free, max_records=1 << 20) if free < log.end_offset else []
                assert all(v.base_offset >= free and v.max_priority == 0 for v in views)
            if kind == "file":
                end = log.end_offset
                log = factory.reopen(log)
                assert log.priority_free_from == end
                log.append_records([Record(b"plain")], T0)
                assert log.priority_free_from == end
        finally:
            factory.close()
