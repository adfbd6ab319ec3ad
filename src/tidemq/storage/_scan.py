"""Walking the batches of a segment file: the one loop behind read, recovery and index rebuild."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from crc32c import crc32c

from tidemq.errors import CorruptRecord
from tidemq.storage._fileops import FileOps
from tidemq.storage._format import HEADER_SIZE, BatchView, peek_length, verify

__all__ = ["zero_tail", "Damage", "iter_batches"]

_MIN_CHUNK = 64 << 10
_HEADER_CRC_AT = 29  # the header CRC covers [0, 29) and sits at 29 (docs/storage-format.md)
_U32 = struct.Struct("<I")


class Damage(Exception):
    """Internal: the bytes at ``position`` are not a valid next batch (torn, corrupt, misplaced).

    ``length`` is the batch length its header claims when that header itself checks out (so a
    reader can skip just that batch), else None.
    """

    def __init__(self, position: int, reason: str, length: int | None = None) -> None:
        super().__init__(f"at byte {position}: {reason}")
        self.position = position
        self.reason = reason
        self.length = length


def iter_batches(
    ops: FileOps,
    fd: int,
    pos: int,
    limit: int,
    expected_offset: int | None,
    *,
    check_body: bool,
    chunk: int,
) -> Iterator[tuple[int, BatchView]]:
    """Yield (position, view) for each batch in [pos, limit) of the file, in order.

    Every batch is verified (header CRC and structure; the body CRC too if ``check_body``)
    and must continue the offsets: its base offset equals the previous batch's last offset + 1
    (the first one equals ``expected_offset`` unless that is None) — a base offset that does not
    follow is misplaced data (D7). Raises :class:`Damage` at the first bad batch; ``OSError``
    from reading propagates. Views point into freshly read buffers (no copy per batch).
    """
    chunk = max(chunk, _MIN_CHUNK)
    expected = expected_offset
    start = pos
    want = chunk
    while pos < limit:
        want = min(want, limit - pos)
        data = ops.pread(fd, want, pos)
        if len(data) < want:
            limit = pos + len(data)  # the file is shorter than we were told: a cut tail
            if not data:
                raise Damage(pos, "segment ends early")
        view = memoryview(data)
        n = len(data)
        i = 0
        while i < n:
            at = pos + i
            if limit - at < HEADER_SIZE:
                raise Damage(at, f"torn batch header ({limit - at} bytes left)")
            if n - i < HEADER_SIZE:
                needed = HEADER_SIZE
                break  # header straddles the chunk: read on from here
            length = peek_length(view, i)
            if length < HEADER_SIZE or at + length > limit:
                # A length that leaves the segment: a torn batch, or a damaged header.
                length_ok = _header_ok(view[i : i + HEADER_SIZE])
                raise Damage(
                    at,
                    f"batch of {length} bytes does not fit in the {limit - at} bytes left",
                    length if length_ok and length >= HEADER_SIZE else None,
                )
            if i + length > n:
                if i == 0:  # one batch larger than the chunk: read exactly it
                    data = ops.pread(fd, length, at)
                    if len(data) < length:
                        raise Damage(at, "segment ends inside a batch")
                    view = memoryview(data)
                    n = length
                else:
                    needed = length
                    break
            try:
                batch = verify(view[i : i + length], check_body=check_body)
            except CorruptRecord as exc:
                raise Damage(
                    at, exc.message, length if _header_ok(view[i : i + HEADER_SIZE]) else None
                ) from None
            if expected is not None and batch.base_offset != expected:
                raise Damage(
                    at,
                    f"batch base offset {batch.base_offset} does not follow offset {expected - 1}",
                    length,
                )
            expected = batch.last_offset + 1
            yield at, batch
            i += length
        else:
            needed = 0
        pos += i
        # Read on only as far as the caller's chunk still reaches, but at least the next batch:
        # a reader with a byte budget then reads about its budget, not a chunk more.
        want = max(chunk - (pos - start), needed, _MIN_CHUNK)


def zero_tail(ops: FileOps, fd: int, pos: int, limit: int, *, chunk: int = 1 << 20) -> bool:
    """Whether every byte of [pos, limit) of the file is zero: a preallocated tail with no data
    in it (D12), not damage. A file shorter than ``limit`` is not (it ends early)."""
    zeros = bytes(min(chunk, max(limit - pos, 0)))
    while pos < limit:
        want = min(chunk, limit - pos)
        data = ops.pread(fd, want, pos)
        if len(data) < want or data != zeros[:want]:
            return False
        pos += want
    return True


def _header_ok(header: memoryview) -> bool:
    """Whether a 64-byte header passes its own CRC (its length field is then trustworthy)."""
    stored: int = _U32.unpack_from(header, _HEADER_CRC_AT)[0]
    return bool(crc32c(header[:_HEADER_CRC_AT]) == stored)
