"""``atomic_write``: the one way small metadata files are written (litestream's recipe)."""

from __future__ import annotations

import os
import threading

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(path: str) -> None:
    """Make a directory's entries (created, renamed, deleted files) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content.

    Writes a temporary file in the same folder, fsyncs it, renames it over ``path`` and fsyncs
    the folder (D2). ``durable=False`` skips both fsyncs: the rename is still atomic against a
    process crash, but after a power loss the file may be old, new or empty; only derived,
    self-checking files (the segment indexes, D4) use that. Raises ``OSError``; on error the
    temporary file is removed.
    """
    target = os.fspath(path)
    folder = os.path.dirname(target) or "."
    tmp = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(folder)
