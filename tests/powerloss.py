"""A power-loss filesystem double (SQLite's ``test6.c`` idea) for ``FileStore``/``FileLog``.

A real ``kill -9`` keeps the OS page cache, so it cannot tell a log that fsyncs from one that
does not. ``PowerLossOps`` can: every call still reaches the real file (reads see what was
written, as they would through the page cache), but the double remembers, per file, what the
file held at its last ``fsync`` and every write and truncate made since. After the store has
been closed or abandoned (:func:`abandon`), :meth:`PowerLossOps.crash` rewrites each file on
disk to what a power cut could leave::

    ops = PowerLossOps(seed=1)
    store = FileStore(path, ops=ops)
    ... append, sync ...
    abandon(store)          # the process dies: no sync, no checkpoint, lock released
    ops.crash("drop")       # the power goes: unsynced bytes are gone
    store = FileStore(path) # recover with a plain store

The model (kept simple on purpose; each point is a choice, not a law of every filesystem):

- Contents. A file's durable image is what it held when it was last fsynced. A ``preallocate``
  that lengthens a file counts as a truncate to the new length (zeros). An ``fsync`` makes
  durable exactly the writes and truncates issued *before* it was called (writes made while it
  runs stay unsynced: the conservative reading of POSIX). ``"drop"`` restores the durable image;
  ``"prefix"`` keeps the durable image plus a random prefix (seeded ``random.Random``), in issue
  order and at byte granularity, of the writes and truncates since; ``"tear"`` does the same and
  then fills the bytes of the last unsynced write that fall in the last 512-byte sector it
  touched with garbage (a torn sector). Files are independent: one file keeping more of its
  unsynced tail than another is allowed, as page-cache writeback has no cross-file order.
- Sectors are written atomically with respect to bytes synced earlier: garbage only ever lands
  on bytes written since the last fsync, never on the durable image (modern drives' 512-byte
  atomicity; an append-only log relies on it).
- Existence. A file first seen by ``open(create=True)`` exists durably only once it or its
  folder (``fsync_dir``) was fsynced. On ``"drop"`` a file whose existence is not durable is
  deleted; on ``"prefix"``/``"tear"`` it survives or not at random (its name may have been
  written back), holding a prefix of its writes if it survives.
- Folders. A folder created with ``mkdir`` through this double exists durably only once its
  parent was fsynced (``fsync_dir`` of the parent; fsyncing a file inside does not count). On
  ``"drop"`` one that is not durable vanishes with everything in it, durable or not; on
  ``"prefix"``/``"tear"`` it does so or not at random. Folders are decided before files,
  outermost first.
- What this double does not see is treated as durable: files that existed before their first
  ``open`` through it (their content then is their durable image), files written with
  ``atomic_write`` (checkpoints, index files, broker snapshots and catalogue: they never go
  through ``FileOps``; durable ones are fsynced and renamed before ``atomic_write`` returns, and
  index files are self-checking and rebuilt when stale, D4), folders made with plain ``os``
  calls, and deletions and renames done with plain ``os`` calls (a file deleted before the
  crash stays deleted).

Holding fsyncs: :meth:`PowerLossOps.hold_fsync` returns an :class:`FsyncGate`; until its
``release()``, every ``fsync`` blocks in its calling thread (``fsync_waiting`` counts them), so a
test can check that an answer is not given before the fsync it depends on has completed.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tidemq.storage import FileOps, FileStore

__all__ = ["PowerLossOps", "FsyncGate", "CrashMode", "abandon", "SECTOR"]

CrashMode = Literal["drop", "prefix", "tear"]
SECTOR = 512
HOLD_LIMIT_S = 30.0  # a held fsync that waits longer than this fails: a test forgot release()


@dataclass(slots=True)
class _Write:
    pos: int
    data: bytes


@dataclass(slots=True)
class _Truncate:
    size: int


_Op = _Write | _Truncate


@dataclass(slots=True)
class _File:
    durable: bytearray  # the content as of the last fsync (or as first seen)
    exists_durably: bool
    pending: list[_Op] = field(default_factory=list)  # writes and truncates since, in order


def _apply(buf: bytearray, op: _Op) -> None:
    if isinstance(op, _Truncate):
        if op.size < len(buf):
            del buf[op.size :]
        else:
            buf.extend(bytes(op.size - len(buf)))
        return
    if op.pos > len(buf):
        buf.extend(bytes(op.pos - len(buf)))  # a hole reads as zeros
    buf[op.pos : op.pos + len(op.data)] = op.data


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class FsyncGate:
    """Holds every fsync of its ``PowerLossOps`` until :meth:`release` (also on ``with`` exit)."""

    def __init__(self) -> None:
        self._open = threading.Event()

    @property
    def held(self) -> bool:
        return not self._open.is_set()

    def release(self) -> None:
        self._open.set()

    def _wait(self) -> None:
        if not self._open.wait(HOLD_LIMIT_S):
            raise OSError(errno.ETIMEDOUT, "fsync held too long: the test never released it")

    def __enter__(self) -> FsyncGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PowerLossOps(FileOps):
    """``FileOps`` that tracks what is durable per file and can simulate a power cut.

    Thread-safe: appends and fsyncs may come from different threads, as in ``FileLog``.
    ``seed`` drives the random choices of ``crash("prefix"/"tear")``.
    """

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._paths: dict[int, str] = {}  # open fd -> path
        self._files: dict[str, _File] = {}
        self._dirs: dict[str, bool] = {}  # folder made through mkdir -> exists durably
        self._gate: FsyncGate | None = None
        self._waiting = 0
        self.fsyncs = 0  # fsyncs completed through this double
        self.crashes = 0

    # --- FileOps ---------------------------------------------------------------------------

    def open(self, path: str, *, create: bool = False) -> int:
        fd = super().open(path, create=create)
        key = os.path.abspath(path)
        with self._lock:
            self._paths[fd] = key
            if create:
                self._files[key] = _File(bytearray(), exists_durably=False)
            elif key not in self._files:
                # First seen: what it holds now was there before us; call it durable.
                self._files[key] = _File(bytearray(_read_file(key)), exists_durably=True)
        return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self._paths.pop(fd, None)
        super().close(fd)

    def pwritev(self, fd: int, buffers: Sequence[bytes | bytearray | memoryview], pos: int) -> int:
        with self._lock:
            done = super().pwritev(fd, buffers, pos)
            if done > 0:
                data = b"".join(buffers)[:done]
                self._files[self._paths[fd]].pending.append(_Write(pos, data))
            return done

    def ftruncate(self, fd: int, size: int) -> None:
        with self._lock:
            super().ftruncate(fd, size)
            self._files[self._paths[fd]].pending.append(_Truncate(size))

    def preallocate(self, fd: int, size: int) -> None:
        # The file grows with zeros, like a truncate that extends it; shorter: no change.
        with self._lock:
            before = os.fstat(fd).st_size
            super().preallocate(fd, size)
            if size > before:
                self._files[self._paths[fd]].pending.append(_Truncate(size))

    def fsync(self, fd: int) -> None:
        with self._lock:
            path = self._paths[fd]
            covered = len(self._files[path].pending)  # only what was issued before the call
            gate = self._gate
            if gate is not None and gate.held:
                self._waiting += 1
                self._cond.notify_all()
            else:
                gate = None
        if gate is not None:
            try:
                gate._wait()
            finally:
                with self._lock:
                    self._waiting -= 1
                    self._cond.notify_all()
        super().fsync(fd)
        with self._lock:
            f = self._files[path]
            for op in f.pending[:covered]:
                _apply(f.durable, op)
            del f.pending[:covered]
            f.exists_durably = True
            self.fsyncs += 1

    def fsync_dir(self, path: str) -> None:
        super().fsync_dir(path)
        folder = os.path.abspath(path)
        with self._lock:
            for p, f in self._files.items():
                if os.path.dirname(p) == folder:
                    f.exists_durably = True
            for d in self._dirs:
                if os.path.dirname(d) == folder:
                    self._dirs[d] = True

    def mkdir(self, path: str) -> None:
        super().mkdir(path)
        with self._lock:
            self._dirs[os.path.abspath(path)] = False

    def _in_volatile_dir(self, key: str) -> bool:
        # Called with the lock held: is some folder above ``key`` not durable yet?
        at = os.path.dirname(key)
        while True:
            if self._dirs.get(at) is False:
                return True
            up = os.path.dirname(at)
            if up == at:
                return False
            at = up

    # --- holding fsyncs --------------------------------------------------------------------

    def hold_fsync(self) -> FsyncGate:
        """From now until ``release()``, every fsync blocks in its calling thread."""
        gate = FsyncGate()
        with self._lock:
            self._gate = gate
        return gate

    @property
    def fsync_waiting(self) -> int:
        """How many fsyncs are blocked on a held gate right now."""
        with self._lock:
            return self._waiting

    def wait_for_held_fsync(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` fsyncs are blocked on the gate; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._waiting < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # --- inspection ------------------------------------------------------------------------

    def durable_image(self, path: str | os.PathLike[str]) -> bytes | None:
        """What ``crash("drop")`` would leave in ``path``: None if it would not exist.

        A file this double never opened counts as durable as it is."""
        key = os.path.abspath(os.fspath(path))
        with self._lock:
            if self._in_volatile_dir(key):
                return None
            f = self._files.get(key)
            if f is None:
                return _read_file(key) if os.path.exists(key) else None
            return bytes(f.durable) if f.exists_durably else None

    def dir_is_durable(self, path: str | os.PathLike[str]) -> bool:
        """Whether the folder would survive ``crash("drop")`` (folders this double did not
        create count as durable, unless one above them is not)."""
        key = os.path.abspath(os.fspath(path))
        with self._lock:
            return self._dirs.get(key, True) and not self._in_volatile_dir(key)

    def unsynced_paths(self) -> list[str]:
        """Files with writes, truncates or an existence not yet made durable, and folders not
        yet made durable, sorted."""
        with self._lock:
            files = [p for p, f in self._files.items() if f.pending or not f.exists_durably]
            return sorted(files + [d for d, durable in self._dirs.items() if not durable])

    # --- the power cut ---------------------------------------------------------------------

    def crash(self, mode: CrashMode, *, seed: int | None = None) -> None:
        """Rewrite every file touched since its last fsync as a power cut could leave it.

        Call it after the store is closed or abandoned (no descriptor may be open). Afterwards
        the files on disk are the new truth and the double starts afresh, so it can be used
        again (by a new store) for the next round. ``seed`` reseeds the random choices of this
        cut (e.g. one drawn by hypothesis); by default the double's own sequence goes on.
        """
        if mode not in ("drop", "prefix", "tear"):
            raise ValueError(f"crash mode {mode!r}: use 'drop', 'prefix' or 'tear'")
        if seed is not None:
            self._rng = random.Random(seed)
        with self._lock:
            if self._paths:
                raise RuntimeError(
                    f"crash() with {len(self._paths)} descriptors open: close or abandon the "
                    "store first"
                )
            for folder in sorted(self._dirs):  # parents sort before their children
                if self._dirs[folder] or not os.path.isdir(folder):
                    continue
                if mode == "drop" or self._rng.random() < 0.5:
                    shutil.rmtree(folder)  # its entry never reached the disk: all of it goes
            for path in sorted(self._files):
                f = self._files[path]
                if not os.path.exists(path):
                    continue  # deleted before the cut: deletions count as durable
                if not f.pending and f.exists_durably:
                    continue
                if not f.exists_durably and (mode == "drop" or self._rng.random() < 0.5):
                    os.unlink(path)
                    continue
                if mode == "drop":
                    content = bytes(f.durable)
                else:
                    content = self._after_cut(f, tear=mode == "tear")
                with open(path, "r+b") as out:
                    out.truncate(0)
                    out.write(content)
            self._files.clear()
            self._dirs.clear()
            self.crashes += 1

    def _after_cut(self, f: _File, *, tear: bool) -> bytes:
        """The durable image plus a random byte prefix of the unsynced ops (and a torn sector)."""
        buf = bytearray(f.durable)
        total = sum(len(op.data) for op in f.pending if isinstance(op, _Write))
        keep = self._rng.randint(0, total)
        seen = 0
        last: tuple[_Write, int] | None = None  # the last write touched, and how much of it
        for op in f.pending:
            if isinstance(op, _Truncate):
                if seen < keep or keep == total:
                    _apply(buf, op)
                continue
            if seen >= keep:
                break
            part = min(len(op.data), keep - seen)
            _apply(buf, _Write(op.pos, op.data[:part]))
            seen += part
            last = (op, part)
        if tear:
            if last is None:
                first = next((op for op in f.pending if isinstance(op, _Write)), None)
                last = (first, 0) if first is not None else None
            if last is not None:
                op, part = last
                at = op.pos + part - 1 if part else op.pos
                sector = at - at % SECTOR
                lo = max(sector, op.pos)
                hi = min(sector + SECTOR, op.pos + len(op.data))
                _apply(buf, _Write(lo, self._rng.randbytes(hi - lo)))
        return bytes(buf)


def abandon(store: FileStore) -> None:
    """Let go of ``store`` as a process killed mid-flight would.

    No sync, no checkpoint, no index save: its descriptors are closed (their data stays in the
    page cache, i.e. on disk here) and its data-folder lock is released, so the folder can be
    reopened in this process. The store and its logs must not be used afterwards.
    """
    store._closed = True  # a later close() is a no-op
    store.fd_cache.close_all()
    os.close(store._lock_fd)
