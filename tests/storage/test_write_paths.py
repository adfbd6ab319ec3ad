"""The append's write: one pwritev under the descriptor cache's lock when the segment's
descriptor is cached (``FdCache.call_cached``), else acquire / write / release; short writes
finished, disk full cut back, other errors failing the log (D9, D10), on both paths."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.storage.helpers import all_bodies, batch, bodies
from tidemq.errors import DiskFull, StorageFailed
from tidemq.storage import FileLog, FileOps, LogConfig
from tidemq.storage._fdcache import FdCache

T0 = 1_700_000_000_000_000


class ShortOps(FileOps):
    """``short``: the next pwritev writes only its first 7 bytes. ``error``: the next ones
    write half, then raise that errno."""

    def __init__(self) -> None:
        self.short = False
        self.error: int | None = None
        self.calls = 0

    def pwritev(self, fd: int, buffers: Sequence[bytes | bytearray | memoryview], pos: int) -> int:
        self.calls += 1
        data = b"".join(buffers)
        if self.error is not None:
            super().pwritev(fd, [data[: len(data) // 2]], pos)
            raise OSError(self.error, "injected")
        if self.short:
            self.short = False
            return super().pwritev(fd, [data[:7]], pos)
        return super().pwritev(fd, buffers, pos)


def _open(tmp_path: Path, ops: ShortOps) -> tuple[FileLog, FdCache]:
    fds = FdCache(ops=ops)
    return FileLog(tmp_path, LogConfig(), ops=ops, fds=fds), fds


def _segment(log: FileLog) -> str:
    return log._segments[-1].path


@pytest.mark.parametrize("cached", [True, False])
def test_a_short_write_is_finished(tmp_path: Path, cached: bool) -> None:
    ops = ShortOps()
    log, fds = _open(tmp_path, ops)
    log.append(batch(0, 3), T0)
    if not cached:
        fds.forget(_segment(log))
    ops.short = True
    assert log.append(batch(3, 3), T0).base_offset == 3
    assert log.append(batch(6, 3), T0).base_offset == 6
    assert all_bodies(log) == bodies(0, 9)
    log.close()
    fds.close_all()
    reopened = FileLog(tmp_path, LogConfig())
    assert reopened.recovery.clean and all_bodies(reopened) == bodies(0, 9)
    reopened.close()


@pytest.mark.parametrize("cached", [True, False])
def test_disk_full_is_cut_back_on_either_path(tmp_path: Path, cached: bool) -> None:
    ops = ShortOps()
    log, fds = _open(tmp_path, ops)
    log.append(batch(0, 3), T0)
    size = Path(_segment(log)).stat().st_size
    if not cached:
        fds.forget(_segment(log))
    ops.error = errno.ENOSPC
    with pytest.raises(DiskFull):
        log.append(batch(3, 3), T0)
    assert not log.failed
    assert Path(_segment(log)).stat().st_size == size
    ops.error = None
    assert log.append(batch(3, 3), T0).base_offset == 3
    assert all_bodies(log) == bodies(0, 6)
    log.close()
    fds.close_all()


@pytest.mark.parametrize("cached", [True, False])
def test_a_write_error_fails_the_log_on_either_path(tmp_path: Path, cached: bool) -> None:
    ops = ShortOps()
    log, fds = _open(tmp_path, ops)
    log.append(batch(0, 3), T0)
    if not cached:
        fds.forget(_segment(log))
    ops.error = errno.EIO
    with pytest.raises(StorageFailed):
        log.append(batch(3, 3), T0)
    assert log.failed
    calls = ops.calls
    ops.error = None
    with pytest.raises(StorageFailed):  # D9: it stays failed
        log.append(batch(3, 3), T0)
    assert ops.calls == calls  # nothing written by the refused append
    log.close()
    fds.close_all()


def test_call_cached_only_calls_with_an_open_descriptor(tmp_path: Path) -> None:
    fds = FdCache()
    path = str(tmp_path / "f")
    Path(path).write_bytes(b"")
    seen: list[int] = []

    def call(fd: int, arg: str, pos: int) -> int:
        seen.append(fd)
        return pos

    assert fds.call_cached(path, call, "x", 5) is None and seen == []
    fd = fds.acquire(path)
    fds.release(path, fd)
    assert fds.call_cached(path, call, "x", 5) == 5 and seen == [fd]
    fds.close_all()
