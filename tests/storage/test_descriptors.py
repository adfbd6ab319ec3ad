"""Running out of file descriptors (EMFILE/ENFILE) is transient: the log never enters its
failed state for it, answers a clear, retriable ``ResourceExhausted``, and works again once descriptors are free.

A ``FileOps`` double limits the descriptors open through it or refuses every open (a flood);
a child process lowers its real ``RLIMIT_NOFILE`` and fills it.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.storage.helpers import all_bodies, batch, bodies
from tidemq.errors import ResourceExhausted
from tidemq.storage import FileLog, FileOps, FileStore, LogConfig

T0 = 1_700_000_000_000_000
SMALL = LogConfig(segment_bytes=1024)  # a 3-record batch is 136 bytes: a roll every 7 batches


class ScarceOps(FileOps):
    """Opens (files and folders) fail with ``code`` while ``flood`` is set, or when ``limit``
    descriptors are already open through this double."""

    def __init__(self, limit: int | None = None, code: int = errno.EMFILE) -> None:
        self.limit = limit
        self.code = code
        self.flood = False
        self.open_fds: set[int] = set()
        self.refused = 0

    def _check(self, path: str) -> None:
        if self.flood or (self.limit is not None and len(self.open_fds) >= self.limit):
            self.refused += 1
            raise OSError(self.code, os.strerror(self.code), path)

    def open(self, path: str, *, create: bool = False) -> int:
        self._check(path)
        fd = super().open(path, create=create)
        self.open_fds.add(fd)
        return fd

    def close(self, fd: int) -> None:
        self.open_fds.discard(fd)
        super().close(fd)

    def fsync_dir(self, path: str) -> None:
        self._check(path)  # it opens the folder, which takes a descriptor for a moment
        super().fsync_dir(path)


def test_a_shortage_is_met_by_closing_idle_descriptors(tmp_path: Path) -> None:
    """Other logs' idle descriptors are closed to make room: no error reaches the caller."""
    ops = ScarceOps(limit=2)
    with FileStore(tmp_path, ops=ops, max_open_files=256) as store:
        logs = [store.open_log(f"t/{p}", SMALL) for p in range(4)]
        for round_ in range(12):  # rolls segments: creates, fsyncs and reads every log
            for p, log in enumerate(logs):
                log.append(batch(1000 * p + 3 * round_, 3), T0)
                log.sync()
        assert ops.refused > 0 and store.fd_cache.sheds > 0
        for p, log in enumerate(logs):
            assert not log.failed
            assert all_bodies(log) == [b for r in range(12) for b in bodies(1000 * p + 3 * r, 3)]
        assert len(ops.open_fds) <= 2


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM])
def test_a_descriptor_flood_is_retriable_and_never_fails_the_log(tmp_path: Path, code: int) -> None:
    ops = ScarceOps(code=code)
    store = FileStore(tmp_path, ops=ops)
    log = store.open_log("t/0", SMALL)
    for i in range(5):
        log.append(batch(3 * i, 3), T0)
    log.sync()
    log.append(batch(15, 3), T0)  # appended, not yet synced
    store.fd_cache.shed_idle()  # as if other partitions' traffic had pushed it out
    ops.flood = True
    for call in (
        lambda: log.append(batch(18, 3), T0),
        log.sync,
        lambda: log.read(0),
        lambda: [log.append(batch(18, 3), T0) for _ in range(8)],  # would roll a segment
    ):
        with pytest.raises(ResourceExhausted, match="out of file descriptors") as err:
            call()
        assert "stays usable" in str(err.value) and "failed state" not in str(err.value)
        assert not log.failed and not log.statistics().failed
    assert log.end_offset == 18 and log.synced_position == 15  # nothing half done
    ops.flood = False  # the flood is over: the same log works again, without reopening
    for i in range(6, 12):
        log.append(batch(3 * i, 3), T0)
    log.sync()
    assert log.synced_position == 36
    assert all_bodies(log) == bodies(0, 36)
    store.close()
    with FileStore(tmp_path) as again:
        reopened = again.open_log("t/0", SMALL)
        assert reopened.recovery.clean
        assert all_bodies(reopened) == bodies(0, 36)


def test_opening_a_log_during_a_flood_fails_and_succeeds_later(tmp_path: Path) -> None:
    ops = ScarceOps()
    with FileStore(tmp_path, ops=ops) as store:
        store.open_log("t/0", SMALL).append(batch(0, 3), T0)
        store.open_log("t/0").close()
        ops.flood = True
        with pytest.raises(ResourceExhausted, match="out of file descriptors"):
            store.open_log("t/0", SMALL)
        with pytest.raises(ResourceExhausted, match="out of file descriptors"):
            store.open_log("t/1", SMALL)
        ops.flood = False
        assert all_bodies(store.open_log("t/0", SMALL)) == bodies(0, 3)
        store.open_log("t/1", SMALL).append(batch(0, 3), T0)


