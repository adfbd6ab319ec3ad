"""The server's poll before its loop sleeps (``spin_us``; ``tidemq._spin`` says why).

After a push pass — the end of each loop iteration that handled input — and everything that
turn scheduled (one loop turn later), with no further pass due and no fsync round running or
due, the server asks an epoll set of its connections' sockets
"anything?" without sleeping, for up to the adaptive budget. Input that arrives meanwhile is
read by the event loop at once (its own poll then finds it ready) instead of after a wakeup.
A request/answer client (one blocking call at a time) so stays in the loop's current turn.

The set holds the binary and the AMQP connections. What it does not hold waits at most the
budget: timers, the answers of fsync rounds (no spin while one runs on the worker), the HTTP
port. The epoll set is level-triggered and only read here; the event loop's own registrations
are untouched.

The same set tells the driver whether input is waiting (:meth:`IdlePoll.input_waiting`): a
group-commit round runs on the loop only when none is (``server/_driver.py``).
"""

from __future__ import annotations

import select
from typing import Any

from .._spin import Spin

__all__ = ["IdlePoll"]


class IdlePoll:
    """An epoll set of the connections' sockets and the adaptive spin over it. On the loop."""

    def __init__(self, spin_us: int) -> None:
        self.spin = Spin(spin_us)
        self._ep: Any = select.epoll() if spin_us else None
        self._owners: dict[int, object] = {}  # fd -> the connection registered under it

    def add(self, owner: object, transport: Any) -> int:
        """Watch ``owner``'s socket (a connection just made); its fd, -1 if not watched."""
        if self._ep is None:
            return -1
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return -1
        try:
            self._ep.register(fd, select.EPOLLIN)
        except FileExistsError:  # the number of a closed socket, reused
            self._ep.modify(fd, select.EPOLLIN)
        except OSError:
            return -1
        self._owners[fd] = owner
        return fd

    def remove(self, owner: object, fd: int) -> None:
        """Stop watching ``owner``'s socket ``fd`` (a number reused by a newer connection
        keeps that one's registration)."""
        if self._ep is None or self._owners.get(fd) is not owner:
            return
        del self._owners[fd]
        try:
            self._ep.unregister(fd)
        except OSError:  # closed already: the kernel dropped it from the set
            pass

    def run(self) -> None:
        """Spin until a watched socket is readable or the budget is spent. (Called after the
        loop handled something: after a spin that gave up, that was the input it missed.)"""
        if self._ep is not None and self._owners:
            spin = self.spin
            spin.woke()
            spin.wait(self._ready)

    def _ready(self) -> Any:
        return self._ep.poll(0, 1)

    def input_waiting(self) -> bool:
        """Is a watched socket readable now? True when nothing is watched (``spin_us=0``:
        it cannot tell), so the driver then keeps commit rounds off the loop."""
        return self._ep is None or bool(self._ready())

    def close(self) -> None:
        if self._ep is not None:
            self._ep.close()
            self._ep = None
            self._owners.clear()
