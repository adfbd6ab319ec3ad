"""Durable broker state: a journal log per topic plus snapshots (SPEC §6).

The journal is an ordinary :class:`PartitionLog` (``<topic>/__state``) at the topic's durability.
Each broker call that changes state appends *one* record: a msgpack list of events. Events are
appended after the data they describe (invariant J1: never durable ahead of the log), and
recovery clamps everything to each partition's ``end_offset`` (J2), so a torn data tail can never
leave state that points past it.

A snapshot (written every few thousand events and at close) holds the whole state as of a journal
offset; recovery loads it and replays only the journal after it, and the journal is trimmed by
whole segments below the snapshot. Snapshots and the topic catalogue live in a small
:class:`MetaStore`: files written with ``atomic_write`` in the data folder, or a dict that lives
as long as the in-memory store.

Event kinds (first element):

``["g", group, [group events]]``         GroupState.drain_journal() output
``["gc", group, settings, snapshot]``    group created (snapshot taken at creation: start position)
``["gu", group, settings, snapshot]``    group settings updated
``["gd", group]``                        group deleted
``["dr", [seq, ...]]``                   delayed messages released into their partitions
``["dd", [[dedup_id, id, expires_us], ...]]``
``["pr", partition, pid, epoch, base_sequence, count, ids, now_us]``
``["rd", group, dlq_key, dlq_partition, next_offset]``  redrive progress
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from typing import Any

import msgspec

from ..errors import CorruptRecord
from ..storage import PartitionLog, Record, atomic_write

__all__ = ["Journal", "MetaStore", "open_meta"]

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


class Journal:
    """Appends event lists to a log and reads them back. One thread at a time."""

    __slots__ = ("log", "events_since_snapshot")

    def __init__(self, log: PartitionLog) -> None:
        self.log = log
        self.events_since_snapshot = 0

    def append(self, events: list[Any], now_us: int) -> int:
        """Append ``events`` as one record; returns the log position (for a sync token)."""
        self.events_since_snapshot += len(events)
        res = self.log.append_records([Record(_enc.encode(events))], now_us)
        return res.position

    def replay(self, from_offset: int) -> Iterator[list[Any]]:
        """Event lists from ``from_offset`` (clamped to the log's start) to the end.

        A record that does not decode is skipped: storage already verified its checksum, so it
        can only be a foreign record, and replaying the rest is the least surprising choice.
        """
        offset = max(from_offset, self.log.start_offset)
        end = self.log.end_offset
        while offset < end:
            views = self.log.read(offset, max_records=1000, max_bytes=8 << 20)
            if not views:
                break
            for view in views:
                bodies = view.bodies()
                for i, body in enumerate(bodies):
                    if view.base_offset + i < offset:
                        continue
                    try:
                        events = _dec.decode(body)
                    except msgspec.DecodeError:
                        continue
                    if isinstance(events, list):
                        yield events
                offset = view.last_offset + 1


class MetaStore:
    """Small named blobs (catalogue, snapshots), replaced atomically."""

    def get(self, name: str) -> bytes | None:
        raise NotImplementedError

    def put(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError


class _FileMeta(MetaStore):
    def __init__(self, root: str) -> None:
        self._dir = os.path.join(root, "__broker")
        os.makedirs(self._dir, exist_ok=True)

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def get(self, name: str) -> bytes | None:
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CorruptRecord(f"cannot read broker metadata {name!r}: {exc}") from exc

    def put(self, name: str, data: bytes) -> None:
        atomic_write(self._path(name), data)

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass


class _MemoryMeta(MetaStore):
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self._blobs = blobs

    def get(self, name: str) -> bytes | None:
        return self._blobs.get(name)

    def put(self, name: str, data: bytes) -> None:
        self._blobs[name] = data

    def delete(self, name: str) -> None:
        self._blobs.pop(name, None)


# In-memory stores keep their broker metadata alongside them, so a Broker reopened on the same
# MemoryStore object (tests, the embedded client reconnecting) sees its topics again.
_memory_blobs: weakref.WeakKeyDictionary[Any, dict[str, bytes]] = weakref.WeakKeyDictionary()


def open_meta(store: Any) -> MetaStore:
    """The metadata store beside ``store``: files under its folder, or memory."""
    root = getattr(store, "path", None) or getattr(store, "root", None)
    if root is not None:
        return _FileMeta(os.fspath(root))
    try:
        blobs = _memory_blobs.setdefault(store, {})
    except TypeError:  # not weak-referenceable: metadata lives as long as this broker
        blobs = {}
    return _MemoryMeta(blobs)


def encode(obj: Any) -> bytes:
    return _enc.encode(obj)


def decode(data: bytes) -> Any:
    try:
        return _dec.decode(data)
    except msgspec.DecodeError as exc:
        raise CorruptRecord(f"broker metadata does not decode: {exc}") from exc
