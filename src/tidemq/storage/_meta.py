"""``MetaStore``: small named blobs (the broker's catalogue and snapshots), each replaced
atomically (D2). A ``FileStore`` keeps them as files under ``<data>/__broker/``, written with
``atomic_write``; a ``MemoryStore`` keeps them in a dict that lives as long as the store, so a
broker reopened on the same store object sees its topics again.

Thread safety: ``put`` and ``delete`` of *different* names may run concurrently (the driver
writes a topic's snapshot on a worker thread while the loop writes the catalogue); one name is
written by one thread at a time (the driver's rule: one snapshot per topic in flight).
"""

from __future__ import annotations

import os
import threading
from typing import Protocol, runtime_checkable

from tidemq.errors import CorruptRecord
from tidemq.storage._atomic import atomic_write, fsync_dir

__all__ = ["MetaStore", "FileMeta", "MemoryMeta", "META_DIR"]

META_DIR = "__broker"
_TMP_SUFFIX = ".tmp"


@runtime_checkable
class MetaStore(Protocol):
    """Named blobs, each replaced atomically. Raises ``OSError`` on I/O failure (``put``,
    ``delete``) and ``CorruptRecord`` when a blob cannot be read."""

    def get(self, name: str) -> bytes | None: ...

    def put(self, name: str, data: bytes) -> None: ...

    def delete(self, name: str) -> None: ...


class FileMeta:
    """Blobs as files in ``<root>/__broker``. Leftover temporary files of an interrupted
    ``atomic_write`` are removed when the folder is opened."""

    def __init__(self, root: str) -> None:
        self._dir = os.path.join(root, META_DIR)
        created = not os.path.isdir(self._dir)
        os.makedirs(self._dir, exist_ok=True)
        if created:
            fsync_dir(root)  # the folder's own entry is durable before any blob in it
        for name in os.listdir(self._dir):
            if name.endswith(_TMP_SUFFIX):
                try:
                    os.unlink(os.path.join(self._dir, name))
                except OSError:
                    pass

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
            return
        fsync_dir(self._dir)


class MemoryMeta:
    """The memory twin: a dict, guarded by a lock (puts may come from a worker thread)."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> bytes | None:
        with self._lock:
            return self._blobs.get(name)

    def put(self, name: str, data: bytes) -> None:
        with self._lock:
            self._blobs[name] = bytes(data)

    def delete(self, name: str) -> None:
        with self._lock:
            self._blobs.pop(name, None)
