"""TideMQ: a durable message broker, embedded or served.

>>> import tidemq
>>> with tidemq.Client("memory://") as mq:
...     mid = mq.publish("orders", b"hello")

The client names are loaded on first use, so ``import tidemq.storage`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Client": "client", "AsyncClient": "client", "Subscription": "client",
    "AsyncSubscription": "client", "Message": "client", "AsyncMessage": "client",
    "Consumer": "client", "open": "client",
    "Backoff": "broker._types", "TopicConfig": "broker._types", "GroupSettings": "broker._types",
    "TopicInfo": "broker._types", "GroupInfo": "broker._types", "Delivery": "broker._types",
    "TideMQError": "errors", "errors": "",
}

__all__ = [
    "Client", "AsyncClient", "Subscription", "AsyncSubscription", "Message", "AsyncMessage",
    "Consumer", "open", "Backoff", "TopicConfig", "GroupSettings", "TopicInfo", "GroupInfo",
    "Delivery", "TideMQError", "errors", "__version__",
]

if TYPE_CHECKING:
    from . import errors
    from .broker._types import Backoff, Delivery, GroupInfo, GroupSettings, TopicConfig, TopicInfo
    from .client import (
        AsyncClient,
        AsyncMessage,
        AsyncSubscription,
        Client,
        Consumer,
        Message,
        Subscription,
        open,
    )
    from .errors import TideMQError


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'tidemq' has no attribute {name!r}")
    if mod == "":
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
