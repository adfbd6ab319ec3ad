"""``Client.publish(..., wait=False)`` over ``tidemq://``: a producer for blocking code.

A call costs a couple of microseconds and never runs the event loop: the record and a new
``concurrent.futures.Future`` are appended to a queue (``deque.append``: atomic, no lock), and
the future is returned. The loop (a caller's, or the pump's) drains the queue ``linger`` seconds
after the first record of a batch, at once when ``batch_bytes`` are queued, and at ``flush()``
/ ``close()``; it groups the records per topic in chunks of at most ``batch_bytes`` and hands
each chunk to the transport's batching producer (``_tcp_producer``: split by partition,
numbered for idempotent retries, sent). A chunk's futures are resolved together when the server
confirmed it at the topic's durability — or all failed with the server's typed error (a chunk
spanning partitions is stored per partition, as ``publish_batch`` is).

Bounded memory: once ``buffer_bytes`` of records are queued or unconfirmed, a call waits for
room (Kafka's ``buffer.memory``).

Futures are made cheaply — the cyclic garbage collector's passes over in-flight futures
measured more than the rest of the call, so a future is one object with nothing set per
instance: its fields start as class defaults (state RUNNING: ``cancel()`` returns False, a
message handed over cannot be taken back), the condition is the producer's (one for all its
futures), and the waiter and callback lists are made on first use. Since one condition serves
many futures, ``result()`` and ``exception()`` wait again after a wake-up that was for another
future. Everything else is ``concurrent.futures.Future``'s own behaviour.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from ..errors import Closed
from ..storage import Record
from ._runner import LoopRunner

__all__ = ["NowaitProducer"]

_RUNNING = "RUNNING"
_FINISHED = "FINISHED"
_OVERHEAD = 16  # bytes counted per record beyond its body
# The fields Future.__init__ sets; if a Python version changes them, plain futures are used.
_FAST = set(vars(Future())) == {"_condition", "_state", "_result", "_exception", "_waiters",
                                "_done_callbacks"}
_new = object.__new__


class _LazyList:
    """A list attribute made on first use (most futures never get a waiter or a callback)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        value: list[Any] = []
        obj.__dict__[self.name] = value
        return value


