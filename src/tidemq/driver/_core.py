"""The sans-IO driver core: everything that decides *when* around the broker, written once.

The broker core is pure (time passed in, no threads, no fsync of its own on the hot path); a
driver gives it clocks, timers, fsyncs and threads. Two thin shells carry this core out:
:class:`~tidemq.driver.ThreadDriver` (embedded: a lock and a timer thread) and the server's
asyncio loop (:mod:`tidemq.server`). What they share is decided here, without I/O:

- **timers** — :meth:`DriverCore.tick` runs ``broker.tick`` and says when to wake next (the
  broker's next deadline: a lease, a backoff, a delayed message, a pending journal append,
  maintenance); :meth:`DriverCore.earlier_wake` turns the broker's deadline hints after any
  other call into "wake earlier". Nothing polls.
- **periodic sync** — :meth:`DriverCore.sync_due`: ``interval`` logs are fsynced every
  ``sync_interval``, and only when something was written (``never`` logs are not).
- **group commit** — :class:`CommitQueue`: tokens that must be durable before an answer queue
  up while one fsync round runs; the next round takes all of them, one fsync per log per phase
  (data before journal), and a log's failure fails only the tokens that named that log.
- **backlog blocking** — :meth:`DriverCore.blocked`: how long a publish blocked by a full
  backlog (policy ``block``) waits before its retry, and the same typed ``BacklogFull`` after
  ``block_timeout`` in both shells.
- **background I/O** — :meth:`DriverCore.take_jobs`: snapshot writes the broker planned, to run
  off the loop and report with :meth:`DriverCore.job_done`.

Not thread-safe: a shell calls it under its lock or on its loop, like the broker itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..broker import Broker, SyncToken
from ..errors import BacklogFull, StorageFailed, TideMQError

__all__ = ["DriverCore", "DriverConfig", "CommitQueue", "Done", "BLOCK_TIMEOUT", "BLOCK_RETRY"]

BLOCK_TIMEOUT: Final = 30.0  # seconds a publish waits on a full 'block' backlog, both shells
BLOCK_RETRY: Final = 0.02  # seconds between its retries
IDLE_WAKE_US: Final = 1_000_000  # with nothing timed at all, look again after this long

Done = Callable[[BaseException | None], None]


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """Timing settings both shells share."""

    sync_interval: float = 0.1
    block_timeout: float = BLOCK_TIMEOUT


class DriverCore:
    """See the module docstring. ``broker`` is driven from one thread at a time."""

    def __init__(self, broker: Broker, config: DriverConfig | None = None) -> None:
        self.broker = broker
        self.config = config or DriverConfig()
        self.wake_at_mono = 0  # when the shell's timer is armed to call tick() (mono µs)
        self._sync_every_us = int(self.config.sync_interval * 1_000_000)
        self._next_sync_mono = 0
        self.commits = CommitQueue()

    # --- timers ----------------------------------------------------------------------------

    def tick(self, now_us: int, mono_us: int) -> int:
        """Run the broker's timed work; returns the monotonic µs at which to call again."""
        wait = self.broker.tick(now_us=now_us, mono_us=mono_us)
        self.broker.take_deadline_hint()  # tick has just seen every deadline
        step = IDLE_WAKE_US if wait is None else int(wait * 1_000_000)
        self.wake_at_mono = mono_us + max(step, 0)
        return self.wake_at_mono

    def earlier_wake(self, now_us: int, mono_us: int) -> int | None:
        """After broker calls: a monotonic µs earlier than the armed wake-up at which timed
        work is now due (the shell re-arms its timer), or None."""
        hint_mono, hint_wall = self.broker.take_deadline_hint()
        best = hint_mono
        if hint_wall is not None:
            w = mono_us + (hint_wall - now_us)
            best = w if best is None or w < best else best
        if best is None or best >= self.wake_at_mono:
            return None
        self.wake_at_mono = best
        return best

    # --- periodic sync ---------------------------------------------------------------------

    def sync_due(self, mono_us: int) -> bool:
        """Whether the shell should run ``broker.sync_all()`` now (off its loop)."""
        if mono_us < self._next_sync_mono:
            return False
        self._next_sync_mono = mono_us + self._sync_every_us
        return self.broker.has_unsynced()

    def next_sync_mono(self) -> int:
        return self._next_sync_mono

    # --- durability ------------------------------------------------------------------------

    def needs_sync(self, token: SyncToken) -> bool:
        """Whether ``token`` must be durable before its write is answered (``always``)."""
        return self.broker.needs_sync(token)

    # --- backlog blocking ------------------------------------------------------------------

    def blocked(self, topic: str, exc: BacklogFull, since_mono_us: int, mono_us: int) -> float:
        """A publish to ``topic`` raised ``exc``: seconds to wait before retrying it. Re-raises
        ``exc`` when the topic's policy is ``reject``, and a ``BacklogFull`` saying so when the
        publish has waited ``block_timeout`` since ``since_mono_us``."""
        if self.broker.describe_topic(topic).config.backlog_policy != "block":
            raise exc
        waited = (mono_us - since_mono_us) / 1_000_000
        if waited >= self.config.block_timeout:
            raise BacklogFull(
                f"topic {topic!r} stayed at its backlog limit for {self.config.block_timeout:g} s "
                f"(policy block); consume, or raise backlog_limit") from None
        return min(BLOCK_RETRY, self.config.block_timeout - waited)

    # --- background I/O --------------------------------------------------------------------

    def take_jobs(self) -> list[Any]:
        """Snapshot writes to run off the loop (``job.run()``), then :meth:`job_done`."""
        return self.broker.take_jobs()

    def job_done(self, job: Any, error: BaseException | None, now_us: int) -> None:
        self.broker.job_done(job, error, now_us=now_us)


