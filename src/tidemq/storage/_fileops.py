"""The operating-system calls the file log makes, behind one object so tests can inject faults.

``FileLog`` and ``FdCache`` never call ``os.write``/``os.fsync`` directly; they call a
``FileOps``. A test passes a subclass whose ``pwritev`` raises ``ENOSPC`` or whose ``fsync``
raises ``EIO`` (NATS's ``mockWriteErr``) and checks the log's typed errors and failed state.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

__all__ = [
    "FileOps",
    "DEFAULT_OPS",
    "is_disk_full",
    "is_out_of_descriptors",
    "make_dirs",
    "write_all",
]

_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
_fallocate = getattr(os, "posix_fallocate", None)


class FileOps:
    """Thin wrappers of ``os`` calls; every method may raise ``OSError``."""

    def open(self, path: str, *, create: bool = False) -> int:
        flags = _OPEN_FLAGS | (os.O_CREAT | os.O_EXCL if create else 0)
        return os.open(path, flags, 0o644)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwritev(self, fd: int, buffers: Sequence[bytes | bytearray | memoryview], pos: int) -> int:
        return os.pwritev(fd, buffers, pos)

    def pread(self, fd: int, size: int, pos: int) -> bytes:
        return os.pread(fd, size, pos)

    def fsync(self, fd: int) -> None:
        # fdatasync also flushes the file size, which is all the metadata a log append changes.
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def preallocate(self, fd: int, size: int) -> None:
        """Make the file at least ``size`` bytes long, its new bytes zeros on allocated blocks
        (``posix_fallocate``): later writes inside it change no file size (D12). Raises
        ``OSError(EOPNOTSUPP)`` where the platform has no ``posix_fallocate`` (macOS)."""
        if _fallocate is None:
            raise OSError(errno.EOPNOTSUPP, "posix_fallocate is not available here")
        _fallocate(fd, 0, size)

    def fsync_dir(self, path: str) -> None:
        """Make the folder's entries (files and folders created, renamed or deleted in it)
        durable. Opens the folder, so it can fail like ``open`` (EMFILE) as well as ``fsync``."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def mkdir(self, path: str) -> None:
        """Create one folder (its parent must exist); ``FileExistsError`` if it does."""
        os.mkdir(path, 0o755)


DEFAULT_OPS = FileOps()


def is_disk_full(exc: OSError) -> bool:
    """True for the errors that mean 'no space now, maybe later' (ENOSPC, EDQUOT)."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


# Opening a file needs a free descriptor (EMFILE: this process's limit, ENFILE: the system's)
# and a little kernel memory (ENOMEM). All three pass when descriptors are closed or memory
# is freed: nothing is wrong with the disk or the file, so they never mean the failed state.
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def is_out_of_descriptors(exc: OSError) -> bool:
    """True for the errors of an *open* that mean 'no descriptor now, maybe later'."""
    return exc.errno in _OUT_OF_DESCRIPTORS


def make_dirs(ops: FileOps, path: str) -> list[str]:
    """Create ``path`` and its missing parents through ``ops``; returns the folders created,
    outermost first. Each one's entry lives in its parent, so a caller that wants them to
    survive a power cut fsyncs the parent of each (``ops.fsync_dir``)."""
    missing: list[str] = []
    at = os.path.abspath(path)
    while not os.path.isdir(at):
        missing.append(at)
        parent = os.path.dirname(at)
        if parent == at:
            break
        at = parent
    created: list[str] = []
    for folder in reversed(missing):
        try:
            ops.mkdir(folder)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
            # Made meanwhile by another thread: its parent may not be fsynced yet, so this
            # caller makes it durable too (one fsync too many at worst).
        created.append(folder)
    return created


def write_all(
    ops: FileOps, fd: int, buffers: Sequence[bytes | bytearray | memoryview], pos: int
) -> int:
    """Write every byte of ``buffers`` at ``pos`` (looping over short writes); returns the total."""
    total = sum(len(b) for b in buffers)
    done = ops.pwritev(fd, buffers, pos)
    if done == total:
        return total
    # A short write (rare: signals, nearly full disks): finish from one joined buffer.
    rest = memoryview(b"".join(buffers))
    while done < total:
        n = ops.pwritev(fd, [rest[done:]], pos + done)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        done += n
    return total
