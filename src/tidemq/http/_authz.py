"""Which permission each HTTP route needs: the binary protocol's rules, route by route.

The rules are those of ``server/_authz.py`` (docs/security.md, "Permissions"), checked with the
same gate (:meth:`Gate.allows`); this table says which binary request each route is:

==================================================  ===========================================
route                                               needs (binary request it matches)
==================================================  ===========================================
GET /, GET /static/{name}, /healthz, /readyz        public: no credentials (no data in them)
GET /api/v1/openapi.json, /api/v1/stats, /metrics   authenticated, nothing more; /metrics and
                                                    /api/v1/topics show only what the user
                                                    holds a right on (as ListTopics)
GET /api/v1/topics                                  nothing; lists topics with any right
PUT, DELETE /api/v1/topics/{topic}                  admin topic (CreateTopic, SetPartitions,
                                                    DeleteTopic)
GET /api/v1/topics/{topic}                          any right on the topic (DescribeTopic)
POST .../{topic}/messages                           publish topic (Publish)
GET .../{topic}/partitions/{p}/messages             consume or admin on the topic (reading
                                                    messages without a group)
GET .../{topic}/groups                              consume or admin on the topic (GroupList)
GET .../groups/{group}, .../dlq, .../dlq/messages   admin topic, or consume topic and group
                                                    (GroupDescribe, DlqList)
PUT, DELETE .../groups/{group}, POST .../reset,     admin topic and admin group (create/update/
POST .../dlq/redrive                                delete_group, GroupReset, DlqRedrive)
POST .../receive, /ack, /nack, /reject, /extend     consume topic and consume group (Subscribe,
                                                    Ack, Nack, Reject, Extend)
==================================================  ===========================================

A route without an entry here is refused (fail closed), and ``tests/http/test_authz.py`` fails
when a route of :data:`~._routes.ROUTES` has no rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..errors import PermissionDenied

__all__ = ["Access", "Rule", "RULES", "authorize", "OPS"]

OPS = ("publish", "consume", "admin")


class Access(Protocol):
    """What a check needs of the requester."""

    @property
    def user(self) -> str: ...

    def may(self, op: str, kind: str, name: str) -> bool:
        """Whether the user may ``op`` the resource ``kind:name`` (True without users)."""


Check = Callable[[Access, Mapping[str, str]], None]


@dataclass(frozen=True, slots=True)
class Rule:
    """``public``: served without credentials. Else ``check`` raises PermissionDenied."""

    needs: str  # for people: the docs and the OpenAPI document show it
    check: Check
    public: bool = False


def _need(a: Access, op: str, kind: str, name: str) -> None:
    if not a.may(op, kind, name):
        raise PermissionDenied(f"user {a.user!r} may not {op} {kind} {name!r}")


def _need_any(a: Access, ops: tuple[str, ...], kind: str, name: str) -> None:
    if not any(a.may(op, kind, name) for op in ops):
        raise PermissionDenied(f"user {a.user!r} holds none of {'/'.join(ops)} on "
                               f"{kind} {name!r}")


def _nothing(a: Access, m: Mapping[str, str]) -> None:
    pass


def _admin_topic(a: Access, m: Mapping[str, str]) -> None:
    _need(a, "admin", "topic", m["topic"])


def _any_topic(a: Access, m: Mapping[str, str]) -> None:
    _need_any(a, OPS, "topic", m["topic"])


def _publish(a: Access, m: Mapping[str, str]) -> None:
    _need(a, "publish", "topic", m["topic"])


def _read_topic(a: Access, m: Mapping[str, str]) -> None:
    _need_any(a, ("consume", "admin"), "topic", m["topic"])


def _read_group(a: Access, m: Mapping[str, str]) -> None:
    if a.may("admin", "topic", m["topic"]):
        return
    _need(a, "consume", "topic", m["topic"])
    _need(a, "consume", "group", m["group"])


def _admin_group(a: Access, m: Mapping[str, str]) -> None:
    _need(a, "admin", "topic", m["topic"])
    _need(a, "admin", "group", m["group"])


def _consume(a: Access, m: Mapping[str, str]) -> None:
    _need(a, "consume", "topic", m["topic"])
    _need(a, "consume", "group", m["group"])


PUBLIC = Rule("nothing: public (no credentials)", _nothing, public=True)
AUTHENTICATED = Rule("authenticated; shows only what the user holds a right on", _nothing)
ADMIN_TOPIC = Rule("admin on the topic", _admin_topic)
ANY_TOPIC = Rule("publish, consume or admin on the topic", _any_topic)
PUBLISH = Rule("publish on the topic", _publish)
READ_TOPIC = Rule("consume or admin on the topic", _read_topic)
READ_GROUP = Rule("admin on the topic, or consume on the topic and the group", _read_group)
ADMIN_GROUP = Rule("admin on the topic and on the group", _admin_group)
CONSUME = Rule("consume on the topic and on the group", _consume)

_T = "/api/v1/topics/{topic}"
_G = _T + "/groups/{group}"

#: (method, route path) -> rule. HEAD is checked as GET.
RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/"): PUBLIC,
    ("GET", "/static/{name}"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): AUTHENTICATED,
    ("GET", "/api/v1/openapi.json"): AUTHENTICATED,
    ("GET", "/api/v1/stats"): AUTHENTICATED,
    ("GET", "/api/v1/topics"): AUTHENTICATED,
    ("PUT", _T): ADMIN_TOPIC,
    ("GET", _T): ANY_TOPIC,
    ("DELETE", _T): ADMIN_TOPIC,
    ("POST", _T + "/messages"): PUBLISH,
    ("GET", _T + "/partitions/{partition}/messages"): READ_TOPIC,
    ("GET", _T + "/groups"): READ_TOPIC,
    ("PUT", _G): ADMIN_GROUP,
    ("GET", _G): READ_GROUP,
    ("DELETE", _G): ADMIN_GROUP,
    ("POST", _G + "/reset"): ADMIN_GROUP,
    ("POST", _G + "/receive"): CONSUME,
    ("POST", _G + "/ack"): CONSUME,
    ("POST", _G + "/nack"): CONSUME,
    ("POST", _G + "/reject"): CONSUME,
    ("POST", _G + "/extend"): CONSUME,
    ("GET", _G + "/dlq"): READ_GROUP,
    ("GET", _G + "/dlq/messages"): READ_GROUP,
    ("POST", _G + "/dlq/redrive"): ADMIN_GROUP,
}


def rule_for(method: str, path: str) -> Rule | None:
    return RULES.get(("GET" if method == "HEAD" else method, path))


def authorize(a: Access, method: str, path: str, match: Mapping[str, str]) -> None:
    """Raise PermissionDenied unless ``a`` may call the route ``method path`` (its route
    template, e.g. ``/api/v1/topics/{topic}``) with these path parameters."""
    rule = rule_for(method, path)
    if rule is None:
        raise PermissionDenied(f"{method} {path} has no permission rule on this server")
    rule.check(a, match)
