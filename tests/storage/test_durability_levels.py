"""Who fsyncs what: a new log's folders are made durable (D6), and a ``never`` log is fsynced
only by an explicit ``sync`` and by ``close`` (D5) — not by opening, rolling, recovering or
cutting a torn tail.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.powerloss import PowerLossOps, abandon
from tests.storage.helpers import all_bodies, batch, bodies
from tidemq.storage import FileStore, LogConfig

T0 = 1_700_000_000_000_000
NAME = "topic/1/0"  # as the broker names them: <topic>/<incarnation>/<partition>
PER = 3
NEVER = LogConfig(segment_bytes=1024, durability="never")


def _folders(data: Path) -> list[Path]:
    return [data, data / "logs", data / "logs" / "topic", data / "logs" / "topic" / "1",
            data / "logs" / "topic" / "1" / "0"]


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every fsync and fdatasync this process makes from now on (they still happen)."""
    calls: list[str] = []

    def counted(name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            calls.append(name)
            real(fd)

        return call

    monkeypatch.setattr(os, "fsync", counted("fsync", os.fsync))
    monkeypatch.setattr(os, "fdatasync", counted("fdatasync", os.fdatasync))
    return calls


# --- D6: folders -------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["always", "interval"])
def test_a_new_logs_folders_are_durable_before_its_first_sync_returns(
    tmp_path: Path, durability: str
) -> None:
    data = tmp_path / "data"
    ops = PowerLossOps(seed=1)
    store = FileStore(data, ops=ops)
    log = store.open_log(NAME, LogConfig(durability=durability))  # type: ignore[arg-type]
    res = log.append(batch(0, PER), T0)
    log.sync(res.position)
    assert [d for d in _folders(data) if not ops.dir_is_durable(d)] == []
    abandon(store)
    ops.crash("drop")  # every folder entry not fsynced in its parent would vanish here
    with FileStore(data) as again:
        assert all_bodies(again.open_log(NAME)) == bodies(0, PER)


def test_the_double_drops_a_folder_whose_parent_was_not_fsynced(tmp_path: Path) -> None:
    ops = PowerLossOps()
    (tmp_path / "a").mkdir()
    ops.mkdir(str(tmp_path / "a" / "b"))
    ops.mkdir(str(tmp_path / "a" / "b" / "c"))
    fd = ops.open(str(tmp_path / "a" / "b" / "c" / "f"), create=True)
    ops.pwritev(fd, [b"x"], 0)
    ops.fsync(fd)  # the file is durable in its folder, but the folders are not
    ops.close(fd)
    ops.fsync_dir(str(tmp_path / "a" / "b"))  # makes c's entry durable, not b's
    assert not ops.dir_is_durable(tmp_path / "a" / "b")
    assert ops.durable_image(tmp_path / "a" / "b" / "c" / "f") is None
    assert str(tmp_path / "a" / "b") in ops.unsynced_paths()
    ops.crash("drop")
    assert (tmp_path / "a").is_dir() and not (tmp_path / "a" / "b").exists()


def test_a_never_log_makes_its_folders_durable_at_its_first_sync(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ops = PowerLossOps(seed=2)
    store = FileStore(data, ops=ops)
    log = store.open_log(NAME, NEVER)
    assert not ops.dir_is_durable(data / "logs" / "topic")  # opening a never log: no fsync
    log.append(batch(0, PER), T0)
    log.sync()
    assert [d for d in _folders(data) if not ops.dir_is_durable(d)] == []
    abandon(store)
    ops.crash("drop")
    with FileStore(data) as again:
        assert all_bodies(again.open_log(NAME, NEVER)) == bodies(0, PER)


def test_a_never_log_cut_by_a_power_cut_before_any_sync_reopens_empty(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ops = PowerLossOps(seed=3)
    store = FileStore(data, ops=ops)
    log = store.open_log(NAME, NEVER)
    for i in range(10):
        log.append(batch(PER * i, PER), T0)
    abandon(store)
    ops.crash("drop")  # the folders were never fsynced: the log is gone with them
    assert not (data / "logs" / "topic").exists()
    with FileStore(data) as again:
        log = again.open_log(NAME, NEVER)
        assert log.end_offset == 0 and all_bodies(log) == []


# --- D5: never means never ---------------------------------------------------------------------


def _tear_last_segment(data: Path, nbytes: int) -> None:
    last = sorted((data / "logs" / "topic" / "1" / "0").glob("*.log"))[-1]
    size = last.stat().st_size
    os.truncate(last, size - nbytes)


def test_a_never_log_is_fsynced_only_by_sync_and_close(tmp_path: Path, fsyncs: list[str]) -> None:
    data = tmp_path / "data"
    store = FileStore(data)
    fsyncs.clear()  # the store's own folders are not a log's
    log = store.open_log(NAME, NEVER)
    for i in range(30):  # several rolls
        log.append(batch(PER * i, PER), T0 + i)
    assert log.statistics().segments >= 4
    assert all_bodies(log) == bodies(0, 30 * PER)
    assert log.offset_for_time(T0 + 5) is not None
    assert fsyncs == [], "opening, appending, rolling or reading fsynced a never log"
    abandon(store)  # the process dies: no close
    _tear_last_segment(data, 50)

    store = FileStore(data)
    fsyncs.clear()
    log = store.open_log(NAME, NEVER)
    assert log.recovery.bytes_truncated > 0  # recovery scanned and cut the torn tail ...
    assert fsyncs == [], "recovering a never log fsynced it"  # ... without an fsync
    kept = log.end_offset
    assert all_bodies(log) == bodies(0, kept)
    assert log.synced_position < kept  # it says what is not yet known durable
    log.append(batch(kept, PER), T0 + 100)
    assert fsyncs == []
    log.sync()  # the one explicit call: now everything is fsynced, folders and cut included
    assert fsyncs and log.synced_position == kept + PER
    fsyncs.clear()
    log.append(batch(kept + PER, PER), T0 + 101)
    assert fsyncs == []
    store.close()  # a clean close syncs and checkpoints, under never too
    assert fsyncs
    with FileStore(data) as again:
        log = again.open_log(NAME, NEVER)
        assert log.recovery.clean and all_bodies(log) == bodies(0, kept + 2 * PER)


def test_a_lazily_recovered_never_log_stays_consistent_after_a_power_cut(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = FileStore(data)
    log = store.open_log(NAME, NEVER)
    for i in range(20):
        log.append(batch(PER * i, PER), T0 + i)
    abandon(store)
    _tear_last_segment(data, 70)
    ops = PowerLossOps(seed=4)
    store = FileStore(data, ops=ops)
    log = store.open_log(NAME, NEVER)  # cuts the tear, fsyncs nothing
    kept = log.end_offset
    for i in range(5):
        log.append(batch(kept + PER * i, PER), T0 + 50 + i)
    abandon(store)
    ops.crash("drop")  # the cut is undone: the torn bytes come back, the new appends go
    with FileStore(data) as again:
        log = again.open_log(NAME, NEVER)
        got = all_bodies(log)
        assert got == bodies(0, kept) and log.end_offset == kept
        assert log.recovery.bytes_truncated > 0  # cut again, the same way
