"""The conformance suite: one set of semantic tests over the public client API, run against
every transport. A transport that lacks a feature declares it in ``UNSUPPORTED`` (the test is
then reported as skipped with the reason), never silently passes."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import tidemq

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


@pytest.fixture
def mq(url: str) -> Iterator[tidemq.Client]:
    client = tidemq.Client(url)
    try:
        yield client
    finally:
        client.close()


def needs(transport: str, feature: str) -> None:
    if feature in UNSUPPORTED.get(transport, set()):
        pytest.skip(f"{transport} declares {feature!r} unsupported")
