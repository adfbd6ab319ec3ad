"""Socket reads of the engines' own clients (nats-py, aiormq), sized for the heap.

asyncio's socket transport reads into a new ``bytes`` of ``max_size`` (256 KiB) per read. That
is above glibc's mmap threshold (128 KiB), so each read is an ``mmap``, an ``mremap`` to the
size read and a ``munmap`` — the last a TLB shootdown on every CPU that runs a thread of the
process (the blocking client's callers and pump). strace of a blocking publish/receive run on
``nats://``: three of those syscalls and page faults per message. 64 KiB reads come from the
heap. (TideMQ's own client reads into a buffer of its own: ``client/_tcp.py``'s ``_Wire``.)
"""

from __future__ import annotations

from asyncio import selector_events
from typing import Any

__all__ = ["READ_SIZE", "heap_reads"]

READ_SIZE = 64 * 1024


def heap_reads(transport: Any) -> bool:
    """Make ``transport`` (an asyncio selector socket transport) read at most
    :data:`READ_SIZE` bytes at a time; False (unchanged) for any other transport (uvloop's,
    TLS: those read into buffers of their own)."""
    cls = getattr(selector_events, "_SelectorSocketTransport", None)
    if cls is None or not isinstance(transport, cls) or not hasattr(transport, "max_size"):
        return False
    transport.max_size = READ_SIZE
    return True
