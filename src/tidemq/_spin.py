"""Poll before sleeping: the adaptive spin of the blocking client and of the server's loop.

On this project's machines (virtual machines) a thread asleep in ``epoll_wait`` costs the
peer that wakes it more than the rest of a request/answer round trip: the wakeup crosses CPUs
(an inter-processor interrupt, a VM exit): a one-message publish round trip on loopback takes
about twice as long with both sides asleep between messages as with both polling
(``benchmarks/roundtrip_floor.py``; the figures are in ``docs/figures/blocking.md``). So a
side that expects input very soon — a client waiting for its answer, a server that has just
answered — first asks "anything?" without sleeping for up to ``max_us`` µs, as Linux's
halt-polling and Aeron's back-off idle strategy do.

The budget adapts, so a peer that is slow to come back costs little: a spin that saw nothing in
time halves the next one's budget, down to none; with none, one wait in :data:`PROBE_EVERY`
tries the full budget again; a spin that saw input restores the full budget, and so does input
that came within ``max_us`` after a spin gave up (:meth:`Spin.woke`: the peer was only just
late — typically because it was asleep itself, which both sides spinning cures; halving then
would leave both asleep for good). Each poll is a syscall that releases the GIL (other threads
run meanwhile). ``max_us = 0`` never spins.

Not thread-safe: one per waiting thread (the client's loop lock, the server's loop).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Final

from .errors import InvalidArgument

__all__ = ["Spin", "check_spin_us", "MAX_SPIN_US", "PROBE_EVERY"]

MAX_SPIN_US: Final = 10_000
PROBE_EVERY: Final = 32  # with the budget spent down to none, every this many waits try it again
_perf = time.perf_counter
_yield = os.sched_yield


def check_spin_us(spin_us: object, what: str = "spin_us") -> int:
    """``spin_us`` as given, or ``InvalidArgument``."""
    if type(spin_us) is not int or not 0 <= spin_us <= MAX_SPIN_US:
        raise InvalidArgument(f"{what} must be an int from 0 to {MAX_SPIN_US} (microseconds), "
                              f"got {spin_us!r}")
    return spin_us


class Spin:
    """The adaptive budget (see the module doc) and its statistics."""

    __slots__ = ("max_us", "budget_us", "_skipped", "_missed_at", "hits", "misses")

    def __init__(self, max_us: int) -> None:
        self.max_us = check_spin_us(max_us)
        self.budget_us = max_us  # what the next spin may take
        self._skipped = 0
        self._missed_at = 0.0  # when the last spin gave up (0: it did not)
        self.hits = 0  # spins that saw input arrive
        self.misses = 0  # spins that ran out (then the caller sleeps)

    def woke(self) -> None:
        """Input arrived after a wait: if the last spin gave up no more than ``max_us`` before,
        the next spin gets the full budget again."""
        missed = self._missed_at
        if missed:
            self._missed_at = 0.0
            if _perf() - missed <= self.max_us / 1e6:
                self.budget_us = self.max_us

    def wait(self, ready: Callable[[], object], limit: float | None = None) -> bool:
        """Call ``ready()`` until it is true (True) or the budget — at most ``limit`` s — is
        spent (False)."""
        budget = self.budget_us
        if budget <= 0:
            if not self.max_us:
                return False
            self._skipped += 1
            if self._skipped < PROBE_EVERY:
                return False
            self._skipped = 0
            budget = self.max_us
        span = budget / 1e6
        if limit is not None and limit < span:
            span = limit
        end = _perf() + span
        while True:
            if ready():
                self.budget_us = self.max_us
                self.hits += 1
                return True
            if (now := _perf()) >= end:
                self.budget_us = budget // 2 if budget >= 20 else 0
                self.misses += 1
                self._missed_at = now
                return False
            _yield()  # a thread waiting for this CPU (the peer, on a busy machine) runs now
