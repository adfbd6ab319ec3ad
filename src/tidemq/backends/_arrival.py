"""How a member's ``receive`` waits for messages to arrive, on NATS and RabbitMQ alike: one
future and one timer. The arrival resolves the future directly, so the receiver runs in the next
loop iteration (``wait_for`` on an ``Event`` costs a task and two more iterations: latency)."""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Waiting", "wait_arrival", "wake"]


class Waiting(Protocol):
    waiter: asyncio.Future[None] | None  # a receive waiting for an arrival


def wake(fut: asyncio.Future[None] | None) -> None:
    """An arrival (or the timeout): let the waiting receive go on."""
    if fut is not None and not fut.done():
        fut.set_result(None)


async def wait_arrival(owner: Waiting, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
    """Until ``wake(owner.waiter)`` or ``timeout`` s pass."""
    fut: asyncio.Future[None] = loop.create_future()
    owner.waiter = fut
    timer = loop.call_later(timeout, wake, fut)
    try:
        await fut
    finally:
        timer.cancel()
        owner.waiter = None
