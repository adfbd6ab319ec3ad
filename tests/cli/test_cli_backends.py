"""The ``tidemq`` CLI on the backends of other engines: ``topic``, ``publish``, ``consume`` and
``group describe`` with ``--url nats://...`` (and ``amqp://...`` once that backend exists).

Runs against the machine's NATS server (JetStream on 127.0.0.1:4222; skipped when none
answers), with a prefix of its own in the URL's query; every stream it made is deleted after.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conformance.conftest import amqp_url, nats_url

from .conftest import Run


@pytest.fixture(params=["nats", "amqp"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "nats":
        yield from nats_url()
    else:
        yield from amqp_url()


def test_topic_publish_consume_group_describe(run: Run) -> None:
    r = run("topic", "create", "orders", "--partitions", "3")
    assert r.code == 0, r.err
    r = run("topic", "list")
    assert r.code == 0 and "orders" in r.out, (r.out, r.err)
    r = run("topic", "describe", "orders")
    assert r.code == 0 and "orders" in r.out, (r.out, r.err)

    r = run("publish", "orders", "hello", "world", "--key", "k1")
    assert r.code == 0, r.err
    r = run("publish", "orders", "--quiet", stdin=b"three\nfour\n")
    assert r.code == 0, r.err

    r = run("consume", "orders", "--group", "billing", "--count", "4", "--timeout", "5",
            "--format", "json")
    assert r.code == 0, r.err
    bodies = sorted(json.loads(line)["body"] for line in r.lines())
    assert bodies == ["four", "hello", "three", "world"]

    r = run("group", "describe", "orders", "billing")
    assert r.code == 0 and "billing" in r.out, (r.out, r.err)
    r = run("group", "list", "orders")
    assert r.code == 0 and "billing" in r.out, (r.out, r.err)

    r = run("topic", "delete", "orders")
    assert r.code == 0, r.err


def test_unsupported_feature_is_a_clear_error(run: Run, url: str) -> None:
    """A feature the backend lacks (priorities on NATS) is refused with the reason, never
    stored without it."""
    import tidemq

    with tidemq.Client(url) as mq:
        unsupported = mq.capabilities()["priority"].support == "unsupported"
    assert run("topic", "create", "jobs").code == 0
    r = run("publish", "jobs", "urgent", "--priority", "9")
    if unsupported:
        assert r.code != 0 and "priority" in r.err, (r.code, r.err)
    else:
        assert r.code == 0, r.err
