"""Backends of existing engines behind the TideMQ client API (SPEC §7).

``nats://`` (NATS JetStream): :func:`connect_nats` returns an ``AsyncTransport``;
:func:`capabilities` says, per SPEC feature and server version, whether it is native,
emulated (how, at what cost) or unsupported (why). ``docs/backends.md`` has the same table.

The NATS client library (nats-py, the ``peers`` extra) is imported only when a backend is used,
so ``capabilities`` works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._capabilities import Capability, capabilities

if TYPE_CHECKING:
    from ._nats import NatsTransport
    from ._rabbit import RabbitTransport

__all__ = ["Capability", "capabilities", "connect_nats", "connect_amqp", "NatsTransport"]


async def connect_nats(url: str = "nats://127.0.0.1:4222", **options: Any) -> NatsTransport:
    """Connect to NATS JetStream; see :func:`tidemq.backends._nats.connect_nats`."""
    try:
        from ._nats import connect_nats as connect
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "nats":
            raise
        from ..errors import Unsupported

        raise Unsupported(f"the nats:// backend needs the nats-py package ({exc}); install "
                          "tidemq[peers] or 'pip install nats-py'") from None
    return await connect(url, **options)


async def connect_amqp(url: str = "amqp://guest:guest@127.0.0.1:5672/",
                       **options: Any) -> RabbitTransport:
    """Connect to RabbitMQ; see :func:`tidemq.backends._rabbit.connect_amqp`."""
    try:
        from ._rabbit import connect_amqp as connect
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("aiormq", "pamqp"):
            raise
        from ..errors import Unsupported

        raise Unsupported(f"the amqp:// backend needs the aiormq package ({exc}); install "
                          "tidemq[peers] or 'pip install aiormq'") from None
    return await connect(url, **options)


def __getattr__(name: str) -> Any:
    if name == "NatsTransport":
        from ._nats import NatsTransport

        return NatsTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
