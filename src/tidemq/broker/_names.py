"""Topic and group names (SPEC §1).

A name is 1-200 characters of ``[A-Za-z0-9_.-]`` whose dots separate non-empty words. Names that
differ only in case are the same topic, because file systems may fold case: the broker keys every
topic by :func:`topic_key` (the lower-cased name) and reports the name as it was first given.

A group name is 1-200 characters of any printable text: no control, format, surrogate or
unassigned characters (Unicode category ``C*``), which would corrupt logs, the CLI's tables and
the admin page. Group names are case-sensitive (they are not files).
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import InvalidArgument, InvalidTopicName

__all__ = [
    "MAX_TOPIC_NAME", "MAX_GROUP_NAME", "validate_topic_name", "validate_group_name", "topic_key",
    "dead_letter_name",
]

MAX_TOPIC_NAME = 200
MAX_GROUP_NAME = 200

# One or more words of [A-Za-z0-9_-], separated by single dots.
_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def validate_topic_name(name: object, *, derived: bool = False) -> str:
    """Return ``name`` if it is a valid topic name, else raise :class:`InvalidTopicName`.

    ``derived=True`` lifts the 200-character cap for names the broker derives itself
    (``<topic>.dlq``), which SPEC §1 allows to be longer.
    """
    if not isinstance(name, str):
        raise InvalidTopicName(f"a topic name must be a str, not {type(name).__name__}")
    if not name or (len(name) > MAX_TOPIC_NAME and not derived):
        raise InvalidTopicName(
            f"topic name {name[:40]!r} has {len(name)} characters; use 1-{MAX_TOPIC_NAME}"
        )
    if _NAME.fullmatch(name) is None:
        raise InvalidTopicName(
            f"topic name {name[:60]!r} is invalid: use letters, digits, '_', '-' and dots "
            "between non-empty words (no leading, trailing or doubled dots)"
        )
    return name


def topic_key(name: str) -> str:
    """The identity of a topic: its name lower-cased (names differing in case are one topic)."""
    return name.lower()


def dead_letter_name(topic: str, configured: str | None = None) -> str:
    """A group's dead-letter topic: ``configured`` (its ``dead_letter_topic`` setting) if
    set, else the default of ``topic``, ``<topic>.dlq``."""
    return configured or f"{topic}.dlq"


def validate_group_name(name: object) -> str:
    """Return ``name`` if it is a valid group name, else raise :class:`InvalidArgument`."""
    if not isinstance(name, str):
        raise InvalidArgument(f"a group name must be a str, not {type(name).__name__}")
    if not 1 <= len(name) <= MAX_GROUP_NAME:
        raise InvalidArgument(
            f"group name {name[:40]!r} has {len(name)} characters; use 1-{MAX_GROUP_NAME}")
    if not (name.isascii() and name.isprintable()):
        for i, c in enumerate(name):
            if c < " " or unicodedata.category(c)[0] == "C":
                raise InvalidArgument(
                    f"group name {name[:40]!r} has a control or unprintable character "
                    f"(U+{ord(c):04X} at {i}); use printable characters only")
    return name
