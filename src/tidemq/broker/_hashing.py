"""Partition choice (SPEC §2).

With a key: ``xxh3_64(key bytes) mod partitions``, identical in every process and version (never
Python's salted ``hash()``); a ``str`` key is UTF-8 encoded. Growing the partition count remaps
keys from then on, as in Kafka. Without a key the broker spreads publishes evenly with *sticky
batches*: each publish call's keyless records go to one partition, the next call to the next one,
so a batch stays one append.
"""

from __future__ import annotations

import xxhash

__all__ = ["partition_for_key", "StickyPartitioner"]

_xxh3 = xxhash.xxh3_64_intdigest


def partition_for_key(key: bytes | str, n: int) -> int:
    """The partition of ``key`` among ``n`` partitions; stable across processes and versions."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    return int(_xxh3(key)) % n


class StickyPartitioner:
    """Round-robin over partitions, one step per batch of keyless records.

    Deterministic (starts at partition 0) so tests can predict it; not thread-safe (the broker is
    called from one thread at a time).
    """

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def next_partition(self, n: int) -> int:
        p = self._next % n
        self._next = p + 1
        return p
