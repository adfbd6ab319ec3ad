"""A small key-value store on a RabbitMQ stream queue: the ``amqp://`` backend's metadata.

RabbitMQ has no place to keep a topic's partition count, incarnation or a group's settings that
another client could read (queue and exchange arguments cannot be read back without the
management plugin). So every change is appended to one stream queue, ``P.meta``: a JSON record
``{"o": op, "k": key, "v": value, "l": expected revision, "w": writer}``. Every client consumes
the stream from its first offset for as long as it is connected and folds the records into a
dict; a key's revision is the stream offset of the record that set it. Because every client
folds the same records in the same order, conditional operations need no server support:
``create`` applies only if the key is absent, ``put(last=r)`` only if the key's revision is
still ``r``; the writer learns the outcome when its own record comes back through the stream.
At connect the client appends a marker and waits for it, so it starts with everything written
before it. Cost: the stream grows by one record per change and per connect (kept for ever:
records are small, and this is what a restarted client reads).
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, Final

import aiormq
from aiormq.abc import DeliveredMessage

from ..errors import ConnectionLost, Timeout

__all__ = ["MetaLog"]

_PREFETCH: Final = 500


class MetaLog:
    """The folded state of the metadata stream (see the module docstring)."""

    def __init__(self, conn: aiormq.abc.AbstractConnection, queue: str,
                 timeout: float) -> None:
        self.conn = conn
        self.queue = queue
        self.timeout = timeout
        self.state: dict[str, tuple[Any, int]] = {}
        self.last = -1  # offset folded last
        self._waiting: dict[str, asyncio.Future[int | None]] = {}
        self._ch: aiormq.abc.AbstractChannel | None = None
        self._pub: aiormq.abc.AbstractChannel | None = None
        self._writer = f"{random.getrandbits(64):016x}"
        self._n = 0
        self.failed: BaseException | None = None

    async def start(self) -> None:
        self._pub = await self.conn.channel(publisher_confirms=True)
        await self._pub.queue_declare(self.queue, durable=True,
                                      arguments={"x-queue-type": "stream"})
        self._ch = await self.conn.channel()
        self._ch.closing.add_done_callback(
            lambda f: self._lost(None if f.cancelled() else f.exception()))
        await self._ch.basic_qos(prefetch_count=_PREFETCH)
        await self._ch.basic_consume(self.queue, self._on_message,
                                     arguments={"x-stream-offset": "first"})
        await self.sync()

    async def close(self) -> None:
        for ch in (self._ch, self._pub):
            if ch is not None and not ch.is_closed:
                try:
                    await ch.close()
                except Exception:  # noqa: S110  (closing: the connection goes next)
                    pass

    def _lost(self, exc: BaseException | None) -> None:
        if self.failed is None:
            self.failed = exc or ConnectionLost("the metadata stream's channel closed")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"the metadata stream {self.queue!r} is "
                                                 "not readable (connection lost)"))

    async def _on_message(self, msg: DeliveredMessage) -> None:
        try:
            rec = json.loads(msg.body)
            raw = (msg.header.properties.headers or {}).get("x-stream-offset")
            off = raw if isinstance(raw, int) else self.last + 1
        except (ValueError, TypeError):
            rec, off = {}, self.last + 1
        if off > self.last:
            self.last = off
            result = self._apply(rec, off)
            fut = self._waiting.pop(str(rec.get("w")), None) if isinstance(rec, dict) else None
            if fut is not None and not fut.done():
                fut.set_result(result)
        if self._ch is not None and not self._ch.is_closed and msg.delivery_tag is not None:
            await self._ch.basic_ack(msg.delivery_tag)

    def _apply(self, rec: Any, off: int) -> int | None:
        if not isinstance(rec, dict):
            return None
        op, key = rec.get("o"), rec.get("k")
        if op == "m" or not isinstance(key, str):
            return off
        have = self.state.get(key)
        if op == "c":
            if have is not None:
                return None
            self.state[key] = (rec.get("v"), off)
            return off
        if op == "p":
            last = rec.get("l")
            if last is not None and (have is None or have[1] != last):
                return None
            self.state[key] = (rec.get("v"), off)
            return off
        if op == "d":
            self.state.pop(key, None)
            return off
        return None

    async def _append(self, rec: dict[str, Any]) -> int | None:
        if self.failed is not None or self._pub is None or self._pub.is_closed:
            raise ConnectionLost(f"the metadata stream {self.queue!r} is not readable "
                                 f"({self.failed!r}); reconnect")
        self._n += 1
        w = f"{self._writer}:{self._n}"
        rec["w"] = w
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiting[w] = fut
        try:
            await self._pub.basic_publish(json.dumps(rec, separators=(",", ":")).encode(),
                                          routing_key=self.queue,
                                          properties=aiormq.spec.Basic.Properties(
                                              delivery_mode=2))
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            raise Timeout(f"the metadata stream {self.queue!r} did not echo a record within "
                          f"{self.timeout:g} s; retry") from None
        except aiormq.exceptions.AMQPError as exc:
            raise ConnectionLost(f"writing the metadata stream {self.queue!r}: {exc!r}") \
                from None
        finally:
            self._waiting.pop(w, None)

    async def sync(self) -> None:
        """Return once every record appended before this call is folded."""
        await self._append({"o": "m"})

    def get(self, key: str) -> tuple[Any, int] | None:
        return self.state.get(key)

    def keys(self, prefix: str) -> list[str]:
        dotted = prefix + "."
        return sorted(k for k in self.state if k.startswith(dotted))

    async def create(self, key: str, value: Any) -> int | None:
        """The new revision, or None if the key exists."""
        return await self._append({"o": "c", "k": key, "v": value})

    async def put(self, key: str, value: Any, last: int | None = None) -> int | None:
        """The new revision, or None if ``last`` is given and is not the key's revision."""
        return await self._append({"o": "p", "k": key, "v": value, "l": last})

    async def delete(self, key: str) -> None:
        await self._append({"o": "d", "k": key})