class CommitQueue:
    """Group commit, sans-IO. A shell calls :meth:`submit` for each token to make durable;
    when it returns True the shell starts a round: it takes :meth:`start_round`'s phases, runs
    each phase's fsyncs (in parallel if it likes, phase after phase; off its loop, or on it
    when nothing else waits: ``server/_driver.py``), records
    failures with :meth:`failed`, and calls :meth:`finish_round`, which returns the callbacks to
    run and whether another round is due."""

    def __init__(self) -> None:
        self._pending: list[tuple[SyncToken, Done]] = []
        self._round: list[tuple[SyncToken, Done]] = []
        self._failed: dict[int, BaseException] = {}
        self.busy = False
        self.rounds = 0  # statistics: fsync rounds run
        self.tokens = 0  # statistics: tokens made durable (or failed)

    def submit(self, token: SyncToken, done: Done) -> bool:
        """Queue ``token``; True when the shell must start a round now (none running or due)."""
        self._pending.append((token, done))
        return not self.busy and len(self._pending) == 1

    def start_round(self) -> list[list[tuple[Any, int]]]:
        """Phases of ``(log, position)``: phase k holds the k-th entry of every token of the
        round, one per log (the highest position), so each token's own order — data before
        the journal describing it (J1) — is kept."""
        self._round, self._pending = self._pending, []
        self._failed = {}
        self.busy = True
        entries = [t.entries for t, _ in self._round]
        depth = max((len(e) for e in entries), default=0)
        phases: list[list[tuple[Any, int]]] = []
        for k in range(depth):
            phase: dict[int, tuple[Any, int]] = {}
            for e in entries:
                if k < len(e):
                    log, pos = e[k]
                    prev = phase.get(id(log))
                    if prev is None or pos > prev[1]:
                        phase[id(log)] = (log, pos)
            phases.append(list(phase.values()))
        return phases

    def failed(self, log: Any, error: BaseException) -> None:
        """The fsync of ``log`` failed in this round (called from the shell's worker)."""
        self._failed.setdefault(id(log), error)

    def finish_round(self) -> tuple[list[tuple[Done, BaseException | None]], bool]:
        """``(callbacks with their outcome, start another round?)``. A token fails only when
        one of *its* logs failed: one topic's broken disk does not fail other topics' waiters."""
        out: list[tuple[Done, BaseException | None]] = []
        failed = self._failed
        for token, done in self._round:
            err: BaseException | None = None
            if failed:
                for log, _pos in token.entries:
                    e = failed.get(id(log))
                    if e is not None:
                        err = e if isinstance(e, TideMQError) else StorageFailed(f"fsync failed: {e}")
                        break
            out.append((done, err))
        self.rounds += 1
        self.tokens += len(self._round)
        self._round = []
        self._failed = {}
        self.busy = bool(self._pending)
        return out, self.busy

    @property
    def idle(self) -> bool:
        return not self.busy and not self._pending
