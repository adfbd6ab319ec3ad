"""Helpers shared by the benchmark scripts that start their own ``tidemq serve``: processes,
their CPU time, and a steady publisher."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["free_port", "tidemq_command", "cpu_ticks", "publish_for"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tidemq_command() -> list[str]:
    """``tidemq`` of this virtualenv (next to sys.executable), else on PATH, else the module."""
    here = Path(sys.executable).parent / "tidemq"
    if here.exists():
        return [str(here)]
    found = shutil.which("tidemq")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys, tidemq.cli; sys.exit(tidemq.cli.main())"]


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (every thread, living or exited), in clock ticks."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


async def publish_for(mq: Any, topic: str, body: bytes, seconds: float, inflight: int) -> float:
    """Confirmed messages/s of per-message ``publish`` calls on ``mq`` (an ``AsyncClient``)
    for ``seconds``, keeping ``inflight`` calls outstanding; the clock stops when the last
    call in flight was confirmed."""
    done = 0
    sem = asyncio.Semaphore(inflight)

    async def one() -> None:
        nonlocal done
        try:
            await mq.publish(topic, body)
            done += 1
        finally:
            sem.release()

    tasks: set[asyncio.Task[None]] = set()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        await sem.acquire()
        task = asyncio.ensure_future(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return done / (time.monotonic() - t0)
