"""Permissions: may this user publish/consume/admin this topic or group?

Built from the users file's rules (:meth:`UserDB.rules`). How they combine:

- a rule applies to a user when its ``user`` is that name or ``*`` (every user);
- ``{user}`` in a rule's pattern is replaced by the user's name before matching (user names
  cannot contain ``*`` or ``#``, so the name is always literal words);
- patterns are routing-key patterns (:mod:`tidemq.broker._matcher`, linear time): words split
  on ``.``, ``*`` exactly one word, ``#`` zero or more;
- a matching **deny wins** over any allow; **no matching rule: denied** (fail closed).

Examples::

    allow shop    publish topic:orders         the shop may publish to 'orders' only
    allow billing consume topic:orders         billing reads 'orders' ...
    allow billing consume group:billing        ... as group 'billing' only
    allow *       consume topic:inbox.{user}   each user reads its own inbox topic
    allow *       consume group:{user}.#       ... in groups named after itself
    allow ops     admin   topic:#              ops manages every topic,
    deny  ops     admin   topic:audit.#        except the audit ones

Consuming needs both ``consume topic:T`` and ``consume group:G`` (the server checks each).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ..broker._matcher import PatternSet
from ..errors import InvalidArgument
from ._users import EVERY_USER, KINDS, OPS, USER_PLACEHOLDER, Rule, is_username

__all__ = ["Permissions"]

# Caches are cleared when they reach these sizes: bounded memory whatever names are asked
# about, and a full clear costs only re-compiling the few users that are active.
_MAX_USERS_CACHED: Final = 10_000
_MAX_ANSWERS_CACHED: Final = 100_000

_Compiled = dict[tuple[str, str], tuple[PatternSet, PatternSet]]  # (op, kind) -> allow, deny


class Permissions:
    """The rules compiled for fast checks. Immutable in meaning: build a new one when the
    rules change (the gate does so on reload).

    :meth:`allows` is called for every frame, so answers are cached per (user, op, kind,
    name): a repeated question is one dict lookup (well under a microsecond). Safe to call from
    several threads: the caches are only added to or cleared, and a lost entry is recomputed.
    """

    __slots__ = ("_by_user", "_every", "_compiled", "_answers")

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._by_user: dict[str, list[Rule]] = {}
        self._every: list[Rule] = []
        for rule in rules:
            if rule.user == EVERY_USER:
                self._every.append(rule)
            else:
                self._by_user.setdefault(rule.user, []).append(rule)
        self._compiled: dict[str, _Compiled] = {}
        self._answers: dict[tuple[str, str, str, str], bool] = {}

    def allows(self, user: str, op: str, kind: str, name: str) -> bool:
        """Whether ``user`` may ``op`` (publish, consume, admin) the ``kind`` (topic, group)
        named ``name``. InvalidArgument for an unknown op or kind (a bug in the caller, not
        a denial)."""
        key = (user, op, kind, name)
        answer = self._answers.get(key)
        if answer is not None:
            return answer
        if op not in OPS:
            raise InvalidArgument(f"unknown operation {op!r}; expected one of {', '.join(OPS)}")
        if kind not in KINDS:
            raise InvalidArgument(f"unknown resource kind {kind!r}; expected topic or group")
        allow, deny = self._for(user).get((op, kind), _NOTHING)
        answer = allow.matches(name) and not deny.matches(name)
        if len(self._answers) >= _MAX_ANSWERS_CACHED:
            self._answers.clear()
        self._answers[key] = answer
        return answer

    def rules_for(self, user: str) -> list[Rule]:
        """The rules that apply to ``user`` (its own and those for ``*``)."""
        return [*self._by_user.get(user, ()), *self._every]

    def _for(self, user: str) -> _Compiled:
        compiled = self._compiled.get(user)
        if compiled is None:
            compiled = self._compile(user)
            if len(self._compiled) >= _MAX_USERS_CACHED:
                self._compiled.clear()
            self._compiled[user] = compiled
        return compiled

    def _compile(self, user: str) -> _Compiled:
        patterns: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        # A name that is not a valid user name (never authenticated) could smuggle '*' or '#'
        # into a '{user}' pattern: such rules do not apply to it at all.
        literal = is_username(user)
        for rule in self.rules_for(user):
            if not literal and USER_PLACEHOLDER in rule.pattern:
                continue
            allow, deny = patterns.setdefault((rule.op, rule.kind), ([], []))
            (allow if rule.effect == "allow" else deny).append(
                rule.pattern.replace(USER_PLACEHOLDER, user))
        return {k: (PatternSet(a), PatternSet(d)) for k, (a, d) in patterns.items()}


_NOTHING: Final = (PatternSet(()), PatternSet(()))
