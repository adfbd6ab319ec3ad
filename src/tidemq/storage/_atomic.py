"""``atomic_write``: the one way small metadata files are written (litestream's recipe)."""

from __future__ import annotations

import os
import threading

from tidemq.storage._fileops import DEFAULT_OPS, FileOps

__all__ = ["atomic_write", "fsync_dir", "TMP_SUFFIX"]

# atomic_write's temporary files are "<target>.<pid>.<thread id>.tmp". One left behind by a
# process that died mid-write is never the live copy: opening a log removes it (D2).
TMP_SUFFIX = ".tmp"


def fsync_dir(path: str) -> None:
    """Make a directory's entries (created, renamed, deleted files) durable."""
    DEFAULT_OPS.fsync_dir(path)


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, durable: bool = True, ops: FileOps | None = None,
    mode: int = 0o644,
) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content.

    Writes a temporary file in the same folder, fsyncs it, renames it over ``path`` and fsyncs
    the folder (D2; the folder through ``ops.fsync_dir`` when ``ops`` is given, so a test double
    sees it). ``durable=False`` skips both fsyncs: the rename is still atomic against a
    process crash, but after a power loss the file may be old, new or empty; only derived,
    self-checking files (the segment indexes, D4) use that. ``mode`` is the new file's
    permission bits from its creation on (a leftover temporary file is given them too), so a
    private file (0600: the users file) is never readable by others, not even for a moment.
    Raises ``OSError``; on error the temporary file is removed, and the call may simply be
    repeated.
    """
    target = os.fspath(path)
    folder = os.path.dirname(target) or "."
    tmp = f"{target}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            if mode != 0o644 and hasattr(os, "fchmod"):
                os.fchmod(fd, mode)  # an existing leftover temporary file keeps its old mode
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
        (DEFAULT_OPS if ops is None else ops).fsync_dir(folder)
