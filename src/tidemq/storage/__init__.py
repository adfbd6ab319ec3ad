"""tidemq.storage: the durable partition log, its record-batch format, and a memory twin.

A partition is a folder of segment files named by their base offset
(``00000000000000000000.log``), each a sequence of record batches (``docs/storage-format.md``),
with derived ``.index``/``.timeindex`` files and one ``checkpoint`` per log. ``open_store(path)``
locks a data folder and opens logs by name; ``open_store(None)`` gives memory logs with the same
interface and semantics.

Durability invariants. The code cites them as ``# D<n>``; ``docs/durability.md`` explains them.

(D1) A batch is stored as it arrived. The log changes only the broker-owned header fields
     (base offset, timestamps) and re-seals the 29-byte header CRC; the body and its CRC are
     never re-encoded, and every stored byte is covered by one of the two checksums.

(D2) Small metadata files (the checkpoint) are replaced atomically: temp file, fsync, rename,
     fsync of the folder (``atomic_write``). A reader finds the old or the new file, never a mix.
     A temp file left by a process that died mid-write is removed when the log is opened.

(D3) A checkpoint names a position (segment, byte, end offset) that was fsynced *before* the
     checkpoint was written. On open everything before it is trusted without reading it;
     everything after it is verified batch by batch before the log is used. A clean close
     checkpoints the very end, so a clean open scans nothing.

(D4) Indexes are derived and never trusted. Each index file states the segment length it covers
     and carries a CRC; one that is missing, damaged, foreign or covers more than the segment
     holds is rebuilt from the segment, and one that covers less is extended. Because of this
     they are written without fsync. Lookups are checked against the batch found there.

(D5) Durable means fsynced, and only ``sync`` fsyncs. ``sync(position)`` returns only after every
     batch before ``position``, in every segment, has been fsynced (and the folder, if segments
     were created). The log never blocks on its own or starts threads: under ``always`` the
     driver calls ``sync`` before confirming (concurrent callers share one fsync: group commit);
     under ``interval`` the driver calls it on its timer; under ``never`` it need not call it.
     Besides ``sync``, ``close`` (its final sync and checkpoint) and, under ``always`` and
     ``interval``, opening (new folders, recovery's cut, the checkpoint after a scan) fsync. A
     ``never`` log is fsynced by ``sync`` and ``close`` only: what its open would have fsynced
     waits for the first of them, and ``synced_position`` says what is known durable.

(D6) A new segment is created (empty) before any batch refers to it and its base offset is the
     previous segment's end; its folder entry becomes durable at the next ``sync``. A sealed
     segment's unsynced bytes are fsynced by the next ``sync`` before it reports success. A new
     folder (the data folder, ``logs/``, each level of a log's ``<topic>/<incarnation>/<part>``)
     is an entry in its parent: the parent is fsynced when the folder is created (for a
     ``never`` log: at its first ``sync`` or ``close``), before anything in it is confirmed.

(D7) No damaged batch is ever served. Every read verifies both checksums. Recovery cuts the log
     at the first batch after the checkpoint that is torn, fails its checks, or whose base offset
     does not follow its predecessor's last offset (misplaced data), deletes later segments, and
     reports what it cut. A damaged batch in the trusted part is reported and skipped by reads
     (or stops them, ``on_corruption="fail"``).

(D8) Offsets are dense and never reused. Each batch gets the end offset as its base; recovery cuts
     only bytes after the last good batch, and a log whose segments are all gone restarts at the
     checkpoint's end offset, not at 0.

(D9) A write or fsync error other than "disk full" puts the log into a failed state that stays
     set: every later append and sync raises ``StorageFailed``. Nothing is assumed about what
     reached the disk (an fsync error may have dropped dirty pages); reopening recovers from the
     last checkpoint, which only ever names data that was fsynced. Running out of descriptors
     (EMFILE, ENFILE, ENOMEM from an *open*) is not such an error: nothing was written. The
     descriptor cache closes its idle descriptors and tries once more; if that fails too the
     call raises ``StorageFailed`` without the failed state, and works again later.

(D10) A write that fails with ENOSPC/EDQUOT is cut back (ftruncate) to the previous batch
      boundary and raises ``DiskFull``; the log stays usable: reads go on and appends succeed
      again once space returns, without reopening. If that ftruncate fails, D9 applies.

(D11) One process at a time: a store holds an exclusive, non-blocking ``flock`` on
      ``<folder>/LOCK`` while open; a second opener (another process or the same one) gets
      ``DataDirLocked``.

(D12) An ``always`` log preallocates its active segment past its data (``posix_fallocate``:
      as much as the segment holds, 64 KiB to 4 MiB, never past ``segment_bytes``), so the
      fdatasync after an append commits no new file size. The zeros are never data: a segment
      is trimmed to its data when it is sealed (the trim fsynced with it, D6) and when the log
      closes, and recovery takes an all-zero tail after a segment's last good batch for the end
      of its data — trimmed, not reported as cut, and the next segment still follows — while
      any other tail is damage (D7). A failed preallocation only costs speed: the append goes
      on without it (and meets a full disk itself, D10).
"""

from tidemq.storage._atomic import atomic_write
from tidemq.storage._fdcache import FdCache
from tidemq.storage._filelog import FileLog
from tidemq.storage._fileops import FileOps
from tidemq.storage._format import BatchView, Record, encode_batch, encode_bodies, verify
from tidemq.storage._memlog import MemoryLog
from tidemq.storage._meta import MetaStore
from tidemq.storage._store import FileStore, LogStore, MemoryStore, open_store
from tidemq.storage._types import (
    AppendResult,
    CorruptionEvent,
    Durability,
    LogConfig,
    LogStatistics,
    PartitionLog,
    RecoveryReport,
)

__all__ = [
    "Record",
    "encode_batch",
    "encode_bodies",
    "BatchView",
    "verify",
    "LogConfig",
    "Durability",
    "PartitionLog",
    "AppendResult",
    "RecoveryReport",
    "CorruptionEvent",
    "LogStatistics",
    "FileLog",
    "MemoryLog",
    "LogStore",
    "FileStore",
    "MemoryStore",
    "open_store",
    "atomic_write",
    "FdCache",
    "FileOps",
    "MetaStore",
]