class _IdFuture(Future[str]):
    """A ``concurrent.futures.Future`` made without ``__init__`` (see the module doc). Each
    producer makes a subclass whose class attribute ``_condition`` is its condition."""

    _state = _RUNNING
    _result = None
    _exception = None
    _waiters = _LazyList()
    _done_callbacks = _LazyList()

    def _wait_done(self, timeout: float | None) -> None:
        # The condition is shared: wait again until this future is done or time is up.
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:  # type: ignore[attr-defined]
            while self._state == _RUNNING:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                self._condition.wait(remaining)  # type: ignore[attr-defined]

    def result(self, timeout: float | None = None) -> str:
        self._wait_done(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_done(timeout)
        return super().exception(0)


Item = tuple[str, Record, Future[str], bool]  # topic, record, its future, whether bare


class NowaitProducer:
    """Queues records from any thread; sends and settles them on ``runner``'s loop.

    ``publish(topic, records)`` is the transport's batching publish (an awaitable of the ids in
    order); with ``plain_hint`` it also takes ``plain=True`` for a chunk of bare bodies."""

    def __init__(self, runner: LoopRunner,
                 publish: Callable[..., Awaitable[list[str]]], *,
                 linger: float = 0.002, batch_bytes: int = 256 * 1024,
                 buffer_bytes: int = 64 * 1024 * 1024, plain_hint: bool = False) -> None:
        self._runner = runner
        self._publish = publish
        self._plain_hint = plain_hint
        self._linger = linger
        self._batch_bytes = batch_bytes
        self._buffer_bytes = buffer_bytes
        self._queue: deque[Item] = deque()
        self._cond = threading.Condition()  # every future's; also where callers wait for room
        self._future: type[Future[str]] = (
            type("IdFuture", (_IdFuture,), {"_condition": self._cond}) if _FAST else Future)
        # Counters written without a lock by several threads: approximate, and only used to
        # decide when to drain early and when to wait for room.
        self._queued = 0  # bytes appended since the last drain
        self._unsettled = 0  # bytes drained and not yet settled (written on the loop only)
        self._armed = False  # a drain is scheduled
        self._sending: set[asyncio.Future[list[str]]] = set()  # loop side

    # --- any thread -------------------------------------------------------------------------

    def add(self, topic: str, rec: Record, bare: bool = False) -> Future[str]:
        """Queue ``rec`` (``bare``: a body and nothing else); its future."""
        fut: Future[str] = _new(self._future) if _FAST else Future()
        self._queue.append((topic, rec, fut, bare))
        queued = self._queued = self._queued + len(rec.body) + _OVERHEAD
        if not self._armed:
            self._armed = True
            self._runner.post(self._arm)
        elif queued >= self._batch_bytes:
            self._queued = 0  # one early drain per batch_bytes queued
            self._runner.post(self._drain)
            if self._unsettled >= self._buffer_bytes:
                self._wait_room()
        return fut

    def _wait_room(self) -> None:
        """Wait until confirmations make room below ``buffer_bytes`` (a closed client raises
        Closed)."""
        with self._cond:
            while self._unsettled >= self._buffer_bytes:
                if self._runner.closed:
                    raise Closed("this client is closed; open a new one")
                self._cond.wait(0.5)

    def hand_off_all(self) -> None:
        """Send everything queued now (before a flush or a close)."""
        self._runner.post(self._drain)

    # --- on the loop ------------------------------------------------------------------------

    def _arm(self) -> None:
        self._runner.loop.call_later(self._linger, self._drain)

    def _drain(self) -> None:
        self._armed = False
        self._queued = 0
        queue = self._queue
        if not queue:
            return
        # topic -> (records, futures, [bytes, all bare])
        chunks: dict[str, tuple[list[Record], list[Future[str]], list[Any]]] = {}
        limit = self._batch_bytes
        popleft = queue.popleft
        for _ in range(len(queue)):
            topic, rec, fut, bare = popleft()
            chunk = chunks.get(topic)
            if chunk is None:
                chunk = chunks[topic] = ([], [], [0, True])
            chunk[0].append(rec)
            chunk[1].append(fut)
            info = chunk[2]
            info[0] += len(rec.body) + _OVERHEAD
            if not bare:
                info[1] = False
            if info[0] >= limit:
                self._send(topic, *chunk)
                del chunks[topic]
        for topic, chunk in chunks.items():
            self._send(topic, *chunk)

    def _send(self, topic: str, records: list[Record], futures: list[Future[str]],
              info: list[Any]) -> None:
        size = info[0]
        self._unsettled += size
        try:
            if info[1] and self._plain_hint:
                aw = self._publish(topic, records, plain=True)
            else:
                aw = self._publish(topic, records)
            task = asyncio.ensure_future(aw, loop=self._runner.loop)
        except BaseException as exc:  # noqa: BLE001 - a closed transport: fail the callers
            self._settle_with(futures, size, None, exc)
            return
        self._sending.add(task)
        task.add_done_callback(partial(self._settle, futures, size))

    def _settle(self, futures: list[Future[str]], size: int,
                task: asyncio.Future[list[str]]) -> None:
        self._sending.discard(task)
        if task.cancelled():
            self._settle_with(futures, size, None,
                              Closed("the client was closed before the server confirmed"))
        elif (exc := task.exception()) is not None:
            self._settle_with(futures, size, None, exc)
        else:
            self._settle_with(futures, size, task.result(), None)

    def _settle_with(self, futures: list[Future[str]], size: int, ids: list[str] | None,
                     exc: BaseException | None) -> None:
        if not _FAST:
            for i, f in enumerate(futures):
                if ids is not None:
                    f.set_result(ids[i])
                else:
                    f.set_exception(exc)
        else:
            with self._cond:
                if ids is not None:
                    for f, mid in zip(futures, ids, strict=True):
                        f._result = mid  # type: ignore[attr-defined]
                        f._state = _FINISHED  # type: ignore[attr-defined]
                else:
                    for f in futures:
                        f._exception = exc  # type: ignore[attr-defined]
                        f._state = _FINISHED  # type: ignore[attr-defined]
                self._unsettled -= size
                self._cond.notify_all()
            for f in futures:  # what Future.set_result does besides: waiters, callbacks
                d = f.__dict__
                if d.get("_waiters") or d.get("_done_callbacks"):
                    for w in f._waiters:  # type: ignore[attr-defined]
                        if exc is None:
                            w.add_result(f)
                        else:
                            w.add_exception(f)
                    f._invoke_callbacks()  # type: ignore[attr-defined]
            return
        with self._cond:
            self._unsettled -= size
            self._cond.notify_all()

    async def drained(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` s) until everything handed over is settled."""
        self._drain()
        loop = self._runner.loop
        deadline = loop.time() + timeout
        while self._sending and loop.time() < deadline:
            await asyncio.wait(set(self._sending), timeout=deadline - loop.time())

    def fail_queued(self, exc: BaseException) -> None:
        """Closing: what was never handed over fails with ``exc``."""
        futures: list[Future[str]] = []
        while self._queue:
            futures.append(self._queue.popleft()[2])
        if futures:
            self._settle_with(futures, 0, None, exc)
