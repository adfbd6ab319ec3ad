"""Group filters: AMQP topic patterns, header conditions, the hidden group header, batches."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from tidemq.broker._filters import (
    MAX_FILTER_BYTES,
    MAX_FILTER_HEADERS,
    MAX_FILTER_PATTERNS,
    check_filter,
    compile_filter,
)
from tidemq.errors import InvalidFilter
from tidemq.storage import Record, encode_batch, encode_bodies, verify


def reference_match(pattern: list[str], words: list[str]) -> bool:
    """AMQP topic matching, written the obvious recursive way."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(reference_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    if head == "*" or head == words[0]:
        return reference_match(rest, words[1:])
    return False


def rk(pattern: str | list[str]) -> Any:
    return compile_filter({"routing_key": pattern})


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("order.*", "order.created", True),
        ("order.*", "order", False),
        ("order.*", "order.created.late", False),
        ("order.#", "order", True),
        ("order.#", "order.a.b.c", True),
        ("#", "anything.at.all", True),
        ("#", None, True),
        ("*", None, False),
        ("*.created", "order.created", True),
        ("#.created", "created", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("a.*.#.z", "a.z", False),
        ("a+b.c", "a+b.c", True),  # regex metacharacters are literal
        ("a.b", "aXb", False),
    ],
)
def test_routing_patterns(pattern: str, key: str | None, expected: bool) -> None:
    assert rk(pattern).matches(key, None) is expected


def test_patterns_are_ored() -> None:
    f = rk(["order.*", "audit.#"])
    assert f.matches("order.x", None) and f.matches("audit", None) and not f.matches("billing.x", None)


def test_exact_keys_match_as_they_are() -> None:
    f = rk([{"exact": "a.*"}, {"exact": ""}, "b.#"])
    assert [f.matches(k, None) for k in ("a.*", "a.x", None, "", "b", "b.c", "*", "a.#")] == [
        True, False, True, True, True, True, False, False]
    only = rk([{"exact": "x"}])
    assert not only.trivial and only.matches("x", None) and not only.matches(None, None)


words = st.lists(st.sampled_from(["a", "b", "c"]), max_size=5)
pattern_words = st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=5)


@settings(max_examples=examples(300), deadline=None)
@given(pattern_words, words)
def test_routing_matcher_agrees_with_reference(pattern: list[str], key: list[str]) -> None:
    f = rk(".".join(pattern))
    assert f.matches(".".join(key) or None, None) is reference_match(pattern, key)


def hdr(cond: Any) -> Any:
    return compile_filter({"headers": {"h": cond}})


@pytest.mark.parametrize(
    ("cond", "value", "expected"),
    [
        ("eu", "eu", True),
        ("eu", "us", False),
        ("eu", None, False),
        ({"eq": "eu"}, "eu", True),
        (["eu", "us"], "us", True),
        ({"any_of": ["eu", "us"]}, "ap", False),
        ({"any_of": ["eu", 5]}, "5.0", True),
        ({"prefix": "or"}, "order", True),
        ({"prefix": "or"}, "xor", False),
        ({"gt": 10}, "10.5", True),
        ({"gt": 10}, "10", False),
        ({"gte": 10}, "10", True),
        ({"lt": 0}, "-1", True),
        ({"lte": 0}, "0.1", False),
        ({"gt": 1}, "abc", False),  # not a number: no match
        ({"gt": 1}, None, False),
        ({"between": [1, 5]}, "5", True),
        ({"between": [1, 5]}, "5.01", False),
        ({"gte": 1, "lt": 3}, "2", True),
        ({"gte": 1, "lt": 3}, "3", False),
        ({"exists": True}, "", True),
        ({"exists": True}, None, False),
        ({"exists": False}, None, True),
        ({"exists": False}, "x", False),
        (5, "5", True),
        (5, "5.0", True),
        (5, "five", False),
    ],
)
def test_header_conditions(cond: Any, value: str | None, expected: bool) -> None:
    headers = {} if value is None else {"h": value}
    assert hdr(cond).matches(None, headers) is expected
    if value is None:
        assert hdr(cond).matches(None, None) is expected


def test_conditions_on_different_headers_are_anded() -> None:
    f = compile_filter({"routing_key": "order.*", "headers": {"region": "eu", "amount": {"gt": 10}}})
    assert f.matches("order.created", {"region": "eu", "amount": "11"})
    assert not f.matches("order.created", {"region": "eu", "amount": "9"})
    assert not f.matches("order.created", {"region": "us", "amount": "11"})
    assert not f.matches("billing.x", {"region": "eu", "amount": "11"})


