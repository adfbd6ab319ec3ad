"""Disk full under ``always``: an ack that fails is answered with ``DiskFull``, and a retry is
answered OK only once its journal event is written (before the fix a retried ack answered OK
with nothing journaled, and every such message came again after a restart)."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

import pytest

from tidemq.broker import Broker, GroupSettings, TopicConfig
from tidemq.errors import DiskFull
from tidemq.storage import FileOps, FileStore, Record

T = {"now_us": 1_700_000_000_000_000, "mono_us": 1_000_000}


class FullDisk(FileOps):
    """Writes to files whose path contains ``match`` fail with ENOSPC while ``full``."""

    def __init__(self, match: str) -> None:
        self.full = False
        self.match = match
        self.paths: dict[int, str] = {}

    def open(self, path: str, *, create: bool = False) -> int:
        fd = super().open(path, create=create)
        self.paths[fd] = path
        return fd

    def pwritev(self, fd: int, buffers: Sequence[bytes | bytearray | memoryview], pos: int) -> int:
        if self.full and self.match in self.paths.get(fd, ""):
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        return super().pwritev(fd, buffers, pos)


def test_a_failed_ack_is_not_answered_ok_until_its_event_is_written(tmp_path: Path) -> None:
    ops = FullDisk("__state")  # the topic's journal log
    store = FileStore(tmp_path, ops=ops)
    b = Broker.open(store, **T)
    b.create_topic("t", TopicConfig(durability="always"), now_us=T["now_us"])
    m = b.subscribe("t", "g", GroupSettings(), **T)
    b.sync(b.barrier("t"))
    b.sync(b.publish("t", [Record(b"%d" % i) for i in range(5)], now_us=T["now_us"]).token)
    got = b.fetch(m, 5, **T)
    assert len(got) == 5
    ops.full = True
    with pytest.raises(DiskFull):
        b.ack(m, [got[0].id], **T)
    with pytest.raises(DiskFull):  # the retry still has the event to write: no silent OK
        b.ack(m, [got[0].id], **T)
    ops.full = False
    b.sync(b.ack(m, [got[0].id], **T))  # space is back: the retry writes the event
    b.close()
    store.close()

    store = FileStore(tmp_path)
    b = Broker.open(store, **T)
    m = b.subscribe("t", "g", None, **T)
    again = [d.body for d in b.fetch(m, 10, **T)]
    assert again == [b"1", b"2", b"3", b"4"]  # the acked one is not delivered again
    b.close()
    store.close()
