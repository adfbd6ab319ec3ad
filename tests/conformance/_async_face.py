"""The asyncio client behind the blocking client's surface, so each conformance test body runs
on both faces (``face`` fixture). Every call is awaited on a private event-loop thread; the
wrapped objects forward to ``AsyncClient`` / ``AsyncSubscription`` / ``AsyncMessage`` and add
nothing but the hop, so a difference between the faces shows up as a failing test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import tidemq


class AsyncFace:
    """``tidemq.AsyncClient(url)`` with blocking methods."""

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="async-face")
        self._thread.start()
        self._ac = tidemq.AsyncClient(url, **options)
        try:
            self.call(self._ac.connect)
        except BaseException:
            self.shutdown()
            raise

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """``await fn(*args, **kw)`` on the loop thread (the call itself runs there too: the
        async client is used from its loop only)."""
        async def go() -> Any:
            return await fn(*args, **kw)

        return asyncio.run_coroutine_threadsafe(go(), self._loop).result(60)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._ac, name)

        def call(*args: Any, **kw: Any) -> Any:
            return self.call(method, *args, **kw)

        return call

    @property
    def url(self) -> str:
        return self._ac.url

    def capabilities(self) -> Any:
        return self._ac.capabilities()  # a plain method: nothing to await

    def subscribe(self, topic: str, group: str, **options: Any) -> SubFace:
        async def join() -> tidemq.AsyncSubscription:
            return await self._ac.subscribe(topic, group, **options)

        return SubFace(self, self.call(join))

    def consume(self, topic: str, group: str, callback: Callable[[Any], Any], *,
                workers: int = 1, **options: Any) -> ConsumerFace:
        consumer = ConsumerFace(self)

        async def handle(msg: tidemq.AsyncMessage) -> None:
            try:
                await asyncio.to_thread(callback, MsgFace(self, msg))
            except Exception:
                consumer.failed += 1
                raise
            consumer.processed += 1

        consumer.tasks = self.call(self._ac.consume, topic, group, handle, workers=workers,
                                   **options)
        return consumer

    def close(self) -> None:
        self.call(self._ac.close)

    def __enter__(self) -> AsyncFace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shutdown(self) -> None:
        """Close the client (if open) and stop the loop thread."""
        try:
            self.call(self._ac.close)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()


class SubFace:
    def __init__(self, face: AsyncFace, sub: tidemq.AsyncSubscription) -> None:
        self._face = face
        self._sub = sub
        self.topic = sub.topic
        self.group = sub.group

    def receive(self, max_messages: int = 100, timeout: float = 1.0) -> list[MsgFace]:
        got = self._face.call(self._sub.receive, max_messages, timeout)
        return [MsgFace(self._face, m) for m in got]

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._sub, name)

        def call(*args: Any, **kw: Any) -> Any:
            return self._face.call(method, *args, **kw)

        return call


class MsgFace:
    """An ``AsyncMessage``: its fields as they are, its methods awaited on the loop."""

    def __init__(self, face: AsyncFace, msg: tidemq.AsyncMessage) -> None:
        self._face = face
        self._msg = msg

    @property
    def id(self) -> str:
        return self._msg.id

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._msg, name)
        if not callable(value):
            return value

        def call(*args: Any, **kw: Any) -> Any:
            return self._face.call(value, *args, **kw)

        return call


class ConsumerFace:
    """What ``AsyncClient.consume`` started: its tasks; ``stop()`` cancels them (the member
    then leaves its group)."""

    def __init__(self, face: AsyncFace) -> None:
        self._face = face
        self.tasks: list[asyncio.Task[None]] = []
        self.processed = 0
        self.failed = 0

    def stop(self) -> None:
        async def cancel() -> None:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        self._face.call(cancel)
