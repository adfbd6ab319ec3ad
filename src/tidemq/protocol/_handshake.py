"""Version negotiation and the terms of a session, decided from a ``Hello``.

The rules (``docs/protocol.md``, "Handshake"): the session speaks the highest version both
peers list; its maximum frame size is the smaller of the two peers' limits, never below the
protocol floor ``MIN_MAX_FRAME_SIZE``; its heartbeat is the shorter of the two non-zero
intervals (0 means "no heartbeat" and defers to the other).

This is the one implementation: the server answers every ``Hello`` with :func:`accept_hello`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .. import errors
from ._frames import Error, Hello, HelloOk
from ._header import MIN_MAX_FRAME_SIZE

#: Protocol versions this codec speaks, oldest first.
SUPPORTED_VERSIONS: Final[tuple[int, ...]] = (1,)
#: The newest of them.
PROTOCOL_VERSION: Final = SUPPORTED_VERSIONS[-1]


def negotiate_version(offered: Iterable[int], supported: Iterable[int] = SUPPORTED_VERSIONS) -> int:
    """The highest version in both ``offered`` and ``supported``.

    Raises ``UnsupportedVersion`` (naming both lists) when they share none.
    """
    offered_set, supported_set = set(offered), set(supported)
    common = offered_set & supported_set
    if not common:
        raise errors.UnsupportedVersion(
            f"no common protocol version: the client speaks {sorted(offered_set)}, the server "
            f"{sorted(supported_set)}; upgrade the older side")
    return max(common)


def negotiate_heartbeat(client_ms: int, server_ms: int) -> int:
    """The session heartbeat: the shorter non-zero interval, 0 when both are 0."""
    if not client_ms or not server_ms:
        return client_ms or server_ms
    return min(client_ms, server_ms)


def accept_hello(
    hello: Hello,
    *,
    server_name: str,
    max_frame_size: int,
    heartbeat_ms: int,
    supported: Iterable[int] = SUPPORTED_VERSIONS,
    raise_small_frame_limit: bool = False,
) -> HelloOk | Error:
    """The server's answer to ``hello``: the session terms, or a fatal ``UnsupportedVersion``
    error frame (or ``InvalidArgument`` for a client frame limit below the protocol's floor).

    The session's frame limit is ``min(hello.max_frame_size, max_frame_size)`` raised to
    ``MIN_MAX_FRAME_SIZE`` (a codec refuses any smaller limit). With
    ``raise_small_frame_limit`` a client limit below that floor is raised to it too instead of
    refused (what ``tidemq serve`` has always done; the documented rule is to refuse).

    Authentication is not decided here: the server runs ``hello.auth_*`` through its
    security gate (``tidemq.security.Gate``) before it sends this answer.
    """
    rid = hello.request_id
    try:
        version = negotiate_version(hello.versions, supported)
    except errors.UnsupportedVersion as exc:
        return Error.from_exception(exc, rid, fatal=True)
    if hello.max_frame_size < MIN_MAX_FRAME_SIZE and not raise_small_frame_limit:
        return Error.from_exception(errors.InvalidArgument(
            f"Hello.max_frame_size {hello.max_frame_size} is below the protocol minimum "
            f"{MIN_MAX_FRAME_SIZE}"), rid, fatal=True)
    return HelloOk(
        request_id=rid,
        version=version,
        server_name=server_name,
        max_frame_size=max(MIN_MAX_FRAME_SIZE, min(hello.max_frame_size, max_frame_size)),
        heartbeat_ms=negotiate_heartbeat(hello.heartbeat_ms, heartbeat_ms),
    )
