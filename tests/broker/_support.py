"""Shared helpers of the broker-core tests (clock, store factories)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidemq.broker import Broker, TopicConfig
from tidemq.storage import open_store

T0 = 1_700_000_000_000_000


@dataclass
class Clock:
    now_us: int = T0
    mono_us: int = 1_000_000

    def advance(self, seconds: float) -> None:
        self.now_us += int(seconds * 1e6)
        self.mono_us += int(seconds * 1e6)

    @property
    def t(self) -> dict[str, int]:
        return {"now_us": self.now_us, "mono_us": self.mono_us}


class Harness:
    """Opens brokers over one store (memory) or one folder (file); ``crash()`` drops the broker
    without its clean shutdown (no snapshot) and reopens."""

    def __init__(self, kind: str, tmp: Path, **opts: Any) -> None:
        self.kind = kind
        self.path = tmp / "data"
        self.clock = Clock()
        self.opts = opts
        self.store: Any = open_store(None if kind == "memory" else str(self.path))
        self.broker = Broker.open(self.store, **self.clock.t, **opts)

    def crash(self) -> Broker:
        if self.kind == "file":
            self.store.close()  # OS page cache keeps what was written: like kill -9
            self.store = open_store(str(self.path))
        self.broker = Broker.open(self.store, **self.clock.t, **self.opts)
        return self.broker

    def reopen(self) -> Broker:
        self.broker.close()
        return self.crash()

    def close(self) -> None:
        try:
            self.broker.close()
        finally:
            close: Callable[[], None] | None = getattr(self.store, "close", None)
            if close is not None:
                close()


def always() -> TopicConfig:
    return TopicConfig(durability="always")
