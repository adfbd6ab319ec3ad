"""Server settings: defaults, an optional TOML file, then command-line flags (last wins).

The TOML file holds the same names as :class:`ServerConfig`, either at top level or under a
``[server]`` table::

    [server]
    data = "./tidemq-data"
    port = 7600
    heartbeat_interval = 5.0
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from ..driver import BLOCK_TIMEOUT
from ..errors import InvalidArgument

__all__ = ["ServerConfig", "load_config"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything the server reads at start. Durations are seconds, sizes bytes.

    Callers may rely on :meth:`validate` rejecting any value the server could not run with.
    """

    data: str | None = "./tidemq-data"  # None: an in-memory store (tests, benchmarks)
    host: str = "127.0.0.1"  # loopback until authentication exists (SPEC §8)
    port: int = 7600  # 0: an ephemeral port; Server.port tells which
    sync_interval: float = 0.1  # broker.sync_all() cadence for durability 'interval'
    heartbeat_interval: float = 5.0  # we ping an idle connection this often
    heartbeat_timeout: float = 15.0  # silence this long => the peer is dead, leases released
    max_frame_bytes: int = 16 * 1024 * 1024
    write_high_water: int = 1024 * 1024  # stop pushing deliveries above this many buffered bytes
    write_low_water: int = 256 * 1024  # resume pushing below this
    push_batch: int = 512  # most deliveries fetched for one member per push step
    auto_create_topics: bool = True
    block_timeout: float = BLOCK_TIMEOUT  # longest a publish waits on a full backlog (policy 'block'), as embedded
    shutdown_grace: float = 5.0  # seconds to let in-flight requests finish on SIGTERM
    loop: str = "auto"  # "auto" (uvloop if installed), "asyncio" or "uvloop"; docs/server.md
    fsync_threads: int = 4  # parallel fsyncs of one group-commit phase

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"port must be in 0..65535, got {self.port}")
        for name in ("sync_interval", "heartbeat_interval", "heartbeat_timeout", "block_timeout"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name} must be > 0 seconds")
        if self.heartbeat_timeout < self.heartbeat_interval:
            raise InvalidArgument("heartbeat_timeout must be >= heartbeat_interval")
        if self.max_frame_bytes < 1024:
            raise InvalidArgument("max_frame_bytes must be >= 1024")
        if not 0 <= self.write_low_water < self.write_high_water:
            raise InvalidArgument("need 0 <= write_low_water < write_high_water")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise InvalidArgument("loop must be 'auto', 'asyncio' or 'uvloop'")
        if self.fsync_threads < 1:
            raise InvalidArgument("fsync_threads must be >= 1")
        if self.push_batch < 1:
            raise InvalidArgument("push_batch must be >= 1")

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with ``changes`` applied (``None`` values are ignored, so flags may be unset)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - fields
        if unknown:
            raise InvalidArgument(f"unknown server setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` that are not None."""
    cfg = ServerConfig()
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise InvalidArgument(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"config file {path} is not valid TOML: {exc}") from None
        table = doc.get("server", doc)
        if not isinstance(table, dict):
            raise InvalidArgument(f"config file {path}: [server] must be a table")
        _check_types(path, table)
        cfg = cfg.replace(**table)
    cfg = cfg.replace(**overrides)
    cfg.validate()
    return cfg


_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,),
    "host": (str,),
    "auto_create_topics": (bool,),
    "loop": (str,),
}


def _check_types(path: str | Path, table: dict[str, Any]) -> None:
    """A TOML value of the wrong type is named, rather than failing later in odd ways."""
    for name, value in table.items():
        want = _TYPES.get(name)
        if want is None:
            default = getattr(ServerConfig(), name, None)
            want = (float, int) if isinstance(default, float) else (int,)
        if isinstance(value, bool) and bool not in want or not isinstance(value, want):
            raise InvalidArgument(
                f"config file {path}: {name} must be {' or '.join(t.__name__ for t in want)}, "
                f"got {value!r}"
            )
