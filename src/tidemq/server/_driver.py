"""The asyncio shell of :class:`tidemq.driver.DriverCore`: the server's timers and fsyncs.

What runs where:

- on the event loop: every broker call (the broker is single-threaded by contract), the timer
  (armed at the core's next wake-up; re-armed earlier after calls that leave a deadline hint;
  nothing polls), and the completion of every fsync round or job;
- on one worker thread (``tidemq-commit``): the periodic ``sync_all`` for ``interval``,
  snapshot jobs, and the group-commit rounds of durability ``always`` while the loop has other
  work — so the loop does not wait on the disk while input waits for it. The logs of one
  round phase are fsynced in parallel on a small helper pool (measured on ext4 here: 5 files
  in parallel 0.5 ms, one after another 1.7 ms).
- on the loop itself: a group-commit round that starts when no input is waiting on the
  server's sockets, the worker is idle and the last round took less than
  :data:`INLINE_ROUND_MAX` (what Redis does for ``appendfsync always``: the fsync in the
  event loop before it sleeps). The loop had nothing else to do, and handing the fsync to the
  worker costs two thread wake-ups (loop → worker → loop), ~100 µs each on this VM: as much
  as the fdatasync itself. A round starts one loop turn after its first token (``call_soon``),
  so what the same read of the sockets brought joins it, and one that may run on the loop
  waits (up to :data:`MAX_DEFERRALS` turns) for the push pass of that turn: messages are
  delivered before their fsync, as when the worker runs it.

Every fsync it runs is timed into :class:`SyncTimes` (``LoopDriver.sync_times``): the metrics'
``tidemq_fsync_duration_seconds`` histogram.

Thread safety: every method but the worker functions runs on the loop.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from ..broker import Broker, SyncToken
from ..driver import CommitQueue, DriverConfig, DriverCore, mono_us, now_us

__all__ = ["LoopDriver", "Done", "SyncTimes", "SYNC_BUCKETS", "INLINE_ROUND_MAX",
           "MAX_DEFERRALS"]

log = logging.getLogger("tidemq.server")

Done = Callable[[BaseException | None], None]

#: A group-commit round runs on the loop only while the last round took less than this (s):
#: a slow disk must not stall the loop (heartbeats, other connections' input).
INLINE_ROUND_MAX: Final = 0.002
#: Loop turns a round that may run on the loop waits for the server's other work of the turn
#: (push passes); then it runs on the worker if that work goes on.
MAX_DEFERRALS: Final = 4

#: Upper bounds (seconds) of the fsync-duration histogram: from 50 µs (an fdatasync of a few
#: pages on fast flash) to 2.5 s (a disk in trouble); slower ones count only in +Inf.
SYNC_BUCKETS: Final = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
                       100e-3, 250e-3, 500e-3, 1.0, 2.5)


class SyncTimes:
    """A histogram of fsync durations (:data:`SYNC_BUCKETS`), fed from the worker threads.

    Thread-safe (a lock per observation: nothing next to an fsync). :meth:`snapshot` gives
    ``(per-bucket counts with +Inf last, sum of seconds, count)``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(SYNC_BUCKETS) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(SYNC_BUCKETS, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[list[int], float, int]:
        with self._lock:
            counts = list(self._counts)
            return counts, self._sum, sum(counts)


class LoopDriver:
    """Drives ``broker`` on ``loop``; ``on_tick`` (a push pass) runs after each broker tick and
    after each fsync round that leaves none queued."""

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop, config: DriverConfig, *,
                 fsync_threads: int = 4, on_tick: Callable[[], None] = lambda: None,
                 input_waiting: Callable[[], bool] = lambda: True,
                 busy: Callable[[], bool] = lambda: False) -> None:
        self.broker = broker
        self.core = DriverCore(broker, config)
        self.commits: CommitQueue = self.core.commits
        self._loop = loop
        self._on_tick = on_tick
        # True when input waits on the server's sockets (or when it cannot tell): then a
        # commit round runs on the worker, not on the loop (see the module doc).
        self._input_waiting = input_waiting
        # True while the server has more of this loop turn's work scheduled (a push pass, its
        # idle poll): a round that may run on the loop waits for it (deliveries first).
        self._busy = busy
        self._deferred = 0  # loop turns the due round waited for the server's work
        self._last_round = 0.0  # s the last commit round took
        self.inline_rounds = 0  # statistics: rounds run on the loop
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tidemq-commit")
        self._fsync_pool = concurrent.futures.ThreadPoolExecutor(
            fsync_threads, thread_name_prefix="tidemq-fsync")
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0  # mono µs the timer fires at
        self._jobs_running = 0
        self._syncing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped = False
        self.sync_times = SyncTimes()

    # --- timers ----------------------------------------------------------------------------

    def start(self) -> None:
        self._arm(mono_us())

    def _arm(self, at_mono: int) -> None:
        if self._stopped:
            return
        if self._timer is not None:
            if self._armed_at <= at_mono:
                return
            self._timer.cancel()
        self._armed_at = at_mono
        delay = max(0.0, (at_mono - mono_us()) / 1_000_000)
        self._timer = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        core = self.core
        mono = mono_us()
        if mono >= core.wake_at_mono:
            try:
                core.tick(now_us(), mono)
            except Exception:
                log.exception("broker.tick failed")
                core.wake_at_mono = mono + 1_000_000
            for job in core.take_jobs():
                self._run_job(job)
            self._on_tick()
        if not self._syncing and core.sync_due(mono):
            self._syncing = True
            fut = self._loop.run_in_executor(self._pool, self._sync_all)
            fut.add_done_callback(self._synced)
        self._arm(min(core.wake_at_mono, core.next_sync_mono()))

    def _sync_all(self) -> None:
        """On the worker: the periodic sync, timed (one observation per pass)."""
        t0 = time.perf_counter()
        try:
            self.broker.sync_all()
        finally:
            self.sync_times.observe(time.perf_counter() - t0)

    def after_calls(self) -> None:
        """After handling input or a push pass: wake earlier if a call made timed work due
        sooner than the armed timer."""
        at = self.core.earlier_wake(now_us(), mono_us())
        if at is not None:
            self._arm(at)

    def _synced(self, fut: asyncio.Future[None]) -> None:
        self._syncing = False
        if not fut.cancelled() and fut.exception() is not None:
            # The log is now in its failed state (it refuses writes and says so to
            # publishers); keep serving reads and acks.
            log.error("periodic sync failed: %s", fut.exception())

    # --- background jobs (snapshot writes, J4) ---------------------------------------------

    def _run_job(self, job: Any) -> None:
        self._jobs_running += 1
        self._idle.clear()
        fut = self._loop.run_in_executor(self._pool, job.run)

        def done(f: asyncio.Future[None]) -> None:
            self._jobs_running -= 1
            err = f.exception() if not f.cancelled() else asyncio.CancelledError()
            if err is not None:
                log.error("snapshot of %s failed (its journal keeps everything): %s",
                          job.topic.name, err)
            try:
                self.core.job_done(job, err, now_us())
            except Exception:
                log.exception("finishing a snapshot failed")
            self._check_idle()

        fut.add_done_callback(done)

    # --- durability: group commit ----------------------------------------------------------

    def after_sync(self, token: SyncToken, done: Done) -> None:
        """Call ``done(None)`` once ``token`` is durable at its topic's level — at once when
        the level needs no fsync — or ``done(error)`` if its fsync failed. On the loop."""
        if not self.core.needs_sync(token):
            done(None)
            return
        if self.commits.submit(token, done):
            self._start_round()

    def _start_round(self) -> None:
        """A round is due (CommitQueue says so once per round): start it at the next loop
        turn, with what arrives until then."""
        self._idle.clear()
        self._loop.call_soon(self._begin_round)

    def _begin_round(self) -> None:
        here = self._last_round < INLINE_ROUND_MAX and not self._syncing \
            and not self._jobs_running
        if here and self._busy() and self._deferred < MAX_DEFERRALS:
            # The loop's other work of this turn first (a push pass: deliveries go out before
            # the fsync, as they do while a round runs on the worker).
            self._deferred += 1
            self._loop.call_soon(self._begin_round)
            return
        self._deferred = 0
        phases = self.commits.start_round()
        if here and not self._busy() and not self._input_waiting():
            self.inline_rounds += 1
            try:
                self._sync_phases(phases)
            except Exception:  # a bug: the round's waiters still get their answer
                log.exception("fsync round failed")
            self._finish_round(None)
            return
        fut = self._loop.run_in_executor(self._pool, self._sync_phases, phases)
        fut.add_done_callback(self._finish_round)

    def _sync_phases(self, phases: list[list[tuple[Any, int]]]) -> None:
        """On the worker (or the loop: _begin_round): phase after phase, the logs of a phase
        in parallel. Times the round (``_last_round``)."""
        t0 = time.perf_counter()
        try:
            self._sync_phases_untimed(phases)
        except Exception as exc:
            # A bug (or a helper pool gone): what the round may not have fsynced must not be
            # answered as durable. Every log it left unsynced fails the round's tokens on it.
            for phase in phases:
                for lg, pos in phase:
                    if pos > lg.synced_position:
                        self.commits.failed(lg, exc)
            raise
        finally:
            self._last_round = time.perf_counter() - t0

    def _sync_phases_untimed(self, phases: list[list[tuple[Any, int]]]) -> None:
        commits = self.commits
        observe = self.sync_times.observe

        def one(job: tuple[Any, int]) -> None:
            lg, pos = job
            timed = pos > lg.synced_position  # else another round's fsync covered it
            t0 = time.perf_counter()
            try:
                lg.sync(pos)
            except Exception as exc:
                commits.failed(lg, exc)
            finally:
                if timed:
                    observe(time.perf_counter() - t0)

        for phase in phases:
            if len(phase) == 1:
                one(phase[0])
            else:
                list(self._fsync_pool.map(one, phase))

    def _finish_round(self, fut: asyncio.Future[None] | None) -> None:
        if fut is not None and not fut.cancelled() and fut.exception() is not None:
            log.error("fsync round failed: %s", fut.exception())  # a bug in the worker
        callbacks, again = self.commits.finish_round()
        for done, err in callbacks:
            try:
                done(err)
            except Exception:
                log.exception("a commit callback failed")
        if again:
            self._start_round()
        else:
            # The answers just queued leave from the push pass it asks for, which then polls
            # for the next request before the loop sleeps (server/_idlepoll.py).
            self._on_tick()
        self._check_idle()

    def _check_idle(self) -> None:
        if self.commits.idle and not self._jobs_running:
            self._idle.set()

    # --- shutdown --------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until no fsync round or job is running or queued."""
        while not (self.commits.idle and not self._jobs_running):
            self._idle.clear()
            await self._idle.wait()

    async def close(self) -> None:
        """Stop the timer, finish what is running, sync everything, close the broker (its last
        snapshot is written on the worker, not the loop)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.drain()
        await self._loop.run_in_executor(self._pool, self.broker.sync_all)
        await self._loop.run_in_executor(self._pool, self.broker.close)
        self._pool.shutdown(wait=True)
        self._fsync_pool.shutdown(wait=True)