def test_a_checkpoint_without_a_descriptor_is_skipped_and_written_later(tmp_path: Path) -> None:
    ops = ScarceOps()
    log = FileLog(tmp_path, SMALL, ops=ops)
    for i in range(10):  # rolls: the next sync wants the new segment's name durable
        log.append(batch(3 * i, 3), T0)
    real = ops.fsync_dir
    dir_fsyncs: list[str] = []

    def refuse_dir(path: str) -> None:
        raise OSError(errno.EMFILE, "Too many open files", path)

    def refuse_after_first(path: str) -> None:
        dir_fsyncs.append(path)
        if len(dir_fsyncs) > 1:
            refuse_dir(path)
        real(path)

    ops.fsync_dir = refuse_dir  # type: ignore[method-assign]
    with pytest.raises(ResourceExhausted, match="out of file descriptors"):
        log.sync()  # the folder entry of the new segment is not durable: not synced
    assert not log.failed and log.synced_position == 0
    checkpoints = log.statistics().checkpoints
    ops.fsync_dir = refuse_after_first  # type: ignore[method-assign]
    log.sync()  # the data and folder are synced; only the checkpoint's folder fsync fails
    assert not log.failed and log.synced_position == 30
    assert log.statistics().checkpoints == checkpoints  # skipped, not failed
    ops.fsync_dir = real  # type: ignore[method-assign]
    log.close()  # writes it
    assert log.statistics().checkpoints == checkpoints + 1
    reopened = FileLog(tmp_path, SMALL)
    assert reopened.recovery.clean and all_bodies(reopened) == bodies(0, 30)
    reopened.close()


CHILD = textwrap.dedent(
    """
    import errno, os, resource, sys
    from tidemq.errors import ResourceExhausted
    from tidemq.storage import FileStore, LogConfig, encode_bodies

    store = FileStore(sys.argv[1])
    log = store.open_log("t/0", LogConfig(segment_bytes=1024, durability="always"))
    stored = []

    def publish(n):
        res = log.append(encode_bodies([b"%d" % n]), 1)
        log.sync(res.position)
        stored.append(n)

    for n in range(5):
        publish(n)
    res = log.append(encode_bodies([b"5"]), 1)  # its fsync will come during the flood
    store.fd_cache.shed_idle()  # the partition's descriptor went to other traffic
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, len(os.listdir("/proc/self/fd")) + 16), hard))
    flood = []
    try:
        while True:
            flood.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc
    refused = 0
    try:
        log.sync(res.position)
    except ResourceExhausted as exc:
        assert "out of file descriptors" in str(exc), exc
        refused += 1
    for n in range(6, 15):  # every open now fails, as under a connection flood
        try:
            publish(n)
        except ResourceExhausted as exc:
            assert "out of file descriptors" in str(exc), exc
            refused += 1
    failed_during = log.failed
    for fd in flood:
        os.close(fd)
    log.sync(res.position)  # the flood is over: the same log syncs ...
    stored.append(5)
    for n in range(100, 105):  # ... and takes new publishes
        publish(n)
    store.close()
    print(refused, failed_during, ",".join(map(str, stored)), flush=True)
    """
)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_real_descriptor_limit_does_not_poison_the_log(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    refused, failed_during, stored = out.stdout.split()
    assert failed_during == "False"
    assert int(refused) == 10  # the log refused while no descriptor was free ...
    expected = [str(n) for n in (*range(6), *range(100, 105))]
    assert stored.split(",") == expected  # ... and took every publish after the flood
    with FileStore(tmp_path) as store:
        log = store.open_log("t/0")
        assert log.recovery.clean
        assert [b.decode() for b in all_bodies(log)] == expected


def test_a_checkpoint_unreadable_for_want_of_descriptors_is_not_taken_for_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every segment gone, only the checkpoint knows where offsets go on (D8): failing to
    read it for want of a descriptor must fail the open, not restart the log at offset 0."""
    log = FileLog(tmp_path, SMALL)
    for i in range(4):
        log.append(batch(3 * i, 3), T0)
    log.close()
    for p in tmp_path.glob("0*"):
        p.unlink()

    def no_descriptor(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("tidemq.storage._recovery.open", no_descriptor, raising=False)
    with pytest.raises(ResourceExhausted, match="out of file descriptors"):
        FileLog(tmp_path, SMALL)
    monkeypatch.undo()
    reopened = FileLog(tmp_path, SMALL)
    assert reopened.end_offset == 12  # offsets are never reused
    reopened.close()
