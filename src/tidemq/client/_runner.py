"""How the blocking ``Client`` runs the one client source (``AsyncClient``).

:class:`InlineRunner` (embedded URLs): the embedded transport's coroutines never suspend (their
waits block the calling thread, ``AsyncOverEmbedded(inline=True)``), so a call is the method
itself, driven to its end with no event loop.

:class:`LoopRunner` (``tidemq://``): the network transport lives on an asyncio event loop, and
that loop is run **in the caller's thread**, one caller at a time:

- *Fast path*: a caller takes the loop lock, calls the operation (its plain part runs at
  once: an ack joins the next write, messages come from the local buffer) and, when it
  returned something to wait for, runs ``loop.run_until_complete`` on it: one round trip, no
  thread hop. An earlier design hopped to a private loop thread and back for every call
  (``run_coroutine_threadsafe``): ~3K calls/s.
- *Followers*: a caller that finds the loop taken (another thread waits in ``receive``, or the
  pump runs it) posts its operation to the loop (``call_soon_threadsafe``) and waits; it takes
  the loop over if the leader leaves before its operation is done.
- *Pump*: a daemon thread runs the loop whenever no caller does. While callers come and go it
  runs one loop iteration every ``PUMP_INTERVAL`` when the loop is free (acks waiting to be
  sent leave, due timers fire, input is read). After ``LEAD_AFTER`` of quiet — user code busy
  for minutes — or when work is posted to the loop (``publish(..., wait=False)``), it leads the
  loop, asleep in its selector (heartbeats answered, pushed deliveries buffered, linger timers
  fired), until a caller posts work; then it hands the loop over.

*Spin*: a caller about to sleep in the selector waiting for its answer first polls it without
sleeping, for up to ``spin_us`` µs (default :data:`SPIN_US`; ``tidemq._spin``: why, and how the
budget adapts). Only callers waiting for an answer spin, never the pump. ``Client(url,
spin_us=0)`` turns it off.

Ctrl-C: a ``KeyboardInterrupt`` raised while the caller's thread waits in the loop's selector
leaves every state whole (the interrupted operation is cancelled); raised anywhere else it may
have cut a frame's handling in two, so the connection is dropped and made again
(``on_interrupt``): unanswered requests fail, unconfirmed publishes are resent (idempotent),
unanswered acks are reported by the next ``flush()``. Either way the client stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._spin import Spin
from ..errors import Closed, InvalidArgument
from ._transport import Done

__all__ = ["InlineRunner", "LoopRunner", "PUMP_INTERVAL", "LEAD_AFTER", "SPIN_US", "new_loop"]

log = logging.getLogger("tidemq.client")

T = TypeVar("T")
PUMP_INTERVAL = 0.002  # s: the pump's tick; also about the most an ack waits to be sent
LEAD_AFTER = 0.05  # s of quiet after which the pump leads the loop (sleeping in the selector)
SPIN_US = 500  # µs a caller polls for its answer before sleeping (see the module doc)
_monotonic = time.monotonic
_get_running_loop = asyncio._get_running_loop


def new_loop(kind: str = "asyncio") -> asyncio.AbstractEventLoop:
    """The blocking client's event loop: ``"asyncio"`` (default) or ``"uvloop"``.

    asyncio is the default because the loop is entered once per blocking call: uvloop's entry
    is cheaper in other threads, but in the main thread it sets up its signal pipe on every
    entry (~30 µs here, against ~7 µs for asyncio's)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind != "asyncio":
        raise InvalidArgument("loop must be 'asyncio' or 'uvloop'")
    return asyncio.new_event_loop()


def _drive_inline(aw: Awaitable[T]) -> T:
    it = aw.__await__()
    try:
        it.send(None)
    except StopIteration as stop:
        value: T = stop.value
        return value
    it.close()
    raise RuntimeError("an embedded operation waited on an event loop")  # a bug, never a user's


class InlineRunner:
    """Runs operations that never suspend (the embedded transport's inline face)."""

    closed = False

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        aw = fn(*args, **kw)
        if isinstance(aw, Done):
            return aw.value  # type: ignore[no-any-return]
        return _drive_inline(aw)

    def close(self) -> None:
        self.closed = True


class LoopRunner:
    """Runs an event loop in its callers' threads (see the module doc). Thread-safe."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, spin_us: int = SPIN_US) -> None:
        self.loop = loop
        self.spin = Spin(spin_us)
        self.closed = False
        self.on_interrupt: Callable[[], None] | None = None
        # Called before a caller waits on the loop: write what its operation queued now,
        # instead of one loop iteration later (the transport's push_out).
        self.before_wait: Callable[[], None] | None = None
        # Called when a caller takes the loop / leaves it without waiting: what its plain part
        # queues is written by before_wait, or scheduled by end_call (the transport's defer
        # and end_deferred), instead of by a loop callback per write.
        self.on_call: Callable[[], None] | None = None
        self.end_call: Callable[[], None] | None = None
        self._until: asyncio.Future[Any] | None = None  # what the leading caller waits for
        self._lock = threading.Lock()  # held by the thread that runs (or touches) the loop
        self._cond = threading.Condition(threading.Lock())  # followers wait on it
        self._followers = 0
        self._pumping = False  # the pump leads the loop (only the lock holder changes it)
        self._released_at = _monotonic()
        self._kick = threading.Event()
        self._select_raised = False
        selector = getattr(loop, "_selector", None)
        if selector is not None:  # asyncio's selector loops: see where an interrupt lands
            self._watch_select(selector)
        self._pump = threading.Thread(target=self._pump_main, name="tidemq-pump", daemon=True)
        self._pump.start()

    def _watch_select(self, selector: Any) -> None:
        select = selector.select
        spin = self.spin
        ready: Callable[[], Any] | None = None
        if isinstance(selector, selectors.EpollSelector):
            # epoll's own poll(timeout, maxevents): the spin asks "anything?" without sleeping
            poll = getattr(selector, "_selector").poll  # noqa: B009 - private: mypy has no type

            def ready() -> Any:
                return poll(0, 1)

        def watched(timeout: float | None = None) -> Any:
            try:
                if ready is not None and self._until is not None and (
                        timeout is None or timeout > 0):
                    if spin.wait(ready, timeout):
                        return select(0)
                    events = select(timeout)
                    if events:
                        spin.woke()
                    return events
                return select(timeout)
            except BaseException:
                self._select_raised = True
                raise

        selector.select = watched

    # --- calls ------------------------------------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        """``fn(*args, **kw)`` with the loop held, then its awaitable run to the end."""
        if _get_running_loop() is None and self._lock.acquire(False):
            try:
                if self.closed:
                    raise Closed("this client is closed; open a new one")
                if self.on_call is not None:
                    self.on_call()
                aw = fn(*args, **kw)
                if isinstance(aw, Done):
                    return aw.value  # type: ignore[no-any-return]
                return self._run(aw)
            finally:
                if self.end_call is not None:
                    self.end_call()
                self._released_at = _monotonic()
                self._lock.release()
                if self._followers:
                    self._wake_followers()
        return self._follow(fn, args, kw)

    def run(self, aw: Awaitable[T]) -> T:
        """Run ``aw`` (made while holding nothing: e.g. a connect) to its end."""
        return self.call(lambda: aw)

    def _run(self, aw: Awaitable[T]) -> T:
        """With the lock held: run the loop in this thread until ``aw`` is done.

        ``run_forever`` until the input handler (:meth:`on_input`) or ``aw``'s completion
        stops it: the iteration that reads the answer is the last one, where
        ``run_until_complete`` would run one more to call its done-callback."""
        if isinstance(aw, asyncio.Future) and aw.done():
            return aw.result()  # type: ignore[no-any-return]
        loop = self.loop
        fut = asyncio.ensure_future(aw, loop=loop)
        if self.before_wait is not None:
            self.before_wait()
        self._until = fut
        fut.add_done_callback(self._stop_if_waiting)
        self._select_raised = False
        try:
            while not fut.done():
                loop.run_forever()
            return fut.result()
        except BaseException:
            if not fut.done():  # interrupted (Ctrl-C) while it was still running
                fut.cancel()
                if not self._select_raised and self.on_interrupt is not None:
                    self.on_interrupt()
            raise
        finally:
            self._until = None

    def _stop_if_waiting(self, fut: asyncio.Future[Any]) -> None:
        if self._until is fut:
            self.loop.stop()

    def on_input(self) -> None:
        """After the transport handled a read: stop the loop run if what it waits for is done
        (the loop ends this iteration; its remaining callbacks run at the next entry)."""
        until = self._until
        if until is not None and until.done():
            self.loop.stop()

    def _follow(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                kw: dict[str, Any]) -> T:
        loop = self.loop
        fut: asyncio.Future[T] = loop.create_future()
        # A caller inside an event loop of its own cannot run this one: the pump runs it.
        can_lead = _get_running_loop() is None
        with self._cond:
            self._followers += 1
        try:
            try:
                loop.call_soon_threadsafe(self._start, fn, args, kw, fut)
            except RuntimeError:
                raise Closed("this client is closed; open a new one") from None
            if not self._lock.locked():
                self._kick.set()  # nobody runs the loop: the pump will
            try:
                return self._wait_followed(fut, can_lead)
            except BaseException:
                # Interrupted (Ctrl-C) while the operation runs on the loop: cancel it there,
                # or a receive nobody waits for any more would take messages.
                if not fut.done():
                    with contextlib.suppress(RuntimeError):  # a closed loop: nothing runs
                        loop.call_soon_threadsafe(fut.cancel)
                raise
        finally:
            with self._cond:
                self._followers -= 1

    def _wait_followed(self, fut: asyncio.Future[T], can_lead: bool) -> T:
        """Wait for a posted operation; lead the loop if the leader leaves first."""
        while True:
            with self._cond:
                while not fut.done() and self._lock.locked() and not self.closed:
                    self._cond.wait(1.0)
            if fut.done():
                return fut.result()
            if self.closed:
                raise Closed("this client is closed; open a new one")
            if not can_lead:  # the leader left first: the pump runs the loop
                self._kick.set()
                with self._cond:
                    if not fut.done() and not self._lock.locked():
                        self._cond.wait(PUMP_INTERVAL)
            elif self._lock.acquire(False):  # the leader left first: lead now
                try:
                    return self._run(fut)
                finally:
                    self._released_at = _monotonic()
                    self._lock.release()
                    if self._followers > 1:
                        self._wake_followers()

    def _start(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
               kw: dict[str, Any], fut: asyncio.Future[Any]) -> None:
        """On the loop: a follower's operation."""
        if self._pumping:
            self.loop.stop()  # a caller is back: hand it the loop once this iteration ends
        fut.add_done_callback(self._wake_followers)
        if fut.done():
            return
        try:
            aw = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            fut.set_exception(exc)
            return
        if isinstance(aw, Done):
            fut.set_result(aw.value)
            return
        inner = asyncio.ensure_future(aw, loop=self.loop)
        inner.add_done_callback(lambda f: _copy(f, fut))
        fut.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)

    def _wake_followers(self, *_: Any) -> None:
        with self._cond:
            self._cond.notify_all()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon, from any thread (the pump runs it if no caller
        runs the loop)."""
        self.loop.call_soon_threadsafe(fn, *args)
        self._kick.set()

    # --- the pump ---------------------------------------------------------------------------

    def _pump_main(self) -> None:
        loop = self.loop
        while not self.closed:
            self._kick.wait(PUMP_INTERVAL)
            kicked = self._kick.is_set()
            self._kick.clear()
            if self.closed or not self._lock.acquire(False):
                continue
            try:
                if self.closed:
                    break
                self._pumping = True
                if kicked or _monotonic() - self._released_at >= LEAD_AFTER:
                    loop.run_forever()  # lead until a follower's _start stops it
                else:
                    loop.call_soon(loop.stop)  # one iteration: due timers, waiting I/O
                    loop.run_forever()
            except Exception:  # noqa: BLE001 - the pump must survive a failing callback
                log.exception("tidemq client: error while running the event loop")
            finally:
                self._pumping = False
                self._released_at = _monotonic()
                self._lock.release()
                if self._followers:
                    self._wake_followers()

    def _stop_pump(self) -> None:
        if self._pumping:
            self.loop.stop()

    # --- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the pump and close the loop (after the transport was closed through
        :meth:`call`). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._kick.set()
        try:
            self.loop.call_soon_threadsafe(self._stop_pump)
        except RuntimeError:
            pass
        if threading.current_thread() is not self._pump:
            self._pump.join(5)
        with self._lock:
            if not self.loop.is_closed():
                try:
                    self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                finally:
                    self.loop.close()
        self._wake_followers()


def _copy(src: asyncio.Future[Any], dst: asyncio.Future[Any]) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif (exc := src.exception()) is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())
