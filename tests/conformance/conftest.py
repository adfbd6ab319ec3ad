"""The conformance suite: one set of semantic tests over the public client API, run against
every transport (``memory://``, a data folder, a live ``tidemq serve``, NATS JetStream over
``nats://``, RabbitMQ over ``amqp://``) and through both faces of the client: the blocking
``tidemq.Client`` and the asyncio ``tidemq.AsyncClient`` (driven by ``_async_face.AsyncFace``).

A test names the SPEC features it needs with :func:`requires`; the client's capability table
(``client.capabilities()``, the same table as ``docs/backends.md``) decides: a feature the
backend declares unsupported skips the test with the table's reason, and a test whose features
are all native or emulated must pass. ``test_declared_unsupported_features_raise`` checks the
other half of the promise: using an unsupported feature raises ``Unsupported``.

``nats://`` runs when a NATS server with JetStream answers on ``$TIDEMQ_NATS_HOST``:
``$TIDEMQ_NATS_PORT`` (127.0.0.1:4222); each test gets a prefix of its own (passed in the URL's
query) and its streams are deleted afterwards. ``amqp://`` runs when the RabbitMQ backend
exists (``tidemq.backends.connect_amqp``) and a broker answers on ``$TIDEMQ_AMQP_URL``
(amqp://guest:guest@127.0.0.1:5672/)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import tidemq

from ._async_face import AsyncFace

NATS_HOST = os.environ.get("TIDEMQ_NATS_HOST", "127.0.0.1")
NATS_PORT = int(os.environ.get("TIDEMQ_NATS_PORT", "4222"))
AMQP_URL = os.environ.get("TIDEMQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

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


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def nats_url(**options: Any) -> Iterator[str]:
    """A ``nats://`` URL with a prefix of its own (and fast test timings) in its query; every
    stream under the prefix is deleted afterwards. Skips when NATS is not there."""
    try:
        import nats  # noqa: F401
    except ImportError:
        pytest.skip("nats-py is not installed (the 'peers' extra)")
    if not _listening(NATS_HOST, NATS_PORT):
        pytest.skip(f"no NATS server on {NATS_HOST}:{NATS_PORT}")
    prefix = f"c{secrets.token_hex(5)}"
    query = "&".join(f"{k}={v}" for k, v in
                     {"prefix": prefix, "pull_wait": 0.5, "owner_ttl": 3, **options}.items())
    try:
        yield f"nats://{NATS_HOST}:{NATS_PORT}?{query}"
    finally:
        asyncio.run(delete_nats_streams(prefix))


async def delete_nats_streams(prefix: str) -> None:
    """Delete every JetStream stream whose subjects are under ``prefix``."""
    import nats

    nc = await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}")
    try:
        resp = await nc.request("$JS.API.STREAM.NAMES",
                                json.dumps({"subject": f"{prefix}.>"}).encode(), timeout=5)
        for name in json.loads(resp.data).get("streams") or []:
            await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=5)
    finally:
        await nc.close()


def amqp_url() -> Iterator[str]:
    """``$TIDEMQ_AMQP_URL`` with a prefix of its own, when the RabbitMQ backend exists and a
    broker answers; the topics made under the prefix are deleted afterwards."""
    import tidemq.backends

    if not hasattr(tidemq.backends, "connect_amqp"):
        pytest.skip("the amqp:// backend (tidemq.backends.connect_amqp) is not built yet")
    parts = urlsplit(AMQP_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    if not _listening(host, port):
        pytest.skip(f"no RabbitMQ on {host}:{port}")
    prefix = f"c{secrets.token_hex(5)}"
    url = f"{AMQP_URL}{'&' if parts.query else '?'}prefix={prefix}"
    try:
        yield url
    finally:
        with tidemq.Client(url) as mq:
            for topic in mq.list_topics():
                mq.delete_topic(topic.name)
        delete_amqp_prefix(prefix)


def delete_amqp_prefix(prefix: str) -> None:
    """Delete what the amqp:// backend keeps per prefix once its topics are gone: the
    metadata stream ``<prefix>.meta`` and the exchange of its wait queues ``<prefix>.wait``."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        ch = conn.channel()
        ch.queue_delete(f"{prefix}.meta")
        ch.exchange_delete(f"{prefix}.wait")
    finally:
        conn.close()


@pytest.fixture(params=["memory", "file", "server", "nats", "amqp"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(transport: str, tmp_path: Path) -> Iterator[str]:
    if transport == "memory":
        yield "memory://"
    elif transport == "file":
        yield str(tmp_path / "data")
    elif transport == "nats":
        yield from nats_url()
    elif transport == "amqp":
        yield from amqp_url()
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


def supports(client: Any, feature: str) -> bool:
    """Whether the client's backend declares ``feature`` native or emulated."""
    return bool(client.capabilities()[feature].support != "unsupported")


def requires(client: Any, *features: str) -> None:
    """Skip the test, with the capability table's reason, if the client's backend declares
    one of ``features`` unsupported. A feature missing from the table is an error."""
    table = client.capabilities()
    for feature in features:
        cap = table[feature]
        if cap.support == "unsupported":
            pytest.skip(f"{feature} unsupported on {urlsplit(client.url).scheme}://: {cap.how}")