@pytest.mark.parametrize(
    "spec",
    [
        "order.*",
        {"routing": ["x"]},
        {"routing_key": []},
        {"routing_key": [""]},
        {"routing_key": ["a*.b"]},
        {"routing_key": [3]},
        {"headers": ["x"]},
        {"headers": {"h": {"gt": "ten"}}},
        {"headers": {"h": {"gt": True}}},
        {"headers": {"h": {"between": [5, 1]}}},
        {"headers": {"h": {"between": [1]}}},
        {"headers": {"h": {"exists": "yes"}}},
        {"headers": {"h": {"prefix": 3}}},
        {"headers": {"h": {"regex": "x"}}},
        {"headers": {"h": {}}},
        {"headers": {"h": None}},
        {"headers": {"h": {"any_of": []}}},
        {"headers": {"": "x"}},
        {"headers": {"h": float("nan")}},
    ],
)
def test_invalid_specs(spec: Any) -> None:
    with pytest.raises(InvalidFilter):
        compile_filter(spec)


def test_hidden_group_header() -> None:
    f = compile_filter(None, group="billing")
    assert f.matches(None, {"x-tidemq-group": "billing"})
    assert not f.matches(None, {"x-tidemq-group": "emails"})
    assert f.matches(None, None)
    assert compile_filter({}, group="g").trivial


def test_match_batch() -> None:
    trivial = compile_filter(None, group="g")
    plain = verify(encode_bodies([b"a", b"b"]))
    assert trivial.match_batch(plain) is None
    mixed = verify(
        encode_batch(
            [
                Record(b"1", routing_key="order.x"),
                Record(b"2", routing_key="other", headers={"x-tidemq-group": "h"}),
                Record(b"3"),
            ]
        )
    )
    assert trivial.match_batch(mixed) == [True, False, True]
    orders = compile_filter({"routing_key": "order.*"}, group="g")
    assert orders.match_batch(mixed) == [True, False, False]
    assert orders.match_batch(plain) == [False, False]
    everything = compile_filter({"routing_key": "#"}, group="g")
    assert everything.match_batch(plain) is None
    keyed = verify(encode_batch([Record(b"k", key=b"k")]))
    assert trivial.match_batch(keyed) is None


def test_check_filter_accepts_filters_at_the_limits() -> None:
    check_filter(None)
    check_filter({})
    check_filter({"routing_key": [f"p{i}.*" for i in range(MAX_FILTER_PATTERNS)]})
    check_filter({"headers": {f"h{i}": "v" for i in range(MAX_FILTER_HEADERS)}})
    check_filter({"routing_key": ".".join(["*"] * 128)})


@pytest.mark.parametrize(
    ("spec", "what"),
    [
        ({"routing_key": [f"p{i}" for i in range(MAX_FILTER_PATTERNS + 1)]}, "patterns"),
        ({"routing_key": "a" * 256}, "characters"),
        ({"routing_key": "." * 128}, "words"),
        ({"headers": {f"h{i}": "v" for i in range(MAX_FILTER_HEADERS + 1)}}, "header conditions"),
        ({"headers": {"h": {"any_of": ["x" * 1000] * 70}}}, "bytes"),
        ({"headers": {"h": {"any_of": [object()]}}}, "plain data"),
        ({"routing_key": ["a*"]}, "whole words"),
        ("order.*", "must be a dict"),
        ({"routing_key": [{"exact": "a" * 256}]}, "characters"),
        ({"routing_key": [{"exact": 1}]}, "alternative"),
        ({"routing_key": [{"exact": "a", "also": "b"}]}, "alternative"),
        ({"routing_key": [{"exact": str(i)} for i in range(MAX_FILTER_PATTERNS)] + ["x"]},
         "patterns"),
    ],
)
def test_check_filter_refuses_oversized_or_malformed(spec: Any, what: str) -> None:
    with pytest.raises(InvalidFilter, match=what):
        check_filter(spec)


def test_size_limit_counts_the_encoded_spec() -> None:
    big = {"headers": {"h": {"any_of": ["x" * 100] * (MAX_FILTER_BYTES // 100)}}}
    with pytest.raises(InvalidFilter, match="bytes"):
        check_filter(big)
    compile_filter(big)  # compiling alone (a group restored from disk) checks no size


def test_hostile_pattern_filter_is_fast() -> None:
    import time

    f = compile_filter({"routing_key": [".".join(["#", "*"] * 60) + ".x"] * MAX_FILTER_PATTERNS})
    t0 = time.perf_counter()
    assert not f.matches(".".join(["a"] * 128), None)
    assert time.perf_counter() - t0 < 1.0
