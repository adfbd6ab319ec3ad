"""``FileLog``: one partition's append-only log on disk (segments, indexes, recovery, sync).

Threading: the driver calls everything from one thread, except ``sync``, which may run in
other threads at the same time as ``append``. ``_lock`` guards only bookkeeping (sizes,
offsets, lists) and is never held across an fsync; ``_sync_lock`` lets one thread fsync at a
time while the others wait and then find their position already covered: group commit (D5).

A ``never`` log fsyncs only in ``sync`` and ``close``: opening one writes no fsync, even when
it creates the log's folders or recovery cuts a torn tail; that work waits for the first
``sync``/``close`` (D5, D6). Running out of descriptors raises ``ResourceExhausted`` without the
failed state: nothing was written, and the same call succeeds once descriptors are free.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence

from tidemq.errors import (
    Closed,
    CorruptRecord,
    DiskFull,
    InvalidArgument,
    ResourceExhausted,
    StorageFailed,
)
from tidemq.storage._atomic import atomic_write
from tidemq.storage._fdcache import DescriptorsExhausted, FdCache
from tidemq.storage._fileops import DEFAULT_OPS, FileOps, is_disk_full, make_dirs, write_all
from tidemq.storage._format import (
    HAS_PRIORITY,
    HEADER_SIZE,
    BatchView,
    Record,
    encode_stamped,
    stamp,
    verify_for_append,
)
from tidemq.storage._index import SegmentIndex
from tidemq.storage._policy import SegmentInfo, retention_victims, should_roll
from tidemq.storage._record import _ATTRIBUTES_AT
from tidemq.storage._recovery import (
    CHECKPOINT,
    Checkpoint,
    Segment,
    encode_checkpoint,
    recover,
    segment_name,
)
from tidemq.storage._scan import Damage, iter_batches
from tidemq.storage._types import (
    AppendResult,
    CorruptionEvent,
    Durability,
    LogConfig,
    LogStatistics,
    RecoveryReport,
)

__all__ = ["FileLog"]

log = logging.getLogger("tidemq.storage")

_READ_SLACK = 64 << 10
_tuple_new = tuple.__new__
_MAX_EVENTS = 100
_BUSY_WARN_EVERY_S = 10.0
#: D12: how far an ``always`` log's active segment is preallocated past its data: as much as
#: the segment already holds, at least ``_PREALLOCATE_MIN`` and at most ``_PREALLOCATE_MAX``
#: (and never past ``segment_bytes``). An fdatasync after an append inside the preallocated
#: part commits no new file size, which costs an ext4 journal commit (commit 6ab8b27: A/B).
_PREALLOCATE_MIN = 64 << 10
_PREALLOCATE_MAX = 4 << 20
_NO_PREALLOCATION = 1 << 62  # Segment.allocated after a preallocation failed: not tried again


class FileLog:
    """A partition log in ``directory`` (created if missing); recovers on construction.

    ``recovery`` says what opening found and cut. Public methods raise only TideMQ errors:
    ``StorageFailed`` once a write or fsync failed (the failed state stays set, D9), or when
    no file descriptor was free (no failed state: retry later; ``failed`` stays False),
    ``DiskFull`` when an append found no space (nothing of it kept; retry later, D10),
    ``CorruptRecord`` from reads when ``on_corruption="fail"``, ``Closed`` after ``close``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        config: LogConfig | None = None,
        *,
        fds: FdCache | None = None,
        ops: FileOps = DEFAULT_OPS,
    ) -> None:
        self._dir = os.fspath(directory)
        self._config = config or LogConfig()
        self._ops = ops
        # The append's write: os.pwritev itself when ops is the plain FileOps (a Python frame
        # fewer per append); a subclass's own pwritev (tests inject faults there) otherwise.
        self._pwritev = os.pwritev if type(ops) is FileOps else ops.pwritev
        self._own_fds = fds is None
        self._fds = fds if fds is not None else FdCache(ops=ops)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._failed: str | None = None
        self._closed = False
        self._appends = 0
        self._fsyncs = 0
        self._checkpoints = 0
        self._events: list[CorruptionEvent] = []
        self._seen_damage: set[tuple[int, int]] = set()
        self._busy_warned = -_BUSY_WARN_EVERY_S
        # D5: a never log is fsynced by sync() and close() only. What opening would fsync
        # (new folders' entries, recovery's cut, the scanned tail) waits for the first of them.
        lazy = self._config.durability == "never"
        try:
            # D6: each folder created here is an entry in its parent; the parent is fsynced
            # so the folder, and the log in it, survive a power cut.
            parents = [os.path.dirname(d) for d in make_dirs(ops, self._dir)]
            if not lazy:
                for parent in parents:
                    self._fsync_dir(parent)
            rec = recover(self._dir, self._config, ops, self._fds, durable=not lazy)
        except DescriptorsExhausted as exc:
            raise self._busy(f"cannot open log {self._dir}", exc) from exc
        except OSError as exc:
            raise StorageFailed(f"cannot open log {self._dir}: {exc}") from exc
        self._segments: list[Segment] = rec.segments
        self._bases = [s.base_offset for s in self._segments]
        self._end_offset = rec.end_offset
        self._prio_free_from = rec.end_offset  # what recovery found is not known (see below)
        self._last_ts = rec.last_ts
        self._recovery: RecoveryReport = rec.report
        self._unsynced_sealed: list[Segment] = []
        self._dir_dirty = False
        # Folders whose entries a lazy open left unsynced, and whether it left anything.
        self._pending_dirs: list[str] = []
        self._deferred = False
        self._active_index()  # the active segment's index is always in memory
        self._synced = self._end_offset
        cp = rec.checkpoint
        self._cp_segment = cp.segment if cp is not None else -1
        self._cp_position = cp.position if cp is not None else -1
        if (
            rec.dirty
            or self._recovery.reason
            or not os.path.exists(os.path.join(self._dir, CHECKPOINT))
        ):
            if lazy:
                # Only what the checkpoint vouched for is known durable; the first sync or
                # close fsyncs the rest, the folders and the cut, then checkpoints (D3, D5).
                self._synced = min(rec.trusted_offset, self._end_offset)
                active = self._segments[-1]
                self._unsynced_sealed = [s for s in rec.dirty if s is not active]
                self._pending_dirs = parents
                self._dir_dirty = True
                self._deferred = True
                self._cp_segment = -1
            else:
                # The scanned tail came from the page cache: make it durable, then vouch for
                # it with a checkpoint so the next open need not scan it again (D3).
                try:
                    for s in rec.dirty:
                        self._fsync_segment(s)
                    self._write_checkpoint()
                except DescriptorsExhausted as exc:
                    raise self._busy(f"cannot open log {self._dir}", exc) from exc
                except OSError as exc:
                    raise StorageFailed(f"cannot open log {self._dir}: {exc}") from exc

    # --- properties ------------------------------------------------------------------------

    @property
    def config(self) -> LogConfig:
        return self._config

    @config.setter
    def config(self, config: LogConfig) -> None:
        """Retention and roll settings apply from the next call on."""
        self._config = config

    @property
    def durability(self) -> Durability:
        """The level the driver should honour: ``always`` = sync before confirming (D5)."""
        return self._config.durability

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def start_offset(self) -> int:
        return self._bases[0]

    @property
    def end_offset(self) -> int:
        return self._end_offset

    @property
    def priority_free_from(self) -> int:
        return self._prio_free_from

    @property
    def synced_position(self) -> int:
        """Everything before this position (offset) is durable."""
        return self._synced

    @property
    def needs_sync(self) -> bool:
        """True when appends were made since the last completed sync."""
        return self._synced < self._end_offset

    @property
    def failed(self) -> bool:
        return self._failed is not None

    @property
    def recovery(self) -> RecoveryReport:
        return self._recovery

    @property
    def corruption_events(self) -> tuple[CorruptionEvent, ...]:
        """Damaged batches that reads skipped (the last 100), oldest first."""
        return tuple(self._events)

    # --- append ----------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise Closed(f"log {self._dir} is closed")
        if self._failed is not None:
            raise StorageFailed(
                f"log {self._dir} is in the failed state after: {self._failed}; "
                "fix the disk and reopen the store"
            )

    def _fail(self, what: str, exc: OSError) -> StorageFailed:
        # D9: after a failed write or fsync we no longer know what the file holds, so no
        # later write or sync may pretend it is safe.
        self._failed = f"{what}: {exc}"
        log.error("log %s entered the failed state: %s", self._dir, self._failed)
        return StorageFailed(
            f"log {self._dir}: {what} failed ({exc}); the log refuses writes until reopened"
        )

    def _busy(self, what: str, exc: OSError) -> ResourceExhausted:
        # Not D9: an open that found no free descriptor (or kernel memory) wrote nothing, so
        # the log knows exactly what is on disk and stays usable: a retriable error.
        now = time.monotonic()
        if now - self._busy_warned >= _BUSY_WARN_EVERY_S:
            self._busy_warned = now
            log.warning("log %s: %s: out of file descriptors: %s", self._dir, what, exc)
        return ResourceExhausted(
            f"log {self._dir}: {what}: out of file descriptors ({exc.strerror}); nothing was "
            "written and the log stays usable: retry shortly. If this persists, raise the "
            "open-files limit (ulimit -n) or lower max_open_files"
        )

    def append(self, batch: bytes | bytearray | memoryview, now_us: int, *,
               verified: BatchView | None = None) -> AppendResult:
        """Append one encoded batch as it came: verified (body CRC included), stamped, written.
        ``verified``: the caller's own ``verify(batch)`` of these very bytes (not verified
        twice).

        Sets base offset and timestamp (``max(now_us, last timestamp)``, so timestamps never
        go backwards) and re-seals the header; the body is written from the caller's buffer
        without copying or re-encoding. Returns where it went; it is durable only after
        ``sync(result.position)`` (D5). Raises ``InvalidArgument`` for a batch that does not
        verify (nothing stored), ``DiskFull``, ``StorageFailed``, ``Closed``.
        """
        self._check_writable()
        view = verify_for_append(batch, verified)
        base = self._end_offset
        last = self._last_ts
        ts = now_us if now_us > last else last
        header = bytearray(memoryview(batch)[:HEADER_SIZE])
        stamp(header, base, ts)  # D1: only broker fields and the header CRC change
        result = self._write((header, memoryview(batch)[HEADER_SIZE:]), view.size, view.count,
                             base, ts, now_us)
        if view.max_priority:
            self._prio_free_from = self._end_offset
        return result

    def append_records(
        self,
        records: Sequence[Record],
        now_us: int,
        *,
        producer_id: int = -1,
        producer_epoch: int = 0,
        base_sequence: int = -1,
    ) -> AppendResult:
        """Encode ``records`` into one batch and append it (see ``append``).

        The log encodes the batch itself, with its base offset and timestamp already in the
        header (``encode_stamped``), so it is well formed by construction and is written
        without the re-verification a batch from outside gets. The result is byte for byte
        what ``append(encode_batch(records), now_us)`` stores (D1).
        """
        base = self._end_offset
        last = self._last_ts
        ts = now_us if now_us > last else last
        if producer_id == -1 and producer_epoch == 0 and base_sequence == -1:
            batch = encode_stamped(records, base, ts)  # the defaults: no keywords to pass
        else:
            batch = encode_stamped(
                records,
                base,
                ts,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                base_sequence=base_sequence,
            )
        if self._closed or self._failed is not None:
            self._check_writable()
        result = self._write((batch,), len(batch), len(records), base, ts, now_us)
        if batch[_ATTRIBUTES_AT] & HAS_PRIORITY:  # the encoder sets it when a priority is > 0
            self._prio_free_from = self._end_offset
        return result

    def _write(
        self,
        buffers: tuple[bytes | bytearray | memoryview, ...],
        size: int,
        count: int,
        base: int,
        ts: int,
        now_us: int,
    ) -> AppendResult:
        """Write a stamped batch of ``size`` bytes at the end of the active segment (rolling
        first if due) and account for it. Called from the append thread only."""
        seg = self._segments[-1]
        pos = seg.size
        index = seg.index
        first_ts = index.first_ts if index is not None else -1
        cfg = self._config
        # should_roll decides; it can only say yes when the batch would overflow the segment
        # or the segment's first batch is old enough, so it is asked only then.
        maybe = pos + size > cfg.segment_bytes or (
            first_ts >= 0 and now_us - first_ts >= cfg.segment_ms * 1000
        )
        if maybe and should_roll(cfg, pos, first_ts if first_ts >= 0 else None, size, now_us):
            self._roll()
            seg = self._segments[-1]
            pos = seg.size
        path = seg.path
        if pos + size > seg.allocated and cfg.durability == "always":
            self._preallocate(seg, pos + size)
        done: int | OSError | None
        try:
            # The usual case: the segment's descriptor is cached and one pwritev writes the
            # whole batch, run under the cache's lock instead of a pin (FdCache.call_cached).
            done = self._fds.call_cached(path, self._pwritev, buffers, pos)
        except OSError as exc:
            done = exc
        if done != size:
            self._write_rest(path, buffers, size, pos, done)
        nxt = base + count
        index = seg.index
        assert index is not None
        with self._lock:
            index.add(base, nxt, pos, size, ts)
            seg.size = pos + size
            self._end_offset = nxt
            self._last_ts = ts
            self._appends += 1
        # tuple.__new__: the NamedTuple without its Python-level __new__ (per-message path).
        return _tuple_new(AppendResult, (base, nxt - 1, nxt))

    def _write_rest(
        self,
        path: str,
        buffers: tuple[bytes | bytearray | memoryview, ...],
        size: int,
        pos: int,
        done: int | OSError | None,
    ) -> None:
        """Finish ``_write``'s pwritev of ``size`` bytes at ``pos`` when its one call did not
        write them all: ``done`` None (the descriptor was not cached: nothing written yet),
        a byte count (a short write, rare) or the call's error. Raises as the write failed."""
        fds = self._fds
        try:
            fd = fds.acquire(path)  # self._acquire, inlined
        except OSError as exc:
            if done is not None:
                # Part of the batch may be in the file and cannot be cut back without a
                # descriptor: the log must not carry on as if it were not (D9).
                raise self._fail("write", done if isinstance(done, OSError) else exc) from None
            if isinstance(exc, DescriptorsExhausted):
                raise self._busy(f"appending to segment {path}", exc) from None
            raise StorageFailed(f"log {self._dir}: cannot open segment {path}: {exc}") from None
        try:
            ops = self._ops
            if isinstance(done, OSError):
                raise done
            if done is None:
                done = ops.pwritev(fd, buffers, pos)
            if done != size:
                # A short write (rare): finish the rest with the looping helper.
                write_all(ops, fd, (memoryview(b"".join(buffers))[done:],), pos + done)
        except OSError as exc:
            if is_disk_full(exc):
                self._undo_partial(fd, pos, exc)
                raise DiskFull(
                    f"log {self._dir}: no space left for a {size}-byte batch; nothing of it was "
                    "kept. Free disk space: appends resume by themselves"
                ) from None
            raise self._fail("write", exc) from None
        finally:
            fds.release(path, fd)

    def _undo_partial(self, fd: int, pos: int, exc: OSError) -> None:
        # D10: cut what part of the batch reached the file so the segment ends on a batch.
        try:
            self._ops.ftruncate(fd, pos)
        except OSError as exc2:
            raise self._fail("truncating a partial write", exc2) from exc
        active = self._active
        if active.allocated != _NO_PREALLOCATION:  # (a failed one stays given up: no retries)
            active.allocated = min(active.allocated, pos)  # the cut dropped the preallocation

    def _preallocate(self, seg: Segment, end: int) -> None:
        """D12: make the active segment's file longer than ``end`` (its data after the append
        about to be written). Only a speed-up: when it fails (a full disk, a filesystem
        without ``fallocate``) the write goes ahead alone and meets any real error itself,
        and this segment is not preallocated again."""
        want = end + min(max(_PREALLOCATE_MIN, end), _PREALLOCATE_MAX)
        want = max(end, min(want, self._config.segment_bytes))
        try:
            fd = self._fds.acquire(seg.path)
        except OSError:
            return  # the write acquires it again and reports what is wrong
        try:
            self._ops.preallocate(fd, want)
            seg.allocated = want
        except OSError as exc:
            seg.allocated = _NO_PREALLOCATION
            unsupported = exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
            log.log(logging.DEBUG if unsupported else logging.WARNING,
                    "log %s: cannot preallocate segment %d (%s); appending without",
                    self._dir, seg.base_offset, exc)
        finally:
            self._fds.release(seg.path, fd)

    def _trim(self, seg: Segment) -> bool:
        """D12: cut a preallocated segment back to its data (sealing it, or at close); an
        error is the truncate's own (D9 for the caller). True if the file changed."""
        if seg.allocated <= seg.size:
            return False
        fd = self._fds.acquire(seg.path)
        try:
            self._ops.ftruncate(fd, seg.size)
        finally:
            self._fds.release(seg.path, fd)
        seg.allocated = seg.size
        return True

    def _active_first_ts(self) -> int | None:
        idx = self._active.index
        return idx.first_ts if idx is not None and idx.first_ts >= 0 else None

    @property
    def _active(self) -> Segment:
        return self._segments[-1]

    def _roll(self) -> None:
        """Seal the active segment and start a new one at the end offset (D6)."""
        old = self._active
        try:
            self._trim(old)  # fsynced with the sealed segment by the next sync (D6, D12)
        except DescriptorsExhausted as exc:
            raise self._busy("sealing a segment", exc) from None
        except OSError as exc:
            raise self._fail("trimming a sealed segment", exc) from None
        base = self._end_offset
        stem = os.path.join(self._dir, segment_name(base))
        try:
            self._ops.close(self._fds.open_new(stem + ".log"))
        except DescriptorsExhausted as exc:
            raise self._busy("starting a new segment", exc) from None
        except FileExistsError:
            # Only an empty file may be taken over; anything else would reuse offsets (D8).
            if os.path.getsize(stem + ".log") != 0:
                raise self._fail(
                    "creating a segment", FileExistsError(f"{stem}.log exists and is not empty")
                ) from None
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(
                    f"log {self._dir}: no space to start a new segment; free disk space"
                ) from None
            raise self._fail("creating a segment", exc) from None
        new = Segment(
            base, stem + ".log", stem, 0, SegmentIndex(base, self._config.index_interval_bytes)
        )
        new.index_checked = True
        with self._lock:
            self._segments.append(new)
            self._bases.append(base)
            self._unsynced_sealed.append(old)
            self._dir_dirty = True
        if old.index is not None:
            try:
                old.index.save(old.stem)  # D4: derived, self-checking; no fsync needed
            except OSError as exc:
                log.warning(
                    "log %s: could not save index of segment %d: %s",
                    self._dir,
                    old.base_offset,
                    exc,
                )

    # --- sync ------------------------------------------------------------------------------

    def sync(self, position: int | None = None) -> None:
        """Make every batch before ``position`` (default: all appended so far) durable.

        Thread-safe, also against a concurrent ``append``; concurrent callers share one fsync.
        Returns at once when ``position`` is already durable. Raises ``StorageFailed`` (and
        enters the failed state) if an fsync fails, ``Closed`` after ``close`` for a position
        not yet durable.
        """
        if self._failed is not None or self._closed:
            self._check_writable()
        if position is not None and position <= self._synced:
            return
        with self._sync_lock:
            if position is not None and position <= self._synced:
                return  # another thread's fsync covered us: group commit
            self._check_writable()
            with self._lock:
                target = self._end_offset
                deferred = self._deferred
                if target <= self._synced and not deferred:
                    return
                active = self._active
                todo = [*self._unsynced_sealed, active]
                size = active.size
                max_ts = self._last_ts
                dir_dirty = self._dir_dirty
                self._dir_dirty = False
                pending_dirs = list(self._pending_dirs)
            try:
                for s in todo:
                    self._fsync_segment(s)
                for folder in pending_dirs:
                    self._fsync_dir(folder)  # D6: a lazily opened log's new folders
                if dir_dirty:
                    self._fsync_dir(self._dir)  # D6: new segment files survive power loss
            except DescriptorsExhausted as exc:
                with self._lock:
                    self._dir_dirty = self._dir_dirty or dir_dirty
                raise self._busy("sync", exc) from None
            except OSError as exc:
                raise self._fail("fsync", exc) from None
            with self._lock:
                self._synced = max(self._synced, target)
                self._unsynced_sealed = [s for s in self._unsynced_sealed if s not in todo]
                if deferred:
                    self._deferred = False
                    self._pending_dirs = []
            if (
                active.base_offset != self._cp_segment
                or size - self._cp_position >= self._config.checkpoint_bytes
            ):
                self._checkpoint(active, size, target, max_ts)

    def _fsync_segment(self, seg: Segment) -> None:
        """fsync one segment. ``DescriptorsExhausted`` if it cannot be opened (nothing done);
        any other ``OSError`` is the fsync's own (D9 for the caller)."""
        try:
            fd = self._fds.acquire(seg.path)
        except FileNotFoundError:
            return  # deleted by retention meanwhile: nothing left to make durable
        try:
            self._ops.fsync(fd)
            self._fsyncs += 1
        finally:
            self._fds.release(seg.path, fd)

    def _fsync_dir(self, folder: str) -> None:
        # Opening the folder can run out of descriptors like any open: see FdCache.
        self._fds.with_descriptor(lambda: self._ops.fsync_dir(folder))

    def _checkpoint(self, seg: Segment, size: int, end: int, max_ts: int) -> None:
        """Record that [0, size) of ``seg`` is synced (D3), with its index as of then."""
        index = seg.index
        if index is not None:
            with self._lock:
                snap = index.snapshot(size, end, max_ts)
            try:
                snap.save(seg.stem)
            except OSError as exc:
                log.warning("log %s: could not save an index: %s", self._dir, exc)
        path = os.path.join(self._dir, CHECKPOINT)
        data = encode_checkpoint(Checkpoint(1, seg.base_offset, size, end, max_ts))
        try:
            self._fds.with_descriptor(lambda: atomic_write(path, data, ops=self._ops))
        except DescriptorsExhausted as exc:
            # Like a full disk: the data is synced, only the shortcut is missing; the next
            # sync or close writes it (and an open meanwhile just scans more).
            log.warning("log %s: no descriptor for a checkpoint (%s); will retry", self._dir, exc)
            return
        except OSError as exc:
            if is_disk_full(exc):
                # The data is synced; only the shortcut for the next recovery is missing.
                log.warning("log %s: no space for a checkpoint; will retry", self._dir)
                return
            raise self._fail("writing a checkpoint", exc) from None
        self._cp_segment = seg.base_offset
        self._cp_position = size
        self._checkpoints += 1

    def _write_checkpoint(self) -> None:
        active = self._active
        self._fsync_dir(self._dir)
        self._checkpoint(active, active.size, self._end_offset, self._last_ts)

    # --- read ------------------------------------------------------------------------------

    def _acquire(self, seg: Segment) -> int:
        try:
            return self._fds.acquire(seg.path)
        except DescriptorsExhausted as exc:
            raise self._busy(f"reading segment {seg.path}", exc) from None
        except OSError as exc:
            raise StorageFailed(f"log {self._dir}: cannot open segment {seg.path}: {exc}") from None

    def _active_index(self) -> SegmentIndex:
        idx = self._index_of(self._active)
        return idx

    def _index_of(self, seg: Segment) -> SegmentIndex:
        """The segment's index: in memory, else from its files if valid, else rebuilt (D4)."""
        if seg.index is not None:
            return seg.index
        interval = self._config.index_interval_bytes
        idx = SegmentIndex.load(seg.stem, seg.base_offset, interval, seg.size)
        if idx is None or idx.covered < seg.size:
            start = idx if idx is not None else SegmentIndex(seg.base_offset, interval)
            idx = self._scan_index(seg, start)
            try:
                idx.save(seg.stem)
            except OSError as exc:
                log.warning("log %s: could not save a rebuilt index: %s", self._dir, exc)
        seg.index = idx
        return idx

    def _scan_index(self, seg: Segment, idx: SegmentIndex) -> SegmentIndex:
        """Extend ``idx`` over the rest of the segment from headers (bodies are checked on read)."""
        fd = self._acquire(seg)
        try:
            for at, b in iter_batches(
                self._ops,
                fd,
                idx.covered,
                seg.size,
                idx.next_offset,
                check_body=False,
                chunk=8 << 20,
            ):
                idx.add(b.base_offset, b.last_offset + 1, at, b.size, b.max_timestamp_us)
        except Damage as d:
            log.warning(
                "log %s: index rebuild of segment %d stopped %s", self._dir, seg.base_offset, d
            )
        except OSError as exc:
            raise StorageFailed(f"log {self._dir}: cannot read {seg.path}: {exc}") from None
        finally:
            self._fds.release(seg.path, fd)
        seg.index_checked = True
        return idx

    def read(
        self, offset: int, max_records: int = 1000, max_bytes: int = 1 << 20
    ) -> list[BatchView]:
        """Verified batches from the one holding ``offset`` on, in offset order.

        The first batch may start before ``offset``; an offset before ``start_offset`` reads
        from the start. Stops after ``max_records`` records or ``max_bytes`` bytes, but returns
        at least one batch if any exists. A damaged batch is never returned (D7): it is
        reported in ``corruption_events`` and skipped, or raises ``CorruptRecord`` when
        ``on_corruption="fail"``. Views point into fresh read buffers (``raw`` is a memoryview).
        """
        if self._closed:
            raise Closed(f"log {self._dir} is closed")
        if max_records < 1 or max_bytes < 1:
            raise InvalidArgument("max_records and max_bytes must be >= 1")
        out: list[BatchView] = []
        offset = max(offset, self._bases[0])
        if offset >= self._end_offset:
            return out
        i = bisect_right(self._bases, offset) - 1
        budget = [max_records, max_bytes]
        while i < len(self._segments):
            seg = self._segments[i]
            if self._read_segment(seg, offset, out, budget):
                break
            i += 1
        return out

    def _read_segment(
        self, seg: Segment, offset: int, out: list[BatchView], budget: list[int]
    ) -> bool:
        """Append batches of ``seg`` to ``out``; True once the budget is spent."""
        limit = seg.size
        pos, at_offset = (
            self._index_of(seg).lookup(offset) if offset > seg.base_offset else (0, seg.base_offset)
        )
        expected: int | None = at_offset
        first_pos = pos
        retried = False
        fd = self._acquire(seg)
        try:
            while pos < limit:
                try:
                    chunk = budget[1] + self._config.index_interval_bytes + _READ_SLACK
                    for at, batch in iter_batches(
                        self._ops, fd, pos, limit, expected, check_body=True, chunk=chunk
                    ):
                        pos = at + batch.size
                        expected = batch.last_offset + 1
                        if batch.last_offset < offset:
                            continue
                        if out and batch.size > budget[1]:
                            return True
                        out.append(batch)
                        budget[0] -= batch.count
                        budget[1] -= batch.size
                        if budget[0] <= 0 or budget[1] <= 0:
                            return True
                    return False
                except Damage as d:
                    if d.position == first_pos and not seg.index_checked and not retried:
                        # The index sent us to a place that is not the batch it named: the
                        # index is wrong (D4), not the data. Rebuild it and look again.
                        retried = True
                        seg.index = self._scan_index(
                            seg, SegmentIndex(seg.base_offset, self._config.index_interval_bytes)
                        )
                        pos, expected = seg.index.lookup(offset)
                        first_pos = -1
                        continue
                    pos = self._skip_damage(seg, d, expected, limit)
                    expected = None
            return False
        except OSError as exc:
            raise StorageFailed(f"log {self._dir}: cannot read {seg.path}: {exc}") from None
        finally:
            self._fds.release(seg.path, fd)

    def _skip_damage(self, seg: Segment, d: Damage, expected: int | None, limit: int) -> int:
        """Report a damaged batch and return where reading goes on (D7)."""
        where = f"log {self._dir}, segment {seg.base_offset}, byte {d.position}"
        if self._config.on_corruption == "fail":
            raise CorruptRecord(
                f"{where}: {d.reason}; the partition stops here (on_corruption='fail'). "
                "Restore the segment or set on_corruption='skip'"
            )
        if d.length is not None:
            nxt = d.position + d.length
        else:
            # The header itself is damaged, so its length is not to be trusted: go on at the
            # next batch the index knows, or give up the rest of this segment.
            entry = self._index_of(seg).next_entry_after(d.position)
            nxt = entry if entry is not None else limit
        key = (seg.base_offset, d.position)
        if key not in self._seen_damage:
            self._seen_damage.add(key)
            event = CorruptionEvent(
                seg.base_offset,
                d.position,
                nxt - d.position,
                expected if expected is not None else -1,
                d.reason,
            )
            self._events.append(event)
            del self._events[:-_MAX_EVENTS]
            log.error("%s: damaged batch skipped, never served: %s", where, d.reason)
        return nxt

    # --- time, retention -------------------------------------------------------------------

    def offset_for_time(self, ts_us: int) -> int | None:
        """First offset whose batch timestamp is >= ``ts_us`` (None: none yet)."""
        if self._closed:
            raise Closed(f"log {self._dir} is closed")
        segs = self._segments
        lo, hi = 0, len(segs)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._index_of(segs[mid]).max_ts >= ts_us:
                hi = mid
            else:
                lo = mid + 1
        if lo == len(segs):
            return None
        seg = segs[lo]
        pos, expected = self._index_of(seg).lookup_time(ts_us)
        for batch in self._headers(seg, pos, expected):
            if batch.max_timestamp_us >= ts_us:
                return max(batch.base_offset, self._bases[0])
        return segs[lo + 1].base_offset if lo + 1 < len(segs) else None

    def _headers(self, seg: Segment, pos: int, expected: int | None) -> Iterator[BatchView]:
        fd = self._acquire(seg)
        try:
            while pos < seg.size:
                try:
                    for at, batch in iter_batches(
                        self._ops, fd, pos, seg.size, expected, check_body=True, chunk=1 << 20
                    ):
                        pos = at + batch.size
                        yield batch
                    return
                except Damage as d:
                    pos = self._skip_damage(seg, d, expected, seg.size)
                    expected = None
        finally:
            self._fds.release(seg.path, fd)

    def apply_retention(self, now_us: int, keep_from: int | None = None) -> int:
        """Delete whole old segments by age/size; returns how many were deleted.

        Never the active segment, never one holding an offset >= ``keep_from``.
        """
        if self._closed:
            raise Closed(f"log {self._dir} is closed")
        segs = self._segments

        def sealed() -> Iterator[SegmentInfo]:
            for k in range(len(segs) - 1):
                max_ts = (
                    self._index_of(segs[k]).max_ts if self._config.retention_ms is not None else -1
                )
                yield SegmentInfo(
                    segs[k].base_offset, segs[k + 1].base_offset, segs[k].size, max_ts
                )

        victims = retention_victims(
            self._config, sealed(), sum(s.size for s in segs), now_us, keep_from
        )
        for _ in range(victims):
            seg = self._segments[0]
            with self._lock:
                del self._segments[0]
                del self._bases[0]
                self._unsynced_sealed = [s for s in self._unsynced_sealed if s is not seg]
            self._fds.forget(seg.path)
            try:
                os.unlink(seg.path)  # the log first: an index without a log is cleaned at open
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("log %s: could not delete %s: %s", self._dir, seg.path, exc)
            SegmentIndex.remove(seg.stem)
        return victims

    # --- misc ------------------------------------------------------------------------------

    def statistics(self) -> LogStatistics:
        with self._lock:
            return LogStatistics(
                start_offset=self._bases[0],
                end_offset=self._end_offset,
                synced_position=self._synced,
                segments=len(self._segments),
                size_bytes=sum(s.size for s in self._segments),
                appends=self._appends,
                fsyncs=self._fsyncs,
                checkpoints=self._checkpoints,
                corruptions=len(self._seen_damage),
                failed=self._failed is not None,
                corruption_events=tuple(self._events),
            )

    def close(self) -> None:
        """Sync, save the active index and a final checkpoint, release descriptors.

        After a clean close the next open scans nothing (D3). This is done under every
        durability level, ``never`` included: a clean close is the one moment a ``never`` log
        is fsynced without being asked (D5). In the failed state nothing is written; the next
        open recovers. Idempotent. Raises ``StorageFailed`` if the final sync fails (the log
        is closed anyway).
        """
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
                with self._sync_lock:
                    active = self._active
                    if self._trim(active):
                        self._fsync_segment(active)  # D12: a closed log holds its data only
                    if active.base_offset != self._cp_segment or active.size != self._cp_position:
                        self._checkpoint(active, active.size, self._end_offset, self._last_ts)
                    elif active.index is not None:
                        active.index.save(active.stem)
        except OSError as exc:
            raise self._fail("close", exc) from None
        finally:
            self._closed = True
            for s in self._segments:
                self._fds.forget(s.path)
            if self._own_fds:
                self._fds.close_all()

    def _discard(self) -> None:
        """Close without writing anything (the store is deleting the log's folder)."""
        self._closed = True
        for s in self._segments:
            self._fds.forget(s.path)
        if self._own_fds:
            self._fds.close_all()

    def __enter__(self) -> FileLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileLog({self._dir!r}, offsets={self.start_offset}..{self._end_offset})"
