"""How the clients reach the backends of other engines: ``nats://`` and ``amqp://`` URLs go to
``tidemq.backends.connect``, options may ride in the URL's query, and ``capabilities()``
answers on every URL."""

from __future__ import annotations

import asyncio

import pytest

import tidemq
import tidemq.backends
from tidemq import errors
from tidemq.backends import _query_value, native_capabilities


def test_query_values_are_typed() -> None:
    assert _query_value("true") is True and _query_value("False") is False
    assert _query_value("3") == 3 and _query_value("0.5") == 0.5
    assert _query_value("shop") == "shop"


def test_an_option_given_twice_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="prefix"):
        asyncio.run(tidemq.backends.connect("nats://127.0.0.1:1?prefix=a", prefix="b"))


def test_unknown_backend_scheme() -> None:
    with pytest.raises(errors.InvalidArgument):
        asyncio.run(tidemq.backends.connect("kafka://127.0.0.1:9092"))
    with pytest.raises(errors.InvalidArgument):
        tidemq.Client("kafka://127.0.0.1:9092")


def test_unreachable_nats_is_connection_lost() -> None:
    pytest.importorskip("nats")
    with pytest.raises(errors.ConnectionLost):
        tidemq.Client("nats://127.0.0.1:1?connect_timeout=0.5")


def test_own_transports_are_native_everywhere() -> None:
    with tidemq.Client("memory://") as mq:
        table = mq.capabilities()
    assert table == native_capabilities()
    assert {c.support for c in table.values()} == {"native"}
    assert {"priority", "delay", "mode_ordered", "redrive"} <= set(table)
