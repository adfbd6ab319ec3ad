"""Give each transport style the other face (see ``_transport``).

- :class:`AsyncOverEmbedded`: the embedded transport as coroutines. Non-blocking work runs inline
  on the loop (a lock and a function call); waiting — for a message, or for an fsync under
  ``always`` — runs in a worker thread, so other tasks keep going and share the fsync.
- :class:`SyncOverAsync`: an async transport driven from a private event-loop thread, for the
  blocking ``Client`` over the network. Thread-safe: any thread may call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from ..broker._types import (
    Delivery,
    GroupInfo,
    GroupSettings,
    StartPosition,
    TopicConfig,
    TopicInfo,
)
from ..errors import Closed
from ..storage import Record
from ._embedded import EmbeddedTransport
from ._transport import AsyncTransport

__all__ = ["AsyncOverEmbedded", "SyncOverAsync"]

T = TypeVar("T")


class AsyncOverEmbedded:
    """An :class:`AsyncTransport` over an :class:`EmbeddedTransport`."""

    def __init__(self, inner: EmbeddedTransport) -> None:
        self.inner = inner

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
        ids, token = self.inner.publish_nowait(topic, records)
        await self._durable(token)
        return ids

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
        await asyncio.to_thread(self.inner.reset_group, topic, group, start)

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
        return await asyncio.to_thread(self.inner.receive, member, max_messages, timeout)

    async def ack(self, member: str, ids: Sequence[str]) -> None:
        await self._durable(self.inner.ack_nowait(member, ids))

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
        await asyncio.to_thread(self.inner.close)

    async def _durable(self, token: Any) -> None:
        # Under 'always' the fsync runs in a worker thread: other tasks go on and share it.
        if self.inner.needs_durable(token):
            await asyncio.to_thread(self.inner.wait_durable, token)


class SyncOverAsync:
    """A thread-safe blocking face for an :class:`AsyncTransport`, on its own loop thread."""

    def __init__(self, make: Callable[[], Coroutine[Any, Any, AsyncTransport]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tidemq-io",
                                        daemon=True)
        self._thread.start()
        try:
            self._inner: AsyncTransport = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise Closed("this client is closed; open a new one")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._inner, name)

        def call(*args: Any) -> Any:
            return self._run(method(*args))

        return call

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._inner.close())
        finally:
            self._stop_loop()
