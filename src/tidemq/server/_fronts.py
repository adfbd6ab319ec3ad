"""What the server lends its other fronts — the HTTP API (``tidemq.http``) and the AMQP 0-9-1
front (``tidemq.amqp``): all they may use of the server, nothing more.

The same idea as the binary protocol's ``Services`` (``server/_connection.py``): a front never
holds the ``Server``. Everything here is called on the server's event loop, which owns the
broker (single-threaded by contract). Importing this module imports no front (no aiohttp).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..broker import Broker, SyncToken
from ..errors import StorageFailed, TideMQError
from ..security import Gate
from ._idlepoll import IdlePoll

if TYPE_CHECKING:
    from ._config import ServerConfig
    from ._driver import LoopDriver

__all__ = ["Backend"]


@dataclass(frozen=True, slots=True)
class Backend:
    """The server's parts the HTTP API uses (see the module docstring)."""

    config: ServerConfig
    broker: Broker
    driver: LoopDriver  # after_sync (durability), core.blocked (backlog), sync_times
    gate: Gate | None  # None: a server without users (nobody authenticates)
    now_us: Callable[[], int]
    mono_us: Callable[[], int]
    want_push: Callable[[], None]  # after broker calls: wake consumers, re-arm timers
    end_topic: Callable[[str], None]  # a topic was deleted: tell its binary subscribers
    # Members whose wake-ups the server's push pass hands to the HTTP API (member id ->
    # callback): the broker says a member may have ready messages; the HTTP receiver waits.
    external_members: dict[str, Callable[[], None]]
    binary_connections: Callable[[], int]
    listening: Callable[[], bool]  # the binary port accepts connections
    stopping: Callable[[], bool]
    tls: Callable[[], ssl.SSLContext | None]  # the current TLS context (reloaded on SIGHUP)
    # Errors answered to clients by catalogue code, shared with the server's other ports
    # (tidemq_errors_total); a Backend made alone counts its own.
    errors: Counter[int] = field(default_factory=Counter)
    # The poll before the loop sleeps (spin_us): a front's connections may be watched by it.
    idle: IdlePoll = field(default_factory=lambda: IdlePoll(0))

    async def durable(self, token: SyncToken) -> None:
        """Return once ``token`` is durable at its topic's level (at once when that needs no
        fsync); raise the fsync's error (StorageFailed) if it failed."""
        if not self.broker.needs_sync(token):
            return
        fut: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def done(exc: BaseException | None) -> None:
            if not fut.done():
                fut.set_result(exc)

        self.driver.after_sync(token, done)
        exc = await fut
        if exc is None:
            return
        if isinstance(exc, TideMQError):
            raise exc
        raise StorageFailed(f"fsync failed: {exc}")
