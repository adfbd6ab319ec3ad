"""The thread shell of the driver core: the broker in this process (embedded clients).

- a lock: any thread may call; broker calls run one at a time under it;
- a timer thread that sleeps until :class:`DriverCore`'s next wake-up (re-armed earlier when a
  call leaves a deadline hint), runs ``tick``, wakes waiting receivers, runs snapshot jobs and
  the periodic ``sync_all`` — both *outside* the lock, so no client waits on those fsyncs;
- durability waits: under ``always`` the calling thread syncs its token outside the lock, and
  the log's ``sync(position)`` shares one fsync among concurrent callers (group commit, D5).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..broker import Broker, SyncToken
from ..errors import BacklogFull, Closed
from ._core import DriverConfig, DriverCore

__all__ = ["ThreadDriver", "now_us", "mono_us"]

T = TypeVar("T")
_time_ns = time.time_ns
_monotonic_ns = time.monotonic_ns


def now_us() -> int:
    """Wall clock, µs since the epoch."""
    return _time_ns() // 1000


def mono_us() -> int:
    """Monotonic clock, µs."""
    return _monotonic_ns() // 1000


class ThreadDriver:
    """Drives ``broker`` from any thread. ``close()`` stops the timer thread and closes the
    broker (and ``on_close``, e.g. the store)."""

    def __init__(self, broker: Broker, config: DriverConfig | None = None, *,
                 on_close: Callable[[], None] | None = None) -> None:
        self.broker = broker
        self.core = DriverCore(broker, config)
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        # Threads waiting in wait(): with none, nobody is woken and the broker's wakeups are
        # left to accumulate (a set of groups, bounded).
        self._waiters = 0
        self.closed = False
        self._on_close = on_close
        self._kick = threading.Event()
        self._timer = threading.Thread(target=self._run, name="tidemq-timer", daemon=True)
        self._timer.start()

    # --- for the transport (call with the lock held) ---------------------------------------

    def check(self) -> None:
        if self.closed:
            raise Closed("this client is closed; open a new one")

    def after_call(self) -> None:
        """After broker calls that may have made messages ready or created timed work: wake
        waiting receivers, and the timer thread if its wake-up must come earlier."""
        if self._waiters and self.broker.wakeups():
            self._cond.notify_all()
        if self.core.earlier_wake(now_us(), mono_us()) is not None:
            self._kick.set()

    def wait(self, timeout: float) -> None:
        """Wait (lock held) until after_call wakes us or ``timeout`` s pass."""
        self._waiters += 1
        try:
            self._cond.wait(timeout)
        finally:
            self._waiters -= 1

    # --- for the transport (call WITHOUT the lock) -----------------------------------------

    def durable(self, token: SyncToken | None) -> None:
        """Return once ``token`` is durable, if its topic's level asks for that."""
        if token is not None and self.broker.needs_sync(token):
            self.broker.sync(token)

    def call_blocking(self, topic: str, fn: Callable[[], T]) -> T:
        """``fn()`` under the lock; while it raises ``BacklogFull`` on a 'block' topic, wait
        and retry as the core says (the same timeout and error as the server)."""
        since: int | None = None
        with self.lock:
            while True:
                self.check()
                try:
                    out = fn()
                except BacklogFull as exc:
                    mono = mono_us()
                    since = mono if since is None else since
                    self.wait(self.core.blocked(topic, exc, since, mono))
                    continue
                self.after_call()
                return out

    # --- the timer thread ------------------------------------------------------------------

    def _run(self) -> None:
        core = self.core
        broker = self.broker
        while True:
            with self.lock:
                if self.closed:
                    return
                wake_at = core.tick(now_us(), mono_us())
                if self._waiters and broker.wakeups():
                    self._cond.notify_all()
                jobs = core.take_jobs()
                sync = core.sync_due(mono_us())
            for job in jobs:  # snapshot writes: fsyncs, outside the lock (J4)
                try:
                    job.run()
                    err: BaseException | None = None
                except Exception as exc:  # reported to the broker, which keeps its journal
                    err = exc
                with self.lock:
                    if self.closed:
                        return
                    core.job_done(job, err, now_us())
            if sync:
                try:
                    broker.sync_all()  # safe against concurrent appends (D5)
                except Exception:
                    pass  # the failed log stays failed and tells its writers (D9)
            wait_us = min(wake_at, core.next_sync_mono()) - mono_us()
            self._kick.wait(max(wait_us, 0) / 1_000_000)
            self._kick.clear()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self._kick.set()
        self._timer.join(timeout=10)
        with self.lock:
            try:
                self.broker.close()
            finally:
                if self._on_close is not None:
                    self._on_close()

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` under the lock, then :meth:`after_call`."""
        with self.lock:
            self.check()
            out = fn()
            self.after_call()
            return out

    def read(self, fn: Callable[[], T]) -> T:
        """``fn()`` under the lock (no state change to announce)."""
        with self.lock:
            self.check()
            return fn()

    @staticmethod
    def clocks() -> dict[str, Any]:
        return {"now_us": now_us(), "mono_us": mono_us()}
