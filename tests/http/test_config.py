"""``http_port`` from the TOML file and the ``--http-port`` flag; a taken port fails the start."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tidemq.errors import InvalidArgument
from tidemq.server import Server, ServerConfig
from tidemq.server._config import load_config
from tidemq.server._main import build_parser, config_from_args


def test_toml_and_flag(tmp_path: Path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text("[server]\nhttp_port = 7681\nhttp_max_wait = 5.0\n")
    cfg = load_config(toml)
    assert (cfg.http_port, cfg.http_max_wait) == (7681, 5.0)
    assert load_config().http_port is None  # off unless asked
    args = build_parser().parse_args(["--config", str(toml), "--http-port", "7682"])
    assert config_from_args(args).http_port == 7682
    toml.write_text('http_port = "7680"\n')
    with pytest.raises(InvalidArgument, match="http_port must be int"):
        load_config(toml)


def test_a_taken_http_port_fails_the_start_cleanly() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            srv = Server(ServerConfig(data=None, port=0, http_port=port))
            with pytest.raises(OSError, match="HTTP API"):
                await srv.start()
            # The binary listener was closed again: nothing is left listening.
            with pytest.raises(InvalidArgument):
                _ = srv.port
    asyncio.run(main())
