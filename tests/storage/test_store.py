"""Stores: the folder lock, logs by name, bounded descriptors, atomic metadata writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.storage.helpers import all_bodies, batch, bodies
from tidemq.errors import DataDirLocked, InvalidArgument
from tidemq.storage import (
    FileLog,
    FileStore,
    LogConfig,
    LogStore,
    MemoryLog,
    MemoryStore,
    atomic_write,
    open_store,
)

T0 = 1_700_000_000_000_000

_TRY_OPEN = """
import sys
from tidemq.errors import DataDirLocked
from tidemq.storage import open_store
try:
    open_store(sys.argv[1]).close()
except DataDirLocked:
    print("locked")
else:
    print("opened")
"""


def _try_open_in_child(path: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _TRY_OPEN, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_open_store_kinds(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        assert isinstance(store, FileStore) and isinstance(store, LogStore)
        assert isinstance(store.open_log("x"), FileLog)
    with open_store(None) as mem:
        assert isinstance(mem, MemoryStore) and isinstance(mem, LogStore)
        assert isinstance(mem.open_log("x"), MemoryLog)


def test_second_opener_gets_data_dir_locked(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(DataDirLocked, match="in use"):
        open_store(tmp_path)
    assert _try_open_in_child(tmp_path) == "locked"
    store.close()
    assert _try_open_in_child(tmp_path) == "opened"
    open_store(tmp_path).close()


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tidemq.storage import open_store; "
            "s = open_store(sys.argv[1]); print('ready', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(DataDirLocked):
            open_store(tmp_path)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    open_store(tmp_path).close()


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_logs_by_name(tmp_path: Path, kind: str) -> None:
    store = open_store(tmp_path if kind == "file" else None)
    try:
        a = store.open_log("orders/0")
        b = store.open_log("orders/1")
        store.open_log("payments.eu/0")
        assert store.open_log("orders/0") is a
        a.append(batch(0, 3), T0)
        b.append(batch(10, 2), T0)
        assert store.list_logs() == ["orders/0", "orders/1", "payments.eu/0"]
        store.delete_log("orders/1")
        store.delete_log("nope")
        assert store.list_logs() == ["orders/0", "payments.eu/0"]
        assert store.open_log("orders/1").end_offset == 0
        for bad in ("", "a//b", "../x", "a/./b", "a b"):
            with pytest.raises(InvalidArgument):
                store.open_log(bad)
        a.close()
        assert all_bodies(store.open_log("orders/0")) == bodies(0, 3)  # reopened with its data
    finally:
        store.close()


def test_descriptors_stay_bounded(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=512)
    fds_before = len(os.listdir("/proc/self/fd"))
    with FileStore(tmp_path, max_open_files=8) as store:
        logs = [store.open_log(f"t/{p}", config) for p in range(6)]
        for round_ in range(10):
            for p, log in enumerate(logs):
                log.append(batch(1000 * p + 5 * round_, 5), T0)
            for log in logs:
                log.sync()
        assert all(log.statistics().segments >= 5 for log in logs)
        for p, log in enumerate(logs):
            got = all_bodies(log)
            assert got == [b for r in range(10) for b in bodies(1000 * p + 5 * r, 5)]
            assert log.offset_for_time(T0) == 0
        assert store.fd_cache.open_count() <= 8
        assert len(os.listdir("/proc/self/fd")) - fds_before <= 8 + 1  # + the LOCK file
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two, longer")
    assert target.read_bytes() == b"two, longer"
    atomic_write(str(target), b"", durable=False)
    assert target.read_bytes() == b""
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]  # no temp file left
    with pytest.raises(OSError):
        atomic_write(tmp_path / "missing" / "x", b"1")
    assert not list((tmp_path).glob("*.tmp"))
