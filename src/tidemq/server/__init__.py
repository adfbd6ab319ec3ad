"""``tidemq.server``: the asyncio TCP server (``tidemq serve``; ``docs/server.md``).

Public surface::

    ServerConfig, load_config     settings (flags, TOML file)
    Server                        start()/stop()/port, for tests and embedding
    serve(config)                 run until SIGTERM/SIGINT, then shut down gracefully
"""

from ._config import ServerConfig, load_config
from ._main import main, serve
from ._server import Server

__all__ = ["Server", "ServerConfig", "load_config", "serve", "main"]
