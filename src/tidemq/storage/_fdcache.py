"""A bounded, thread-safe LRU of open segment file descriptors, shared by all logs of a store.

However many segments and partitions exist, at most ``max_open`` descriptors stay open while
idle; a descriptor in use (pinned by ``acquire`` until ``release``) is never closed under its
user, so the cache may exceed the bound briefly while many are pinned at once. The append's
one ``pwritev`` uses ``call_cached`` instead: it runs under the cache's lock, which keeps the
descriptor open for that moment without a pin.

Running out of descriptors (EMFILE/ENFILE, or ENOMEM, on an open) is transient: the cache
closes its idle descriptors and tries once more (``with_descriptor``); if that fails too it
raises ``DescriptorsExhausted``, which the log turns into a retriable error without entering
its failed state (D9 is for errors that may have lost data; a failed open loses nothing).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tidemq.storage._fileops import DEFAULT_OPS, FileOps, is_out_of_descriptors

__all__ = ["FdCache", "DescriptorsExhausted"]

T = TypeVar("T")
A = TypeVar("A")


class DescriptorsExhausted(OSError):
    """An open failed for want of a descriptor (or kernel memory) even after the cache closed
    its idle ones. Nothing was written; the same call can succeed later."""


@dataclass(slots=True)
class _Entry:
    fd: int
    pins: int = 0
    doomed: bool = False  # forgotten while pinned: close on the last release


class FdCache:
    """``acquire(path) -> fd`` opens lazily and pins; ``release(path)`` unpins.

    All methods are thread-safe. ``OSError`` from opening propagates to the caller; running out
    of descriptors is retried once after closing idle ones, then ``DescriptorsExhausted``.
    """

    def __init__(self, max_open: int = 256, ops: FileOps = DEFAULT_OPS) -> None:
        if max_open < 1:
            raise ValueError("max_open must be >= 1")
        self.max_open = max_open
        self.ops = ops
        self._lock = threading.Lock()
        self._open: OrderedDict[str, _Entry] = OrderedDict()
        self._pinned_doomed: dict[int, _Entry] = {}
        self.opens = 0
        self.sheds = 0  # times a shortage of descriptors made the cache close its idle ones

    def acquire(self, path: str) -> int:
        with self._lock:
            entry = self._open.get(path)
            if entry is not None:
                self._open.move_to_end(path)
                entry.pins += 1
                return entry.fd
        fd = self.with_descriptor(lambda: self.ops.open(path))
        with self._lock:
            raced = self._open.get(path)
            if raced is not None:  # another thread opened it meanwhile: keep theirs
                self.ops.close(fd)
                raced.pins += 1
                self._open.move_to_end(path)
                return raced.fd
            self.opens += 1
            self._open[path] = _Entry(fd, pins=1)
            self._evict()
            return fd

    def call_cached(self, path: str, call: Callable[[int, A, int], int], arg: A, pos: int
                    ) -> int | None:
        """``call(fd, arg, pos)`` with ``path``'s descriptor if it is open, else None (nothing
        called: use acquire/release). The per-append write path: the call runs under the
        cache's lock, which keeps the descriptor open without a pin (one lock round instead
        of acquire's and release's). So ``call`` must be short and must not use this cache
        (a ``pwritev`` to the page cache). Exceptions from ``call`` propagate."""
        with self._lock:
            entry = self._open.get(path)
            if entry is None:
                return None
            self._open.move_to_end(path)
            return call(entry.fd, arg, pos)

    def with_descriptor(self, call: Callable[[], T]) -> T:
        """``call()``, which opens something (a file, a folder to fsync, a temp file): if it
        runs out of descriptors, close every idle cached one and call it once more. Raises
        ``DescriptorsExhausted`` if the second call runs out too; other errors propagate.
        ``call`` must be safe to repeat after it failed (an open, ``atomic_write``)."""
        try:
            return call()
        except OSError as exc:
            if not is_out_of_descriptors(exc):
                raise
            self.shed_idle()
        try:
            return call()
        except OSError as exc:
            if not is_out_of_descriptors(exc):
                raise
            raise DescriptorsExhausted(
                exc.errno, f"{exc.strerror} (even after closing idle descriptors)", exc.filename
            ) from exc

    def open_new(self, path: str) -> int:
        """Create ``path`` (``FileExistsError`` if it exists) and return an uncached descriptor,
        the caller's to close; out of descriptors: as ``with_descriptor``."""
        return self.with_descriptor(lambda: self.ops.open(path, create=True))

    def shed_idle(self) -> int:
        """Close every descriptor nobody is using; returns how many. They reopen lazily."""
        with self._lock:
            idle = [p for p, e in self._open.items() if e.pins == 0]
            entries = [self._open.pop(p) for p in idle]
            self.sheds += 1
        for e in entries:
            self._close_quietly(e.fd)
        return len(entries)

    def release(self, path: str, fd: int) -> None:
        with self._lock:
            entry = self._open.get(path)
            if entry is not None and entry.fd == fd:
                entry.pins -= 1
                if len(self._open) > self.max_open:  # _evict's own first test, inlined
                    self._evict()
                return
            doomed = self._pinned_doomed.get(fd)
            if doomed is not None:
                doomed.pins -= 1
                if doomed.pins == 0:
                    del self._pinned_doomed[fd]
                    self._close_quietly(fd)

    def forget(self, path: str) -> None:
        """Close ``path``'s descriptor (now, or at its last release if pinned)."""
        with self._lock:
            entry = self._open.pop(path, None)
            if entry is None:
                return
            if entry.pins:
                entry.doomed = True
                self._pinned_doomed[entry.fd] = entry
            else:
                self._close_quietly(entry.fd)

    def forget_under(self, prefix: str) -> None:
        """Forget every path starting with ``prefix`` (a closed or deleted log)."""
        with self._lock:
            paths = [p for p in self._open if p.startswith(prefix)]
        for p in paths:
            self.forget(p)

    def open_count(self) -> int:
        with self._lock:
            return len(self._open) + len(self._pinned_doomed)

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._open.values())
            self._open.clear()
        for e in entries:
            if e.pins:
                e.doomed = True
                with self._lock:
                    self._pinned_doomed[e.fd] = e
            else:
                self._close_quietly(e.fd)

    def _evict(self) -> None:
        # Called with the lock held: close idle descriptors, least recently used first.
        if len(self._open) <= self.max_open:
            return
        for path in list(self._open):
            if len(self._open) <= self.max_open:
                break
            entry = self._open[path]
            if entry.pins == 0:
                del self._open[path]
                self._close_quietly(entry.fd)

    def _close_quietly(self, fd: int) -> None:
        # Closing a descriptor only drops our handle: data already written stays in the page
        # cache and a later fsync on a fresh descriptor flushes it (D6).
        try:
            self.ops.close(fd)
        except OSError:
            pass
