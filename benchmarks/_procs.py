"""Helpers shared by the benchmark scripts that start their own ``tidemq serve``: processes,
their CPU time, and a steady publisher."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["free_port", "tidemq_command", "cpu_ticks", "publish_for", "cpu_seconds",
           "pids_named", "wait_port", "Server", "start_tidemq", "start_redis", "start_nats"]


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


# --- servers the comparison harness starts (benchmarks/compare.py) ---------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) of the processes ``pids``; a process gone counts 0."""
    total = 0
    for pid in pids:
        try:
            total += cpu_ticks(pid)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return total / CLK_TCK


def pids_named(comm: str) -> list[int]:
    """Processes whose command name (``/proc/<pid>/comm``) is ``comm``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Server:
    """A server process of the harness on a private temp folder; ``stop()`` removes both."""

    def __init__(self, argv: list[str], port: int, folder: str, *,
                 ready: Callable[[subprocess.Popen[bytes]], int] | None = None) -> None:
        self.folder = folder
        self.errlog = open(os.path.join(folder, "server.stderr"), "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.errlog)
        try:
            self.port = ready(self.proc) if ready else port
            if not ready:
                wait_port(port)
        except Exception as exc:
            self.errlog.seek(0)
            tail = self.errlog.read().decode(errors="replace").strip().splitlines()[-1:]
            self.stop()
            raise RuntimeError(f"{exc} {tail}") from None
        self.pids = [self.proc.pid]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.errlog.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_tidemq(*extra: str) -> Server:
    """``python -m tidemq.server`` on a fresh data folder and a free port (uvloop if installed)."""
    folder = tempfile.mkdtemp(prefix="tidemq-bench-")

    def ready(proc: subprocess.Popen[bytes]) -> int:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        m = re.search(r":(\d+)$", line.strip())
        if not m:
            raise RuntimeError(f"tidemq server did not start: {line!r}")
        return int(m.group(1))

    return Server([sys.executable, "-m", "tidemq.server", "--data", folder, "--port", "0",
                   "--log-level", "WARNING", *extra], 0, folder, ready=ready)


def start_redis(appendfsync: str) -> Server:
    """A private ``redis-server`` with AOF on (``appendfsync`` always/everysec), no RDB."""
    folder = tempfile.mkdtemp(prefix="redis-bench-")
    port = free_port()
    return Server(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
                   "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "",
                   "--daemonize", "no", "--logfile", ""], port, folder)


def start_nats() -> Server:
    """A private ``nats-server -js`` (file store in a temp folder; JetStream defaults)."""
    folder = tempfile.mkdtemp(prefix="nats-bench-")
    port = free_port()
    return Server(["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", folder],
                  port, folder)
