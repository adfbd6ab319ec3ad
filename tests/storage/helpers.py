"""Helpers shared by the storage tests: a factory of file or memory logs, test batches."""

from __future__ import annotations

from pathlib import Path

from tidemq.storage import FileStore, LogConfig, MemoryStore, PartitionLog, encode_bodies


class LogFactory:
    """Opens the log ``t/0`` in a file or memory store; ``reopen`` closes and opens it again."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.store: FileStore | MemoryStore = FileStore(path) if kind == "file" else MemoryStore()

    def open(self, config: LogConfig | None = None) -> PartitionLog:
        return self.store.open_log("t/0", config or LogConfig())

    def reopen(self, log: PartitionLog, config: LogConfig | None = None) -> PartitionLog:
        log.close()
        return self.open(config or log.config)

    def close(self) -> None:
        self.store.close()


def bodies(start: int, n: int, size: int = 20) -> list[bytes]:
    """Distinct bodies b'<i>-xxxx' so a test can tell every record apart."""
    return [f"{i}-".encode().ljust(size, b"x") for i in range(start, start + n)]


def batch(start: int, n: int, size: int = 20) -> bytes:
    return encode_bodies(bodies(start, n, size))


def all_bodies(log: PartitionLog, offset: int = 0) -> list[bytes]:
    """Every body from ``offset`` to the end, via bounded reads."""
    out: list[bytes] = []
    while offset < log.end_offset:
        views = log.read(offset, max_records=50, max_bytes=4096)
        if not views:
            break
        for v in views:
            skip = max(0, offset - v.base_offset)
            out.extend(v.bodies()[skip:])
            offset = v.last_offset + 1
    return out
