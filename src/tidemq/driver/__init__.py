"""tidemq.driver: what runs the pure broker core — one sans-IO core (timers, periodic sync,
group commit, backlog blocking, background snapshot I/O) and its thread shell for embedded use.
The server's asyncio shell lives in :mod:`tidemq.server` and uses the same core.

Layering: ``storage`` < ``broker`` < ``driver`` < ``server`` / ``client``.
"""

from ._core import BLOCK_RETRY, BLOCK_TIMEOUT, CommitQueue, DriverConfig, DriverCore
from ._threaded import ThreadDriver, mono_us, now_us

__all__ = [
    "DriverCore",
    "DriverConfig",
    "CommitQueue",
    "ThreadDriver",
    "BLOCK_TIMEOUT",
    "BLOCK_RETRY",
    "now_us",
    "mono_us",
]
