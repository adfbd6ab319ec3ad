"""AMQP front fixtures: a server in this process (a thread runs its loop) or a subprocess.

``amqp_server`` gives an in-process ``Server`` with ``amqp_port=0`` on a fresh data folder
(fast; most tests). :class:`AmqpProcess` runs ``python -m tidemq.server --amqp-port PORT`` on a
port picked once, so a restart (or a kill -9 and a restart) comes back on the same address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pamqp import commands as C
from pamqp import frame

from tidemq.server import Server
from tidemq.server._config import ServerConfig

_AMQP_LINE = re.compile(rb"tidemq amqp on ([\d.]+):(\d+)")
_LISTENING = re.compile(rb"tidemq listening on ([\d.]+):(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def read_until(sock: socket.socket, want: type, timeout: float = 5.0) -> Any:
    """Raw AMQP: read frames until one of type ``want`` arrives; that frame."""
    buf = b""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while len(buf) >= 7:
            size = int.from_bytes(buf[3:7], "big")
            if len(buf) < size + 8:
                break
            _, _, f = frame.unmarshal(buf[:size + 8])
            buf = buf[size + 8:]
            if isinstance(f, want):
                return f
        buf += sock.recv(65536)
    raise AssertionError(f"no {want.__name__}")


def handshake(sock: socket.socket, heartbeat: int = 0) -> None:
    """Raw AMQP: the protocol header, guest/guest, tune and open on a new socket."""
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    read_until(sock, C.Connection.Start)
    sock.sendall(frame.marshal(C.Connection.StartOk(
        client_properties={}, mechanism="PLAIN", response="\x00guest\x00guest",
        locale="en_US"), 0))
    read_until(sock, C.Connection.Tune)
    sock.sendall(frame.marshal(C.Connection.TuneOk(channel_max=10, frame_max=131072,
                                                   heartbeat=heartbeat), 0)
                 + frame.marshal(C.Connection.Open(virtual_host="/"), 0))
    read_until(sock, C.Connection.OpenOk)


class InProcess:
    """A started Server on its own loop thread."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> InProcess:
        self._thread.start()
        self.server = Server(self.config)
        self.call(self.server.start())
        return self

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Any, timeout: float = 10.0) -> Any:
        """Run ``fn()`` on the server's loop and return its result."""
        async def call() -> Any:
            return fn()
        return self.call(call(), timeout)

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.amqp_port is not None
        return self.server.amqp_port

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def in_process(tmp_path: Path, **settings: Any) -> Iterator[InProcess]:
    cfg = ServerConfig(data=str(tmp_path / "data"), port=0, amqp_port=0, **settings)
    srv = InProcess(cfg).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def amqp_server(tmp_path: Path) -> Iterator[InProcess]:
    with in_process(tmp_path) as srv:
        yield srv


class AmqpProcess:
    """``tidemq serve --amqp-port PORT`` as a subprocess (kill -9 and restart keep the port)."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary_port = 0  # the TideMQ protocol's port (tidemq:// clients)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self, timeout: float = 30.0) -> AmqpProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "tidemq.server", "--data", str(self.data_dir), "--port",
               "0", "--amqp-port", str(self.port), "--log-level", "WARNING", *self.args]
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
            if self._wait_line(deadline):
                return self
            self.proc.wait(10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {cmd}")
            time.sleep(0.2)  # the old socket's teardown on a restart: retry

    def _wait_line(self, deadline: float) -> bool:
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
                    return False
                buf += chunk
                if _AMQP_LINE.search(buf):
                    m = _LISTENING.search(buf)
                    assert m is not None
                    self.binary_port = int(m.group(2))
                    return True
        finally:
            sel.close()
        self.kill()
        raise RuntimeError("server did not print its amqp line in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_pipe()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            with contextlib.suppress(Exception):
                self.proc.stdout.close()


@pytest.fixture
def amqp_process(tmp_path: Path) -> Iterator[AmqpProcess]:
    proc = AmqpProcess(tmp_path / "data").start()
    try:
        yield proc
    finally:
        proc.terminate()
