"""The server's poll before its loop sleeps (``spin_us``, ``server/_idlepoll.py``): it watches
every binary and AMQP connection, sees a request/answer client's next request, forgets closed
connections, and is off with ``spin_us=0``."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import tidemq
from tidemq import errors
from tidemq.server import Server, ServerConfig
from tidemq.server._main import build_parser, config_from_args


@contextmanager
def server_thread(**settings: object) -> Iterator[Server]:
    """A server on its own loop in a thread (the test's thread is its clients')."""
    started = threading.Event()
    stop: list[asyncio.Event] = []
    box: list[Server] = []

    async def main() -> None:
        srv = Server(ServerConfig(**{"data": None, "port": 0, **settings}))  # type: ignore[arg-type]
        await srv.start()
        box.append(srv)
        stop.append(asyncio.Event())
        started.set()
        try:
            await stop[0].wait()
        finally:
            await srv.stop()

    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    assert started.wait(10)
    try:
        yield box[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        t.join(10)
        loop.close()


def _until(cond: object, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_a_request_answer_client_is_seen_without_a_wakeup() -> None:
    with server_thread(spin_us=10_000) as srv:
        with tidemq.Client(f"tidemq://127.0.0.1:{srv.port}") as mq:
            mq.create_topic("idle", partitions=1)
            ids = [mq.publish("idle", b"m%d" % i) for i in range(100)]
            assert len(set(ids)) == 100
            assert srv.idle.spin.hits > 0  # some next requests arrived while it polled
            assert len(srv.idle._owners) == 1
        assert _until(lambda: not srv.idle._owners)  # a closed connection is forgotten


def test_spin_0_watches_nothing_and_never_spins() -> None:
    with server_thread(spin_us=0) as srv, tidemq.Client(f"tidemq://127.0.0.1:{srv.port}") as mq:
        for i in range(20):
            mq.publish("idle0", b"m%d" % i)
        assert srv.idle.spin.hits == srv.idle.spin.misses == 0
        assert not srv.idle._owners


def test_amqp_connections_are_watched_too() -> None:
    with server_thread(amqp_port=0) as srv:
        assert srv.amqp_port is not None
        s = socket.create_connection(("127.0.0.1", srv.amqp_port))
        try:
            assert _until(lambda: len(srv.idle._owners) == 1)
        finally:
            s.close()
        assert _until(lambda: not srv.idle._owners)


@pytest.mark.parametrize("bad", [-1, 10_001, 2.5, "200"])
def test_bad_spin_us_is_refused(bad: object) -> None:
    with pytest.raises(errors.InvalidArgument, match="spin_us"):
        ServerConfig(spin_us=bad).validate()  # type: ignore[arg-type]


def test_spin_us_flag_and_config_file(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--spin-us", "0"])
    assert config_from_args(args).spin_us == 0
    toml = tmp_path / "t.toml"
    toml.write_text("[server]\nspin_us = 50\n")
    assert config_from_args(build_parser().parse_args(["--config", str(toml)])).spin_us == 50
    toml.write_text("[server]\nspin_us = 50.5\n")
    with pytest.raises(errors.InvalidArgument, match="spin_us"):
        config_from_args(build_parser().parse_args(["--config", str(toml)]))
