"""Names on NATS: how TideMQ topics, groups and routing keys become stream, consumer and subject
names that JetStream accepts.

JetStream stream and consumer names may not contain ``.``, ``*``, ``>``, whitespace or path
separators, and a subject token may not be empty, contain whitespace or be ``*`` / ``>``. TideMQ
topic names contain dots, group names may be any printable Unicode, and a routing-key word may be
anything (even empty). So every name goes through :func:`escape`: ``[A-Za-z0-9-]`` stays, every
other character becomes ``_XX`` per UTF-8 byte (upper-case hex). The mapping is injective and
its output is a valid stream name, consumer name and subject token. Names whose escape is long
are cut and suffixed with ``_H`` and the xxh3 hash of the whole escape (``H`` is no hex digit, so
such a name cannot be the escape of another name); the metadata records keep the full names.

Layout (``P`` is the connection's prefix, ``T`` the escaped topic key, ``I`` the incarnation):

- partition ``p``: stream ``P_T_I_p`` holding subjects ``P.T.I.p.<routing words>.~``: every
  routing-key word escaped (the empty word is ``_``), then the end token ``~``, which no escaped
  word can be. The end token is what makes AMQP's ``a.#`` (``a`` and anything below it) one
  subject filter: ``P.T.I.p.a.>``.
- a group: one durable pull consumer per partition stream, named ``escape(group)``.
- metadata: stream ``P_meta`` (subjects ``P.meta.>``), ownership and members: ``P_owners``.
"""

from __future__ import annotations

import re
from typing import Final

import xxhash

from ..broker._names import topic_key

__all__ = [
    "END",
    "escape",
    "shorten",
    "topic_token",
    "group_token",
    "routing_tokens",
    "pattern_subject",
    "check_prefix",
]

END: Final = "~"  # the token after the last routing word (no escaped word is "~")
EMPTY_WORD: Final = "_"  # an empty routing-key word ("a..b"); escapes are "_" + two hex digits
MAX_TOKEN: Final = 100  # escaped names longer than this are cut and hashed
_SAFE: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_PREFIX = re.compile(r"[A-Za-z0-9-]{1,32}")


def escape(text: str) -> str:
    """``text`` as a token of ``[A-Za-z0-9_-]``: injective (``_XX`` per UTF-8 byte otherwise)."""
    if all(c in _SAFE for c in text):
        return text
    out: list[str] = []
    for c in text:
        if c in _SAFE:
            out.append(c)
        else:
            out.extend(f"_{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
    return "".join(out)


def shorten(token: str, limit: int = MAX_TOKEN) -> str:
    """``token`` if at most ``limit`` characters, else a cut of it plus ``_H`` and its hash."""
    if len(token) <= limit:
        return token
    return f"{token[: limit - 18]}_H{xxhash.xxh3_64_hexdigest(token.encode())}"


def topic_token(name: str) -> str:
    """The token of a topic: its key (names differing in case are one topic), escaped."""
    return shorten(escape(topic_key(name)))


def group_token(name: str) -> str:
    """The token of a group (case-sensitive): a durable consumer name and a subject token."""
    return shorten(escape(name))


def _word(word: str) -> str:
    return escape(word) if word else EMPTY_WORD


def routing_tokens(routing_key: str | None) -> str:
    """The subject tail of a routing key: its words escaped, then the end token.

    ``None`` and ``""`` have no words (as in the broker's matcher), so both are just ``~``.
    """
    if not routing_key:
        return END
    return ".".join([*map(_word, routing_key.split(".")), END])


def pattern_subject(pattern: str) -> str | None:
    """The subject-filter tail matching exactly what the AMQP pattern matches, or ``None`` when
    no single NATS filter does.

    ``*`` is one word as in NATS; ``#`` as the last word (runs collapsed) is ``>``, which here
    also matches zero words because every subject ends with the end token. A ``#`` anywhere
    else has no NATS equivalent: ``None`` (the caller filters client-side).
    """
    words = pattern.split(".")
    while len(words) > 1 and words[-1] == "#" and words[-2] == "#":
        words.pop()
    if "#" in words[:-1]:
        return None
    tail = [w if w == "*" else _word(w) for w in words[:-1]]
    last = words[-1]
    if last == "#":
        return ".".join([*tail, ">"])
    tail.append("*" if last == "*" else _word(last))
    return ".".join([*tail, END])


def check_prefix(prefix: str) -> str:
    """A connection prefix: 1-32 characters of ``[A-Za-z0-9-]``."""
    if not isinstance(prefix, str) or _PREFIX.fullmatch(prefix) is None:
        raise ValueError(f"prefix {prefix!r} must be 1-32 characters of [A-Za-z0-9-]")
    return prefix
