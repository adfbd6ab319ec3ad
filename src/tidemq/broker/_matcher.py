"""AMQP topic-pattern matching in linear time (SPEC §5; reused for ACL patterns).

A pattern is dot-separated words; ``*`` matches exactly one word, ``#`` zero or more. A key is
split on dots the same way (``a..b`` has an empty middle word); an empty or missing key has
zero words, so only patterns such as ``#`` match it.

Why not a regex: ``#`` as ``(?:\\.[^.]*)*`` backtracks, and a few ``#`` words against one long
key took exponential time (a filter wedged the server's event loop). This module simulates the
pattern's NFA instead: the *set* of pattern positions reachable after each key word, kept as
the bits of one int (a shift-and automaton). Position ``i`` means "the first ``i`` pattern
words are matched"; a key word moves every position whose word is ``*`` or that literal one
step on, keeps every position whose word is ``#`` where it is (``#`` eats the word), and each
``#`` position also reaches the next one without a word (epsilon: ``#`` matching nothing).
Runs of ``#`` are collapsed to one at compile time, so the epsilon step is a single shift. Cost:
O(key words) big-int operations of O(pattern words / 64) machine words each, whatever the
patterns and keys. Several patterns ORed share one automaton (:class:`PatternSet`): each owns
its own run of bits, and the set matches when any of their final positions is reached.

Limits (checked by :func:`check_pattern`, which compiling new filters and ACLs calls; state
stored before the limits existed still compiles): a pattern of at most
:data:`MAX_PATTERN_CHARS` characters and :data:`MAX_PATTERN_WORDS` words. Routing keys are
capped at publish (``_limits``) at 255 characters and :data:`MAX_KEY_WORDS` words; matching
longer keys is still linear, never refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ..errors import InvalidFilter

__all__ = [
    "MAX_PATTERN_CHARS",
    "MAX_PATTERN_WORDS",
    "MAX_KEY_WORDS",
    "Pattern",
    "PatternSet",
    "check_pattern",
    "matches_any",
]

MAX_PATTERN_CHARS: Final = 255
MAX_PATTERN_WORDS: Final = 128
MAX_KEY_WORDS: Final = 128


def check_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a well-formed pattern within the limits, else raise
    :class:`InvalidFilter` saying what is wrong."""
    if not isinstance(pattern, str):
        raise InvalidFilter(f"routing-key pattern {pattern!r} must be a non-empty string")
    _words(pattern)
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidFilter(
            f"routing-key pattern {pattern[:40]!r}... has {len(pattern)} characters; "
            f"use at most {MAX_PATTERN_CHARS}")
    words = pattern.count(".") + 1
    if words > MAX_PATTERN_WORDS:
        raise InvalidFilter(
            f"routing-key pattern {pattern[:40]!r}... has {words} words; "
            f"use at most {MAX_PATTERN_WORDS}")
    return pattern


def _words(pattern: object) -> list[str]:
    """The pattern's words with runs of ``#`` collapsed to one; raises InvalidFilter."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidFilter(f"routing-key pattern {pattern!r} must be a non-empty string")
    out: list[str] = []
    for word in pattern.split("."):
        if word == "#":
            if out and out[-1] == "#":
                continue  # '#.#' matches exactly what '#' matches
        elif word != "*" and ("*" in word or "#" in word):
            raise InvalidFilter(
                f"routing-key pattern {pattern[:60]!r}: '*' and '#' must be whole words "
                "(e.g. 'order.*')")
        out.append(word)
    return out


class PatternSet:
    """Several patterns ORed, compiled into one automaton. Immutable; thread-safe.

    ``PatternSet(["order.*", "audit.#"]).matches("audit.x.y")`` is True. An empty set matches
    nothing. Construction validates the syntax (InvalidFilter) but not the size limits: call
    :func:`check_pattern` on patterns that come from users.
    """

    __slots__ = ("patterns", "_start", "_accept", "_star", "_hash", "_steps")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: tuple[str, ...] = tuple(patterns)
        start = accept = star = hash_ = 0
        literal: dict[str, int] = {}
        base = 0
        for pattern in self.patterns:
            words = _words(pattern)
            start |= 1 << base
            for i, word in enumerate(words):
                bit = 1 << (base + i)
                if word == "*":
                    star |= bit
                elif word == "#":
                    hash_ |= bit
                else:
                    literal[word] = literal.get(word, 0) | bit
            accept |= 1 << (base + len(words))
            base += len(words) + 1  # position len(words) is this pattern's final one
        self._hash = hash_
        self._star = star
        self._accept = accept
        # word -> the positions it advances: its literal positions and every '*' (one lookup
        # per key word; a word no pattern names advances the '*' positions only).
        self._steps = {word: bits | star for word, bits in literal.items()}
        self._start = start | ((start & hash_) << 1)  # epsilon over a leading '#'

    def matches(self, key: str | None) -> bool:
        """True when ``key`` (dot-separated words; None or ``""``: zero words) matches any
        pattern of the set. Linear in key words x pattern words."""
        states = self._start
        if key:
            hash_ = self._hash
            star = self._star
            get = self._steps.get
            if hash_:
                for word in key.split("."):
                    states = ((states & get(word, star)) << 1) | (states & hash_)
                    if not states:
                        return False
                    # Epsilon: a '#' position also stands at the next one (never a '#').
                    states |= (states & hash_) << 1
            else:
                for word in key.split("."):
                    states = (states & get(word, star)) << 1
                    if not states:
                        return False
        return bool(states & self._accept)

    def __repr__(self) -> str:
        return f"PatternSet({list(self.patterns)!r})"


class Pattern(PatternSet):
    """One compiled pattern: ``Pattern("a.#.b").matches("a.x.y.b")``."""

    __slots__ = ("source",)

    def __init__(self, pattern: str) -> None:
        super().__init__((pattern,))
        self.source = pattern

    def __repr__(self) -> str:
        return f"Pattern({self.source!r})"


def matches_any(patterns: Iterable[str], key: str | None) -> bool:
    """True when ``key`` matches any of ``patterns`` (compile a :class:`PatternSet` once when
    matching many keys against the same patterns)."""
    return PatternSet(patterns).matches(key)
