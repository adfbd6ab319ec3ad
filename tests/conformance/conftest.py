"""The conformance suite: one set of semantic tests over the public client API, run against
every transport (``memory://``, a data folder, a live ``tidemq serve``) and through both faces
of the client: the blocking ``tidemq.Client`` and the asyncio ``tidemq.AsyncClient`` (driven by
``_async_face.AsyncFace``). A transport that lacks a feature declares it in ``UNSUPPORTED`` (the
test is then reported as skipped with the reason), never silently passes."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tidemq

from ._async_face import AsyncFace

# transport name -> features it does not support (none, for TideMQ's own transports)
UNSUPPORTED: dict[str, set[str]] = {"memory": set(), "file": set(), "server": set()}

_counter = itertools.count()


def unique(prefix: str) -> str:
    """A topic/group name no other run or test uses."""
    return f"{prefix}.{os.getpid()}.{next(_counter)}"


def _server_url(tmp_path: Path) -> Iterator[str]:
    try:
        from tests.server.conftest import running_server  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("the server transport is not built yet")
    with running_server(tmp_path / "server-data") as url:
        yield url


@pytest.fixture(params=["memory", "file", "server"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(transport: str, tmp_path: Path) -> Iterator[str]:
    if transport == "memory":
        yield "memory://"
    elif transport == "file":
        yield str(tmp_path / "data")
    else:
        yield from _server_url(tmp_path)


@pytest.fixture(params=["blocking", "async"])
def face(request: pytest.FixtureRequest) -> str:
    """Which client runs the test body: ``tidemq.Client`` or ``tidemq.AsyncClient``."""
    return str(request.param)


@pytest.fixture
def connect(face: str) -> Iterator[Callable[..., Any]]:
    """``connect(url)``: a client of the test's face (closed at the end of the test)."""
    opened: list[Any] = []

    def open_client(url: str, **options: Any) -> Any:
        client = tidemq.Client(url, **options) if face == "blocking" else AsyncFace(url,
                                                                                      **options)
        opened.append(client)
        return client

    try:
        yield open_client
    finally:
        for client in opened:
            if isinstance(client, AsyncFace):
                client.shutdown()
            else:
                client.close()


@pytest.fixture
def mq(url: str, connect: Callable[..., Any]) -> tidemq.Client:
    client: tidemq.Client = connect(url)
    return client


def needs(transport: str, feature: str) -> None:
    if feature in UNSUPPORTED.get(transport, set()):
        pytest.skip(f"{transport} declares {feature!r} unsupported")
