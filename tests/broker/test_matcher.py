"""The linear-time AMQP topic matcher (``_matcher``): AMQP semantics, agreement with an
exponential reference, pattern limits, and no blow-up on hostile patterns."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from tidemq.broker._matcher import (
    MAX_PATTERN_CHARS,
    MAX_PATTERN_WORDS,
    Pattern,
    PatternSet,
    check_pattern,
    matches_any,
)
from tidemq.errors import InvalidFilter


def words_of(key: str | None) -> list[str]:
    return key.split(".") if key else []


def reference(pattern: list[str], words: list[str]) -> bool:
    """AMQP topic matching, the obvious recursive (exponential) way."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return reference(rest, words) or (bool(words) and reference(pattern, words[1:]))
    if not words:
        return False
    return (head == "*" or head == words[0]) and reference(rest, words[1:])


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("#", None, True),
        ("#", "", True),
        ("#", "a", True),
        ("#", "a.b.c", True),
        ("#", "..", True),
        ("*", None, False),
        ("*", "", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("*.*", ".", True),  # two empty words
        ("a.*.b", "a..b", True),  # the empty middle word is a word
        ("a.b", "a..b", False),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y", False),
        ("a.#.b", "b.a.b", False),
        ("a.#", "a", True),
        ("a.#", "ab", False),
        ("#.a", "a", True),
        ("#.a", "x.y.a", True),
        ("#.a", "a.x", False),
        ("#.#", "", True),
        ("#.#.#", "a.b", True),
        ("a.#.#.b", "a.b", True),
        ("#.*", "", False),
        ("#.*", "a", True),
        ("*.#", "a.b.c", True),
        ("*.#.*", "a", False),
        ("*.#.*", "a.b", True),
        ("a.*.#.z", "a.z", False),
        ("a.*.#.z", "a.b.z", True),
        ("order.created", "order.created", True),
        ("order.created", "order.created.x", False),
        ("a+b.c", "a+b.c", True),  # no regex metacharacters
        ("a.b", "aXb", False),
        ("a..b", "a..b", True),  # an empty pattern word matches an empty key word
        ("a..b", "a.x.b", False),
    ],
)
def test_amqp_cases(pattern: str, key: str | None, expected: bool) -> None:
    assert Pattern(pattern).matches(key) is expected
    assert reference(pattern.split("."), words_of(key)) is expected


def test_pattern_set_ors_and_empty_set_matches_nothing() -> None:
    s = PatternSet(["order.*", "audit.#", "x.y"])
    assert s.matches("order.x") and s.matches("audit") and s.matches("audit.a.b")
    assert s.matches("x.y") and not s.matches("x") and not s.matches("billing.x")
    assert not PatternSet([]).matches("a") and not PatternSet([]).matches(None)
    assert matches_any(["a.*", "#.z"], "q.z") and not matches_any(["a.*"], "q.z")
    # One pattern's final position never leaks into the next pattern's run of bits.
    assert not PatternSet(["a", "b"]).matches("a.b")
    assert not PatternSet(["a.#", "b"]).matches("b.a")


@pytest.mark.parametrize("bad", ["", "a*.b", "a.#b", "**", "a.b#", None, 3])
def test_malformed_patterns(bad: object) -> None:
    with pytest.raises(InvalidFilter):
        PatternSet([bad])  # type: ignore[list-item]
    with pytest.raises(InvalidFilter):
        check_pattern(bad)


def test_pattern_limits() -> None:
    check_pattern("a" * MAX_PATTERN_CHARS)
    check_pattern(".".join(["*"] * MAX_PATTERN_WORDS))
    with pytest.raises(InvalidFilter, match="characters"):
        check_pattern("a" * (MAX_PATTERN_CHARS + 1))
    with pytest.raises(InvalidFilter, match="words"):
        check_pattern("." * MAX_PATTERN_WORDS)  # 129 empty words in 128 characters
    # Compiling alone does not check sizes (group settings stored before the limits).
    assert Pattern("a." * 200 + "#").matches("a." * 200 + "x")


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "", "*", "#"]), min_size=1, max_size=7),
    st.lists(st.sampled_from(["a", "b", ""]), max_size=8),
)
def test_agrees_with_reference(pattern: list[str], key: list[str]) -> None:
    source = ".".join(pattern)
    if not source:
        return  # the empty pattern is invalid
    key_str = ".".join(key)
    assert Pattern(source).matches(key_str) is reference(pattern, words_of(key_str))


@settings(max_examples=examples(200), deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=5),
        min_size=1, max_size=4),
    st.lists(st.sampled_from(["a", "b"]), max_size=6),
)
def test_set_agrees_with_any_of_reference(patterns: list[list[str]], key: list[str]) -> None:
    key_str = ".".join(key) or None
    expected = any(reference(p, words_of(key_str)) for p in patterns)
    assert PatternSet(".".join(p) for p in patterns).matches(key_str) is expected


@pytest.mark.parametrize(
    "pattern",
    [
        ".".join(["#"] * (MAX_PATTERN_WORDS - 1)) + ".x",  # collapsed to '#.x'
        ".".join(["#", "*"] * (MAX_PATTERN_WORDS // 2 - 1)) + ".x",  # nothing to collapse
        ".".join(["#", "a"] * (MAX_PATTERN_WORDS // 2 - 1)) + ".x",
    ],
)
def test_hostile_patterns_take_linear_time(pattern: str) -> None:
    check_pattern(pattern)
    keys = [".".join(["a"] * 128), "." * 255, ".".join(["a"] * 2000)]  # none ends in 'x'
    s = PatternSet([pattern] * 64)
    t0 = time.perf_counter()
    for key in keys:
        assert not s.matches(key)
    # The backtracking regex took hours on the first key; the automaton takes milliseconds.
    assert time.perf_counter() - t0 < 2.0
