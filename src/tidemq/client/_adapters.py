"""The embedded transport's async face (see ``_transport``), in two flavours.

:class:`AsyncOverEmbedded` gives the blocking :class:`~tidemq.client._embedded.EmbeddedTransport`
the :class:`~tidemq.client._transport.AsyncTransport` interface, so the one client source
(``AsyncClient``) runs over it:

- ``inline=False`` (``AsyncClient``): non-blocking work runs inline on the loop (a lock and a
  function call); waiting — for a message, or for an fsync under ``always`` — runs in a worker
  thread, so other tasks keep going and share the fsync.
- ``inline=True`` (the blocking ``Client``): every coroutine finishes without suspending — the
  waits block the calling thread, as a blocking call should — so ``_runner.InlineRunner``
  drives them with no event loop at all. Thread-safe, as the embedded transport is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..broker._types import (
    Delivery,
    GroupInfo,
    GroupSettings,
    StartPosition,
    TopicConfig,
    TopicInfo,
)
from ..storage import Record
from ._embedded import EmbeddedTransport
from ._transport import Done

__all__ = ["AsyncOverEmbedded"]

T = TypeVar("T")


class AsyncOverEmbedded:
    """An :class:`AsyncTransport` over an :class:`EmbeddedTransport` (see the module doc)."""

    def __init__(self, inner: EmbeddedTransport, *, inline: bool = False) -> None:
        self.inner = inner
        self.inline = inline

    async def _wait(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking wait: in this thread when inline, else in a worker thread."""
        if self.inline:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def create_topic(self, name: str, config: TopicConfig, exist_ok: bool) -> TopicInfo:
        return self.inner.create_topic(name, config, exist_ok)

    async def delete_topic(self, name: str) -> None:
        self.inner.delete_topic(name)

    async def list_topics(self) -> list[TopicInfo]:
        return self.inner.list_topics()

    async def describe_topic(self, name: str) -> TopicInfo:
        return self.inner.describe_topic(name)

    async def set_partitions(self, name: str, partitions: int) -> TopicInfo:
        return self.inner.set_partitions(name, partitions)

    async def publish(self, topic: str, records: Sequence[Record]) -> list[str]:
        if self.inline:
            return self.inner.publish(topic, records)
        ids, token = self.inner.publish_nowait(topic, records)
        await self._durable(token)
        return ids

    def publish_one(self, topic: str, record: Record) -> Awaitable[str] | None:
        if self.inline:
            return Done(self.inner.publish(topic, (record,))[0])
        return None

    async def flush_all(self) -> None:
        self.inner.flush("")

    async def create_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        return self.inner.create_group(topic, group, settings)

    async def update_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        return self.inner.update_group(topic, group, settings)

    async def delete_group(self, topic: str, group: str) -> None:
        self.inner.delete_group(topic, group)

    async def list_groups(self, topic: str) -> list[GroupInfo]:
        return self.inner.list_groups(topic)

    async def describe_group(self, topic: str, group: str) -> GroupInfo:
        return self.inner.describe_group(topic, group)

    async def reset_group(self, topic: str, group: str, start: StartPosition) -> None:
        await self._wait(self.inner.reset_group, topic, group, start)

    async def redrive(self, topic: str, group: str, limit: int | None) -> int:
        return self.inner.redrive(topic, group, limit)

    async def subscribe(
        self, topic: str, group: str, settings: GroupSettings | None, prefetch: int
    ) -> str:
        return self.inner.subscribe(topic, group, settings, prefetch)

    async def receive(self, member: str, max_messages: int, timeout: float) -> list[Delivery]:
        got = self.inner.receive(member, max_messages, 0)
        if got or timeout <= 0:
            return got
        return await self._wait(self.inner.receive, member, max_messages, timeout)

    def receive_nowait(self, member: str, max_messages: int) -> list[Delivery] | None:
        return self.inner.receive(member, max_messages, 0) or None

    def ack_start(self, member: str, ids: Sequence[str]) -> Awaitable[None] | None:
        if self.inline:
            self.inner.ack(member, ids)
            return None
        token = self.inner.ack_nowait(member, ids)
        return self._durable(token) if self.inner.needs_durable(token) else None

    async def flush(self, member: str) -> None:
        self.inner.flush(member)

    async def nack(self, member: str, ids: Sequence[str], delay: float | None) -> None:
        await self._durable(self.inner.nack_nowait(member, ids, delay))

    async def extend(self, member: str, ids: Sequence[str], seconds: float) -> None:
        self.inner.extend(member, ids, seconds)

    async def reject(self, member: str, ids: Sequence[str], reason: str) -> None:
        await self._durable(self.inner.reject_nowait(member, ids, reason))

    async def unsubscribe(self, member: str) -> None:
        self.inner.unsubscribe(member)

    async def close(self) -> None:
        await self._wait(self.inner.close)

    async def _durable(self, token: Any) -> None:
        # Under 'always' the fsync runs in a worker thread: other tasks go on and share it.
        if self.inner.needs_durable(token):
            await self._wait(self.inner.wait_durable, token)
