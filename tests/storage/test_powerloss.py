"""Power loss through ``tests.powerloss.PowerLossOps``: what was fsynced survives, the rest may go.

A ``kill -9`` keeps the page cache and so cannot catch a missing fsync; these tests cut the
power instead (the double rewrites every file to its last fsynced image, or that plus a torn or
partial tail) and reopen the folder with a plain ``FileStore``.
"""

from __future__ import annotations

import random
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from tests.powerloss import SECTOR, PowerLossOps, abandon
from tests.storage.helpers import all_bodies, batch, bodies
from tidemq.storage import FileLog, FileStore, LogConfig

T0 = 1_700_000_000_000_000
NAME = "t/0"
PER = 3  # records per batch: a batch is 136 bytes, so 1 KiB segments roll every 7 batches


def _segments(root: Path) -> list[Path]:
    return sorted((root / "logs" / "t" / "0").glob("*.log"))


def _reopen(root: Path) -> tuple[FileStore, FileLog]:
    store = FileStore(root)
    return store, store.open_log(NAME, LogConfig(segment_bytes=1024))


# --- the double itself -----------------------------------------------------------------------


def _written(path: Path, ops: PowerLossOps, synced: bytes, unsynced: list[bytes]) -> None:
    fd = ops.open(str(path), create=True)
    try:
        ops.pwritev(fd, [synced], 0)
        ops.fsync(fd)
        pos = len(synced)
        for chunk in unsynced:
            ops.pwritev(fd, [chunk], pos)
            pos += len(chunk)
    finally:
        ops.close(fd)


def test_drop_restores_the_fsynced_image_and_forgets_unsynced_files(tmp_path: Path) -> None:
    ops = PowerLossOps(seed=1)
    data = random.Random(1).randbytes(2500)
    synced, later = data[:1000], data[1000:]
    _written(tmp_path / "a", ops, synced, [later[:700], later[700:]])
    fd = ops.open(str(tmp_path / "new"), create=True)  # created, written, never fsynced
    ops.pwritev(fd, [b"x" * 100], 0)
    ops.close(fd)
    fd = ops.open(str(tmp_path / "a"))
    ops.ftruncate(fd, 10)  # an unsynced truncate is undone too
    ops.close(fd)
    assert (tmp_path / "a").read_bytes() == synced[:10]  # the page cache sees everything
    assert ops.durable_image(tmp_path / "a") == synced
    assert ops.unsynced_paths() == sorted([str(tmp_path / "a"), str(tmp_path / "new")])
    ops.crash("drop")
    assert (tmp_path / "a").read_bytes() == synced
    assert not (tmp_path / "new").exists()
    assert ops.unsynced_paths() == []


@pytest.mark.parametrize("seed", range(8))
def test_prefix_keeps_an_in_order_prefix_of_the_unsynced_bytes(tmp_path: Path, seed: int) -> None:
    ops = PowerLossOps(seed=seed)
    data = random.Random(seed).randbytes(4000)
    synced, later = data[:1000], data[1000:]
    _written(tmp_path / "a", ops, synced, [later[i : i + 300] for i in range(0, 3000, 300)])
    ops.crash("prefix")
    got = (tmp_path / "a").read_bytes()
    assert 1000 <= len(got) <= 4000
    assert got == (synced + later)[: len(got)]


def test_tear_garbles_one_sector_of_unsynced_bytes_only(tmp_path: Path) -> None:
    torn = 0
    for seed in range(16):
        ops = PowerLossOps(seed=seed)
        path = tmp_path / f"a{seed}"
        data = random.Random(100 + seed).randbytes(4000)
        synced, later = data[:1000], data[1000:]
        _written(path, ops, synced, [later[i : i + 600] for i in range(0, 3000, 600)])
        ops.crash("tear")
        got = path.read_bytes()
        full = synced + later
        assert got[:1000] == synced  # the durable image is never touched
        assert 1000 <= len(got) <= len(full)
        diff = [i for i in range(len(got)) if got[i] != full[i]]
        if diff:
            torn += 1
            assert diff[0] >= 1000
            assert diff[-1] // SECTOR == diff[0] // SECTOR  # within one sector
    assert torn >= 12  # garbage that equals the data by chance is rare


def test_an_fsync_covers_only_writes_issued_before_it(tmp_path: Path) -> None:
    ops = PowerLossOps()
    path = str(tmp_path / "a")
    fd = ops.open(path, create=True)
    ops.pwritev(fd, [b"a" * 100], 0)
    gate = ops.hold_fsync()
    t = threading.Thread(target=ops.fsync, args=(fd,), daemon=True)
    t.start()
    try:
        assert ops.wait_for_held_fsync()
        assert ops.fsync_waiting == 1
        ops.pwritev(fd, [b"b" * 100], 100)  # while the fsync is in flight
    finally:
        gate.release()
        t.join(5)
    assert not t.is_alive() and ops.fsync_waiting == 0
    ops.close(fd)
    assert ops.durable_image(path) == b"a" * 100
    ops.crash("drop")
    assert Path(path).read_bytes() == b"a" * 100


# --- FileLog over the double ----------------------------------------------------------------


