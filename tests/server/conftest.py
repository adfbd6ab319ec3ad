"""Helpers to run a real ``tidemq serve`` process; other suites reuse :func:`running_server`.

``running_server(data_dir)`` starts ``python -m tidemq.server --data DIR --port 0``, waits for
its "listening" line and yields the ``tidemq://`` URL; on exit it stops the server with SIGTERM
(SIGKILL if it does not stop in time). :class:`ServerProcess` gives tests kill -9 and restart.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_LISTENING = re.compile(rb"tidemq listening on ([\d.]+):(\d+)")


class ServerProcess:
    """A server subprocess on ``data_dir``. ``port=0`` picks a free port on first start and
    keeps it for restarts (so clients reconnect to the same address)."""

    def __init__(self, data_dir: Path | str, *, port: int = 0, args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"tidemq://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "tidemq.server", "--data", str(self.data_dir),
               "--port", str(self.port), "--log-level", "WARNING", *self.args]
        deadline = time.monotonic() + timeout
        while True:
            self._release_pipe()
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, env=env)
            port = self._wait_listening(deadline)
            if port is not None:
                self.port = port
                return self
            # A restart on a fixed port can race the old socket's teardown: retry a little.
            self.proc.wait(5)
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {cmd}")
            time.sleep(0.1)

    def _wait_listening(self, deadline: float) -> int | None:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    return None  # exited
                buf += chunk
                m = _LISTENING.search(buf)
                if m:
                    return int(m.group(2))
        finally:
            sel.close()
        self.kill()
        raise RuntimeError("server did not print its listening line in time")

    def _release_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            if self.proc.poll() is None:
                self.proc.wait(30)  # a restart follows a kill or terminate
            self.proc.stdout.close()

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful shutdown); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return int(self.proc.returncode)

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(10)
            self.kill()
            self._release_pipe()


@contextlib.contextmanager
def running_server(data_dir: Path | str, *args: str) -> Iterator[str]:
    """A live server on ``data_dir`` for the duration of the block; yields its URL."""
    proc = ServerProcess(data_dir, args=args).start()
    try:
        yield proc.url
    finally:
        proc.close()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """A started server on a fresh data folder; stopped after the test."""
    proc = ServerProcess(tmp_path / "data").start()
    try:
        yield proc
    finally:
        proc.close()
