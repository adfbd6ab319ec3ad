"""Group commit: every fsync runs off the event loop, coordinated by one worker thread.

Writers under durability ``always`` hand their sync token and a completion callback to
:meth:`GroupCommitter.submit`. While one fsync round runs, new tokens queue up; when it ends,
the next round takes *all* of them at once. The storage layer's ``sync(position)`` returns at
once for a position an earlier fsync already covered, so a round of N tokens on one partition
costs one fsync, and N concurrent producers share it (SPEC §6: group commit).

The periodic ``sync_all`` for durability ``interval`` runs on the same thread, so the two never
fsync the same file concurrently.

Thread safety: ``submit`` and ``sync_all`` are called on the event loop only; callbacks run on the
event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["GroupCommitter", "Syncable"]

Done = Callable[[BaseException | None], None]


class Syncable(Protocol):
    """The part of :class:`tidemq.broker.Broker` this module drives (from its worker thread)."""

    def sync(self, token: Any) -> None: ...
    def sync_all(self) -> None: ...


class GroupCommitter:
    """Coalesces sync requests into rounds on a single worker thread."""

    def __init__(self, broker: Syncable, loop: asyncio.AbstractEventLoop, *,
                 fsync_threads: int = 4) -> None:
        self._broker = broker
        self._loop = loop
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tidemq-commit")
        # Helpers for the parallel fsyncs of one phase (see _sync_tokens); never used directly
        # by the loop.
        self._fsync_pool = concurrent.futures.ThreadPoolExecutor(
            fsync_threads, thread_name_prefix="tidemq-fsync")
        self._pending: list[tuple[Any, Done]] = []
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.rounds = 0  # fsync rounds run (statistics; tests check coalescing with it)
        self.tokens = 0  # tokens synced

    def submit(self, token: Any, done: Done) -> None:
        """Make ``token`` durable, then call ``done(None)`` (or ``done(exc)``) on the loop."""
        self._pending.append((token, done))
        if not self._busy:
            self._start_round()

    def _start_round(self) -> None:
        batch, self._pending = self._pending, []
        self._busy = True
        self._idle.clear()
        fut = self._loop.run_in_executor(self._pool, self._sync_tokens, [t for t, _ in batch])
        fut.add_done_callback(lambda f: self._finish_round(f, batch))

    def _sync_tokens(self, tokens: list[Any]) -> None:
        """Runs on the worker thread: make every token of the round durable.

        A token lists ``(log, position)`` entries in the order they must become durable (data
        before the journal describing it, SPEC §6). The round runs in *phases*: phase k syncs
        the k-th entry of every token, one fsync per log (the highest position wins), the logs
        of a phase in parallel; phase k+1 starts when phase k is done. So each token's order is
        kept, and concurrent fsyncs of different files share the file system's journal commit
        (measured on ext4 here: 5 files in parallel 0.5 ms, one after another 1.7 ms).
        """
        entries = [getattr(t, "entries", None) for t in tokens]
        if any(e is None for e in entries):  # not a SyncToken we understand: the broker's way
            for token in tokens:
                self._broker.sync(token)
            return
        depth = max((len(e) for e in entries if e), default=0)
        for k in range(depth):
            phase: dict[int, tuple[Any, int]] = {}
            for e in entries:
                if e is not None and k < len(e):
                    log, pos = e[k]
                    prev = phase.get(id(log))
                    if prev is None or pos > prev[1]:
                        phase[id(log)] = (log, pos)
            jobs = list(phase.values())
            if len(jobs) == 1:
                log, pos = jobs[0]
                log.sync(pos)
            else:
                # list() re-raises the first failure after all have finished.
                list(self._fsync_pool.map(lambda job: job[0].sync(job[1]), jobs))

    def _finish_round(self, fut: asyncio.Future[None], batch: list[tuple[Any, Done]]) -> None:
        self.rounds += 1
        self.tokens += len(batch)
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        for _, done in batch:
            done(exc)
        self._busy = False
        if self._pending:
            self._start_round()
        else:
            self._idle.set()

    async def sync_all(self) -> None:
        """Run ``broker.sync_all()`` on the worker thread (after any round in progress)."""
        await self._loop.run_in_executor(self._pool, self._broker.sync_all)

    async def drain(self) -> None:
        """Wait until no round is running or queued."""
        while self._busy or self._pending:
            await self._idle.wait()

    def close(self) -> None:
        """Stop the worker thread (waits for the running fsync; nothing is abandoned half-way)."""
        self._pool.shutdown(wait=True)
        self._fsync_pool.shutdown(wait=True)
