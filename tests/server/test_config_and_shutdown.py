"""Settings (defaults, TOML file, flags) and graceful shutdown on SIGTERM."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import tidemq
from tidemq.errors import InvalidArgument
from tidemq.server import ServerConfig, load_config
from tidemq.server._main import build_parser, config_from_args

from .conftest import ServerProcess


def test_toml_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "tidemq.toml"
    path.write_text('[server]\nport = 7700\nheartbeat_interval = 2\ndata = "/srv/mq"\n')
    cfg = load_config(path)
    assert (cfg.port, cfg.heartbeat_interval, cfg.data) == (7700, 2, "/srv/mq")
    args = build_parser().parse_args(["--config", str(path), "--port", "7800", "--memory"])
    cfg = config_from_args(args)
    assert (cfg.port, cfg.data, cfg.heartbeat_interval) == (7800, None, 2)
    assert load_config(None) == ServerConfig()


@pytest.mark.parametrize("text", [
    "port = 'x'\n",
    "no_such_setting = 1\n",
    "heartbeat_interval = -1\n",
    "auto_create_topics = 1\n",
    "this is not toml\n",
])
def test_bad_settings_are_named(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument):
        load_config(path)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_sigterm_shuts_down_cleanly_and_clients_reconnect(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data").start()
    try:
        with tidemq.Client(proc.url) as mq:
            mq.create_topic("t", partitions=2)  # durability 'interval'
            ids = mq.publish_batch("t", [b"%d" % i for i in range(100)])
            sub = mq.subscribe("t", "g")
            first = sub.receive(max_messages=10, timeout=5)
            sub.ack(first)
            mq.describe_group("t", "g")  # a round trip: the acks before it were applied
            assert proc.terminate() == 0  # graceful: stop accepting, sync, close
            proc.start()  # same port; the client reconnects and subscribes again by itself
            later = mq.publish("t", b"after-restart")
            got: list[bytes] = []
            deadline = time.monotonic() + 15
            while len(got) < 91 and time.monotonic() < deadline:
                try:
                    batch = sub.receive(max_messages=100, timeout=0.5)
                except tidemq.errors.ConnectionLost:
                    continue
                sub.ack(batch)
                got += [m.body for m in batch]
            # Everything published before the shutdown survived it ('interval' durability is
            # synced on shutdown), the acked ten did not come again, and the new one arrived.
            assert sorted(got) == sorted([b"%d" % i for i in range(100)
                                          if ids[i] not in {m.id for m in first}]
                                         + [b"after-restart"])
            assert later not in ids
    finally:
        proc.close()


def test_a_stopped_server_releases_its_data_folder(tmp_path: Path) -> None:
    # An in-process server (a library's own, a test's) started again on the same folder in
    # the same process: the first must have closed its store and the folder's lock (it did
    # not, and the second start raised DataDirLocked).
    import asyncio

    from tidemq.server import Server

    async def run() -> None:
        cfg = ServerConfig(data=str(tmp_path / "data"), port=0)
        async with Server(cfg) as srv:
            srv.broker.create_topic("t", now_us=time.time_ns() // 1000)
        async with Server(cfg) as srv:
            assert [t.name for t in srv.broker.list_topics()] == ["t"]

    asyncio.run(run())
