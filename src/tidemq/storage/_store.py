"""Stores: a locked data folder of file logs (``FileStore``), or memory logs (``MemoryStore``).

``open_store(path)`` gives a ``FileStore``; ``open_store(None)`` a ``MemoryStore``. Both are
``LogStore``s: logs are opened by name (``"orders/0"`` is the folder ``logs/orders/0``), listed
and deleted. A ``FileStore`` holds an exclusive ``flock`` on ``<path>/LOCK`` for its lifetime
(D11) and shares one bounded descriptor cache among all its logs.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import threading
from typing import Protocol, runtime_checkable

from tidemq.errors import Closed, DataDirLocked, InvalidArgument, StorageFailed
from tidemq.storage._fdcache import FdCache
from tidemq.storage._filelog import FileLog
from tidemq.storage._fileops import DEFAULT_OPS, FileOps, make_dirs
from tidemq.storage._memlog import MemoryLog
from tidemq.storage._meta import FileMeta, MemoryMeta, MetaStore
from tidemq.storage._recovery import CHECKPOINT
from tidemq.storage._types import LogConfig, PartitionLog

__all__ = ["LogStore", "FileStore", "MemoryStore", "open_store"]

_PART = re.compile(r"[A-Za-z0-9_.\-]+")
LOCK_FILE = "LOCK"
LOGS_DIR = "logs"


def _check_name(name: str) -> list[str]:
    parts = name.split("/")
    if not name or any(p in (".", "..") or not _PART.fullmatch(p) for p in parts):
        raise InvalidArgument(
            f"log name {name!r} must be '/'-separated parts of [A-Za-z0-9_.-], none '.' or '..'"
        )
    return parts


@runtime_checkable
class LogStore(Protocol):
    """Where partition logs live. Methods are thread-safe."""

    def open_log(self, name: str, config: LogConfig | None = None) -> PartitionLog: ...

    def list_logs(self) -> list[str]: ...

    def delete_log(self, name: str) -> None: ...

    @property
    def meta(self) -> MetaStore:
        """Small named blobs beside the logs (catalogue, snapshots): see ``_meta``."""
        ...

    def close(self) -> None: ...


class FileStore:
    """Logs in a data folder, locked against other openers (``DataDirLocked``).

    ``max_open_files`` bounds the segment descriptors kept open across all logs. Folders the
    store creates (the data folder, ``logs/``, each log's folders) are made durable by an fsync
    of their parent before anything in them is (D6); ``ops`` is the file-system interface
    (tests pass doubles).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_open_files: int = 256, ops: FileOps = DEFAULT_OPS
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        try:
            for folder in make_dirs(ops, os.path.join(self.path, LOGS_DIR)):
                ops.fsync_dir(os.path.dirname(folder))  # D6: the new folder's entry
            self._lock_fd = os.open(
                os.path.join(self.path, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise StorageFailed(f"cannot open data folder {self.path}: {exc}") from exc
        try:
            # D11: flock conflicts across processes and across descriptors of one process.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise DataDirLocked(
                f"data folder {self.path} is in use by another process or store "
                f"({exc.strerror}); stop it or use another folder"
            ) from None
        self._ops = ops
        self._fds = FdCache(max_open_files, ops)
        self._logs: dict[str, FileLog] = {}
        self._mutex = threading.Lock()
        self._closed = False
        try:
            self._meta = FileMeta(self.path)
        except OSError as exc:
            os.close(self._lock_fd)
            raise StorageFailed(f"cannot open the metadata folder in {self.path}: {exc}") from exc

    @property
    def fd_cache(self) -> FdCache:
        return self._fds

    @property
    def meta(self) -> FileMeta:
        return self._meta

    def _log_dir(self, name: str) -> str:
        return os.path.join(self.path, LOGS_DIR, *_check_name(name))

    def open_log(self, name: str, config: LogConfig | None = None) -> FileLog:
        """The log called ``name``, created if new; the same object while it stays open.

        Opening an existing log recovers it (``log.recovery``). A ``config`` given for a log
        already open replaces its settings.
        """
        directory = self._log_dir(name)
        with self._mutex:
            if self._closed:
                raise Closed(f"store {self.path} is closed")
            log = self._logs.get(name)
            if log is not None and not log._closed:
                if config is not None:
                    log.config = config
                return log
            log = FileLog(directory, config, fds=self._fds, ops=self._ops)
            self._logs[name] = log
            return log

    def list_logs(self) -> list[str]:
        """Names of every log in the folder, sorted."""
        root = os.path.join(self.path, LOGS_DIR)
        names = []
        for folder, _dirs, files in os.walk(root):
            if CHECKPOINT in files or any(f.endswith(".log") for f in files):
                names.append(os.path.relpath(folder, root).replace(os.sep, "/"))
        return sorted(names)

    def delete_log(self, name: str) -> None:
        """Close and remove the log ``name`` (no error if it does not exist)."""
        directory = self._log_dir(name)
        with self._mutex:
            log = self._logs.pop(name, None)
        if log is not None:
            log._discard()  # no final sync or checkpoint: its data is being deleted
        self._fds.forget_under(directory + os.sep)
        if not os.path.isdir(directory):
            return
        # Rename first so a crash mid-delete never leaves a half log under the live name.
        doomed = f"{directory}.deleted-{os.getpid()}-{threading.get_ident()}"
        try:
            os.replace(directory, doomed)
            self._ops.fsync_dir(os.path.dirname(directory))  # the deletion is durable
            shutil.rmtree(doomed)
        except OSError as exc:
            raise StorageFailed(f"cannot delete log {name!r}: {exc}") from exc

    def close(self) -> None:
        """Close every log (syncing it) and release the lock. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            logs = list(self._logs.values())
            self._logs.clear()
        errors = []
        for log in logs:
            try:
                log.close()
            except StorageFailed as exc:
                errors.append(exc)
        self._fds.close_all()
        os.close(self._lock_fd)  # releases the flock
        if errors:
            raise errors[0]

    def __enter__(self) -> FileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryStore:
    """Memory logs by name: the twin of ``FileStore`` (no lock, nothing on disk)."""

    def __init__(self) -> None:
        self._logs: dict[str, MemoryLog] = {}
        self._mutex = threading.Lock()
        self._closed = False
        self._meta = MemoryMeta()

    @property
    def meta(self) -> MemoryMeta:
        return self._meta

    def open_log(self, name: str, config: LogConfig | None = None) -> MemoryLog:
        _check_name(name)
        with self._mutex:
            if self._closed:
                raise Closed("memory store is closed")
            log = self._logs.get(name)
            if log is None:
                log = self._logs[name] = MemoryLog(config)
            else:
                log._reopen()
                if config is not None:
                    log.config = config
            return log

    def list_logs(self) -> list[str]:
        with self._mutex:
            return sorted(self._logs)

    def delete_log(self, name: str) -> None:
        with self._mutex:
            log = self._logs.pop(name, None)
        if log is not None:
            log.close()

    def close(self) -> None:
        with self._mutex:
            self._closed = True

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(
    path: str | os.PathLike[str] | None, *, max_open_files: int = 256
) -> FileStore | MemoryStore:
    """A ``FileStore`` on ``path`` (locked; ``DataDirLocked`` if taken), or a ``MemoryStore``."""
    if path is None:
        return MemoryStore()
    return FileStore(path, max_open_files=max_open_files)
