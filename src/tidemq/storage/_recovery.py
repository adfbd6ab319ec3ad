"""Opening a log folder: find the segments, trust the checkpoint, verify the tail, cut damage.

Recovery reads only what the last checkpoint does not vouch for (D3): after a clean close the
checkpoint covers everything and nothing is scanned; after a crash only the bytes after it are
checksummed, batch by batch, and the log is cut at the first batch that is torn, corrupt or out
of place (D7). Older segments are left alone: their indexes load lazily on first use (D4).

Under ``durable=False`` (a ``never`` log) recovery fsyncs nothing: the cut and the folder
changes it makes stay in the page cache until the log's first ``sync`` or ``close`` (D5).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import msgspec

from tidemq.storage._atomic import TMP_SUFFIX
from tidemq.storage._fdcache import FdCache
from tidemq.storage._fileops import FileOps, is_out_of_descriptors
from tidemq.storage._index import SegmentIndex
from tidemq.storage._scan import Damage, iter_batches, zero_tail
from tidemq.storage._types import LogConfig, RecoveryReport

__all__ = ["Checkpoint", "Segment", "Recovered", "recover", "segment_name", "CHECKPOINT"]

log = logging.getLogger("tidemq.storage")

CHECKPOINT = "checkpoint"
_SCAN_CHUNK = 8 << 20


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class Checkpoint(msgspec.Struct, frozen=True):
    """A synced position (D3): bytes [0, position) of ``segment`` and every older segment were
    fsynced before this file was written, and ``end_offset`` is the offset after them."""

    version: int
    segment: int
    position: int
    end_offset: int
    max_ts: int


_CP_DECODER = msgspec.json.Decoder(Checkpoint)


def load_checkpoint(directory: str) -> Checkpoint | None:
    """The checkpoint, or None if missing or unreadable. Raises ``OSError`` only when no
    descriptor was free to read it: taking that for "no checkpoint" could reuse offsets (D8)."""
    try:
        with open(os.path.join(directory, CHECKPOINT), "rb") as f:
            cp = _CP_DECODER.decode(f.read())
    except OSError as exc:
        if is_out_of_descriptors(exc):
            raise
        return None
    except msgspec.DecodeError:
        return None
    if cp.version != 1 or cp.position < 0 or cp.end_offset < cp.segment:
        return None
    return cp


def encode_checkpoint(cp: Checkpoint) -> bytes:
    return msgspec.json.encode(cp)


@dataclass(slots=True)
class Segment:
    """One segment file. ``index`` is None until first needed (sealed segments load lazily).

    ``size`` is where its data ends; ``allocated`` how long the file is known to be, when the
    log preallocated it further (D12; 0: not preallocated in this process)."""

    base_offset: int
    path: str
    stem: str
    size: int
    index: SegmentIndex | None = None
    index_checked: bool = False  # index rebuilt from the segment itself in this process
    allocated: int = 0


@dataclass(slots=True)
class Recovered:
    segments: list[Segment]
    end_offset: int
    last_ts: int
    report: RecoveryReport
    dirty: list[Segment] = field(default_factory=list)  # scanned or cut: fsync, then checkpoint
    checkpoint: Checkpoint | None = None
    trusted_offset: int = 0  # offsets below it were vouched for by the checkpoint (D3)
    unsynced: bool = False  # durable=False and recovery changed files it did not fsync


def _list_segments(directory: str) -> list[int]:
    bases = []
    for name in os.listdir(directory):
        if name.endswith(TMP_SUFFIX):
            # A temporary file of an interrupted atomic_write (a checkpoint, an index): never
            # the live copy, and nothing else in a log folder ends so (D2).
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
            continue
        stem, dot, ext = name.partition(".")
        if len(stem) == 20 and stem.isdigit():
            if ext == "log":
                bases.append(int(stem))
            elif ext in ("index", "timeindex") and not os.path.exists(
                os.path.join(directory, stem + ".log")
            ):
                os.unlink(os.path.join(directory, name))  # left by an interrupted deletion
    return sorted(bases)


def recover(
    directory: str, config: LogConfig, ops: FileOps, fds: FdCache, *, durable: bool = True
) -> Recovered:
    """Open the segments of ``directory``; ``OSError`` propagates to the caller.

    ``durable``: fsync what recovery creates or cuts (and the folder) before returning; if
    False, nothing is fsynced and ``Recovered.unsynced`` says whether anything was changed."""
    bases = fds.with_descriptor(lambda: _list_segments(directory))
    cp = fds.with_descriptor(lambda: load_checkpoint(directory))

    def seg(base: int) -> Segment:
        stem = os.path.join(directory, segment_name(base))
        return Segment(base, stem + ".log", stem, os.stat(stem + ".log").st_size)

    if not bases:
        base = cp.end_offset if cp is not None else 0  # never reuse an offset (D8)
        stem = os.path.join(directory, segment_name(base))
        ops.close(fds.open_new(stem + ".log"))
        if durable:
            fds.with_descriptor(lambda: ops.fsync_dir(directory))  # D6: the segment's name
        first = Segment(
            base, stem + ".log", stem, 0, SegmentIndex(base, config.index_interval_bytes)
        )
        return Recovered(
            [first], base, cp.max_ts if cp else -1, RecoveryReport(), [first], cp, base,
            unsynced=not durable,
        )

    segments = [seg(b) for b in bases]
    interval = config.index_interval_bytes
    note = None
    # Where does the trusted prefix end? (start segment, position, next offset, max ts)
    if (
        cp is not None
        and cp.segment in bases
        and cp.position <= segments[bases.index(cp.segment)].size
    ):
        i = bases.index(cp.segment)
        s = segments[i]
        idx = SegmentIndex.load(s.stem, s.base_offset, interval, s.size)
        if idx is not None and idx.covered >= cp.position:
            idx = idx.snapshot(cp.position, cp.end_offset, cp.max_ts)
            pos, offset, max_ts = cp.position, cp.end_offset, cp.max_ts
        elif idx is not None:
            pos, offset, max_ts = idx.covered, idx.next_offset, idx.max_ts
        else:
            idx = SegmentIndex(s.base_offset, interval)
            pos, offset, max_ts = 0, s.base_offset, -1
    else:
        if cp is None:
            i = 0
            note = "no valid checkpoint: every segment was verified"
        elif cp.segment < bases[0]:
            i = 0  # retention removed the checkpointed segment: all that is left is newer
        else:
            older = [k for k, b in enumerate(bases) if b <= cp.segment]
            i = older[-1] if older else 0
            note = (
                f"the checkpoint (segment {cp.segment}, byte {cp.position}) is ahead of the "
                "data on disk: data once synced was lost or cut outside TideMQ"
            )
        idx = SegmentIndex(segments[i].base_offset, interval)
        pos, offset, max_ts = 0, segments[i].base_offset, -1
        if i > 0:
            prev = segments[i - 1]
            prev_idx = SegmentIndex.load(prev.stem, prev.base_offset, interval, prev.size)
            if prev_idx is not None:
                max_ts = prev_idx.max_ts

    trusted = offset
    scanned = 0
    cut_at: tuple[int, int, str] | None = None  # (segment list index, position, reason)
    rebuilt: list[int] = []
    dirty: list[Segment] = []
    for j in range(i, len(segments)):
        s = segments[j]
        if j > i:
            if s.base_offset != offset:
                cut_at = (
                    j,
                    0,
                    f"segment base offset {s.base_offset} does not follow offset {offset - 1}",
                )
                break
            idx, pos = SegmentIndex(s.base_offset, interval), 0
        s.index = idx
        s.index_checked = pos == 0
        if pos < s.size:
            dirty.append(s)
            if pos == 0 and s.size:
                rebuilt.append(s.base_offset)
        fd = fds.acquire(s.path)
        try:
            for at, batch in iter_batches(
                ops, fd, pos, s.size, offset, check_body=True, chunk=_SCAN_CHUNK
            ):
                offset = batch.last_offset + 1
                max_ts = max(max_ts, batch.max_timestamp_us)
                idx.add(batch.base_offset, offset, at, batch.size, batch.max_timestamp_us)
                scanned += batch.size
        except Damage as d:
            if zero_tail(ops, fd, d.position, s.size):
                # D12: the zeros a preallocation left after the data; not damage. Trimmed
                # (fsynced with the other dirty segments), and the next segment follows.
                ops.ftruncate(fd, d.position)
                s.size = d.position
            else:
                cut_at = (j, d.position, d.reason)
        finally:
            fds.release(s.path, fd)
        if cut_at is not None:
            break

    report = RecoveryReport(
        clean=not dirty and cut_at is None and note is None,
        scanned_bytes=scanned,
        indexes_rebuilt=tuple(rebuilt),
        reason=note,
    )
    if cut_at is not None:
        j, position, reason = cut_at
        report = _cut(
            directory, segments, j, position, reason, offset, ops, fds, report, durable=durable
        )
        # Cutting a later segment at byte 0 deletes it; otherwise it stays, shortened.
        segments = segments[:j] if position == 0 and j > 0 else segments[: j + 1]
        dirty = [d for d in dirty if d in segments]
        if segments[-1] not in dirty:
            dirty.append(segments[-1])
    return Recovered(
        segments, offset, max_ts, report, dirty, cp, trusted,
        unsynced=not durable and cut_at is not None,
    )


def _cut(
    directory: str,
    segments: list[Segment],
    j: int,
    position: int,
    reason: str,
    first_lost: int,
    ops: FileOps,
    fds: FdCache,
    report: RecoveryReport,
    *,
    durable: bool,
) -> RecoveryReport:
    """Truncate segment ``j`` at ``position`` and delete every later segment; report it.
    ``durable``: fsync the cut segment and the folder before returning."""
    touched = []
    cut_bytes = 0
    s = segments[j]
    keep_file = position > 0 or j == 0
    if keep_file:
        fd = fds.acquire(s.path)
        try:
            ops.ftruncate(fd, position)
            if durable:
                ops.fsync(fd)
        finally:
            fds.release(s.path, fd)
        cut_bytes += s.size - position
        s.size = position
        touched.append(s.base_offset)
        later = segments[j + 1 :]
    else:
        later = segments[j:]
    for t in later:
        fds.forget(t.path)
        os.unlink(t.path)
        SegmentIndex.remove(t.stem)
        cut_bytes += t.size
        touched.append(t.base_offset)
    if durable:
        fds.with_descriptor(lambda: ops.fsync_dir(directory))
    log.warning(
        "log %s: recovery cut %d bytes from offset %d on (%s)",
        directory,
        cut_bytes,
        first_lost,
        reason,
    )
    return RecoveryReport(
        clean=False,
        scanned_bytes=report.scanned_bytes,
        bytes_truncated=cut_bytes,
        first_lost_offset=first_lost,
        segments_touched=tuple(touched),
        indexes_rebuilt=report.indexes_rebuilt,
        reason=f"{reason} (segment {s.base_offset}, byte {position})"
        + (f"; {report.reason}" if report.reason else ""),
    )