@pytest.mark.parametrize("durability", ["never", "interval"])
@pytest.mark.parametrize("synced", [0, 10], ids=["no-sync", "sync-after-10"])
def test_unsynced_appends_are_lost_on_power_cut(tmp_path: Path, durability: str, synced: int) -> None:
    ops = PowerLossOps(seed=3)
    store = FileStore(tmp_path, ops=ops)
    log = store.open_log(NAME, LogConfig(segment_bytes=1024, durability=durability))  # type: ignore[arg-type]
    for i in range(30):
        log.append(batch(PER * i, PER), T0 + i)
        if i + 1 == synced:
            log.sync()
    assert all_bodies(log) == bodies(0, 30 * PER)  # before the cut: all readable
    assert len(_segments(tmp_path)) >= 4
    abandon(store)
    ops.crash("drop")
    store, log = _reopen(tmp_path)
    try:
        assert log.end_offset == synced * PER
        assert all_bodies(log) == bodies(0, synced * PER)
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["drop", "tear"])
@pytest.mark.parametrize("seed", range(3))
def test_every_synced_batch_survives_under_always(tmp_path: Path, mode: str, seed: int) -> None:
    ops = PowerLossOps(seed=seed)
    store = FileStore(tmp_path, ops=ops)
    log = store.open_log(NAME, LogConfig(segment_bytes=1024, durability="always"))
    for i in range(25):
        res = log.append(batch(PER * i, PER), T0 + i)
        log.sync(res.position)
    for i in range(25, 30):
        log.append(batch(PER * i, PER), T0 + i)  # appended, never confirmed
    abandon(store)
    ops.crash(mode)  # type: ignore[arg-type]
    store, log = _reopen(tmp_path)
    try:
        got = all_bodies(log)
        assert got[: 25 * PER] == bodies(0, 25 * PER)
        assert got == bodies(0, len(got)) and log.end_offset == len(got)
        if mode == "drop":
            assert len(got) == 25 * PER
    finally:
        store.close()


def test_sync_under_always_fsyncs_what_was_appended(tmp_path: Path) -> None:
    """Fails if FileLog stops fsyncing: the double records what each fsync made durable."""
    ops = PowerLossOps()
    store = FileStore(tmp_path, ops=ops)
    try:
        log = store.open_log(NAME, LogConfig(segment_bytes=1024, durability="always"))
        for i in range(20):  # three segment rolls
            res = log.append(batch(PER * i, PER), T0 + i)
            active = _segments(tmp_path)[-1]
            assert str(active) in ops.unsynced_paths()  # the double saw the write
            before = ops.fsyncs
            log.sync(res.position)
            assert ops.fsyncs > before
            assert ops.unsynced_paths() == []
            for seg in _segments(tmp_path):
                assert ops.durable_image(seg) == seg.read_bytes()
        assert len(_segments(tmp_path)) >= 3
    finally:
        store.close()


def test_a_held_fsync_holds_sync_until_released(tmp_path: Path) -> None:
    ops = PowerLossOps()
    store = FileStore(tmp_path, ops=ops)
    try:
        log = store.open_log(NAME, LogConfig(durability="always"))
        res = log.append(batch(0, PER), T0)
        done = threading.Event()

        def syncer() -> None:
            log.sync(res.position)
            done.set()

        with ops.hold_fsync():
            t = threading.Thread(target=syncer, daemon=True)
            t.start()
            assert ops.wait_for_held_fsync()
            assert not done.wait(0.2)
            assert log.synced_position < res.position
        t.join(5)
        assert done.is_set() and log.synced_position == res.position
    finally:
        store.close()


# --- torn tails, property-based ---------------------------------------------------------------


@settings(max_examples=examples(30), deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.integers(1, 6), st.integers(8, 120), st.booleans()), min_size=1, max_size=40
    ),
    mode=st.sampled_from(["prefix", "tear"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_power_cut_keeps_a_prefix_of_batches_covering_every_synced_one(
    plan: list[tuple[int, int, bool]], mode: str, seed: int
) -> None:
    """Each step appends a batch of n records of a given size, then syncs or not. After the cut
    the log holds the first k batches, whole and in order, for some k >= the synced ones."""
    config = LogConfig(segment_bytes=1024, durability="always", index_interval_bytes=256)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ops = PowerLossOps(seed=seed)
        store = FileStore(root, ops=ops)
        log = store.open_log(NAME, config)
        written: list[list[bytes]] = []
        synced = 0
        start = 0
        for i, (n, size, sync) in enumerate(plan):
            written.append(bodies(start, n, size))
            log.append(batch(start, n, size), T0 + i)
            start += n
            if sync:
                log.sync()
                synced = len(written)
        abandon(store)
        ops.crash(mode)  # type: ignore[arg-type]
        store = FileStore(root)
        try:
            log = store.open_log(NAME, config)
            got = all_bodies(log)
            assert log.start_offset == 0 and log.end_offset == len(got)
            flat: list[bytes] = []
            prefixes = [list(flat)]
            for w in written:
                flat.extend(w)
                prefixes.append(list(flat))
            assert got in prefixes[synced:], "lost a synced batch, or kept a partial/reordered one"
            store.close()
            store = FileStore(root)  # recovery left a consistent log: the next open agrees
            again = store.open_log(NAME, config)
            assert again.recovery.clean and again.recovery.bytes_truncated == 0
            assert all_bodies(again) == got
        finally:
            store.close()
