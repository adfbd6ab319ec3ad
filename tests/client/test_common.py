"""Argument handling shared by both clients: typed errors before anything is stored."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tidemq import errors
from tidemq.broker._types import Backoff, GroupSettings
from tidemq.client import _common


@pytest.mark.parametrize(
    ("url", "kind", "path"),
    [("memory://", "memory", None), ("./data", "file", "./data"), ("/abs/d", "file", "/abs/d"),
     ("file:///tmp/x", "file", "/tmp/x"), ("tidemq://h:7601", "tidemq", None)],
)
def test_parse_url(url: str, kind: str, path: str | None) -> None:
    ep = _common.parse_url(url)
    assert ep.kind == kind
    assert ep.path == path


def test_parse_url_errors() -> None:
    with pytest.raises(errors.InvalidArgument):
        _common.parse_url("gopher://x")
    # another engine's backend: the URL is kept whole for tidemq.backends.connect
    ep = _common.parse_url("amqp://guest:guest@localhost:5672/")
    assert (ep.kind, ep.url) == ("amqp", "amqp://guest:guest@localhost:5672/")
    assert _common.parse_url("nats://127.0.0.1:4222").kind == "nats"
    with pytest.raises(errors.InvalidArgument):
        _common.parse_url("")


def test_make_record_normalises() -> None:
    r = _common.make_record("héllo", key="k", routing_key="a.b", headers={"h": "v"}, priority=3,
                            ttl=1.5, dedup_id="d")
    assert r.body == "héllo".encode() and r.key == b"k" and r.ttl_us == 1_500_000
    assert r.priority == 3 and r.headers == {"h": "v"} and r.dedup_id == "d"


def test_delay_and_deliver_at() -> None:
    now = time.time()
    r = _common.make_record(b"x", delay=10, now=now)
    assert r.deliver_at_us == int((now + 10) * 1e6)
    at = datetime.fromtimestamp(now + 5, tz=UTC)
    assert abs(_common.make_record(b"x", deliver_at=at, now=now).deliver_at_us
               - int((now + 5) * 1e6)) <= 1
    assert _common.make_record(b"x", deliver_at=now - 5, now=now).deliver_at_us == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"priority": 10}, {"priority": -1}, {"priority": True}, {"delay": -1},
     {"delay": float("nan")}, {"ttl": 0}, {"headers": {"a": 1}}, {"headers": ["a"]},
     {"key": 5}, {"routing_key": 5}, {"dedup_id": ""}, {"delay": 1, "deliver_at": 5.0},
     {"deliver_at": datetime(2030, 1, 1)}, {"headers": {"x-tidemq-group": "g"}}],
)
def test_bad_fields_are_invalid_argument(kwargs: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidArgument):
        _common.make_record(b"x", **kwargs)  # type: ignore[arg-type]


def test_bad_body() -> None:
    with pytest.raises(errors.InvalidArgument):
        _common.make_record(123)


def test_make_records_mixes_items_and_defaults() -> None:
    class Msg:
        body = b"obj"
        priority = 7

    recs = _common.make_records([b"a", {"body": b"b", "key": "k2"}, Msg()],
                                {"key": "k", "priority": 0})
    assert [r.body for r in recs] == [b"a", b"b", b"obj"]
    assert [r.key for r in recs] == [b"k", b"k2", b"k"]
    assert recs[2].priority == 7
    with pytest.raises(errors.InvalidArgument):
        _common.make_records([], {})
    with pytest.raises(errors.InvalidArgument):
        _common.make_records([{"bdy": b"x"}], {})


def test_settings_merge_and_validation() -> None:
    explicit = _common.group_settings({"mode": "ordered", "backoff": (0.1, 2, 1), "filter": None})
    assert "filter" not in explicit and explicit["backoff"] == Backoff(0.1, 2.0, 1.0)
    s = _common.merge_settings(None, explicit)
    assert s.mode == "ordered"
    merged = _common.merge_settings(s, {"ack_timeout": 5.0})
    assert merged.mode == "ordered" and merged.ack_timeout == 5.0
    with pytest.raises(errors.InvalidArgument):
        _common.merge_settings(None, {"mode": "fanout"})
    with pytest.raises(errors.InvalidArgument):
        _common.merge_settings(GroupSettings(), {"max_deliveries": 0})


def test_topic_config_rejects_unknown_and_bad() -> None:
    assert _common.topic_config(3, {"durability": "always"}).partitions == 3
    with pytest.raises(errors.InvalidArgument):
        _common.topic_config(0, {})
    with pytest.raises(errors.InvalidArgument):
        _common.topic_config(1, {"durability": "sometimes"})
    with pytest.raises(errors.InvalidArgument):
        _common.topic_config(1, {"colour": "blue"})
