"""Backends of existing engines behind the TideMQ client API (SPEC §7).

``nats://`` (NATS JetStream): :func:`connect_nats`; ``amqp://`` / ``amqps://`` (RabbitMQ):
:func:`connect_amqp`; :func:`connect` picks one by URL (what ``tidemq.Client`` calls). Each
returns an ``AsyncTransport``. :func:`capabilities` (NATS) and
``_rabbit_capabilities.amqp_capabilities`` say, per SPEC feature and server version, whether
it is native, emulated (how, at what cost) or unsupported (why); ``docs/backends.md`` has the
same tables.

The engines' client libraries (nats-py, aiormq: the ``nats`` / ``rabbitmq`` extras) are
imported only when a backend is used, so the tables work without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ._capabilities import Capability, capabilities

if TYPE_CHECKING:
    from ..client._transport import AsyncTransport
    from ._nats import NatsTransport
    from ._rabbit import RabbitTransport

__all__ = ["Capability", "capabilities", "connect", "connect_nats", "connect_amqp",
           "native_capabilities", "NatsTransport"]


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


async def connect(url: str, **options: Any) -> AsyncTransport:
    """The transport of ``url``'s backend: ``nats://`` -> :func:`connect_nats`,
    ``amqp://`` / ``amqps://`` -> ``connect_amqp`` (RabbitMQ). This is what ``tidemq.Client``
    and ``tidemq.AsyncClient`` call for these URLs.

    Options may also be given as URL query parameters (``nats://h:4222?prefix=shop&replicas=3``:
    ``true``/``false`` and numbers are converted), which is how the CLI and ``$TIDEMQ_URL``
    pass them; an option given both ways raises ``InvalidArgument``."""
    from ..errors import InvalidArgument

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.query:
        for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True):
            if name in options:
                raise InvalidArgument(f"{name} is in the URL and given as an argument: give "
                                      "it once")
            options[name] = _query_value(value)
        url = urlunsplit(parts._replace(query=""))
    if scheme == "nats":
        return await connect_nats(url, **options)
    if scheme in ("amqp", "amqps"):
        return await connect_amqp(url, **options)
    raise InvalidArgument(f"no backend for {scheme}:// URLs: nats:// and amqp:// have one")


def _query_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def native_capabilities() -> dict[str, Capability]:
    """The capability table of TideMQ's own transports (``memory://``, a folder,
    ``tidemq://``): every feature native (the same keys as the backends' tables)."""
    how = "TideMQ's own broker implements it as SPEC says"
    return {name: Capability("native", how) for name in capabilities("2.9.0")}


def __getattr__(name: str) -> Any:
    if name == "NatsTransport":
        from ._nats import NatsTransport

        return NatsTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
