"""Which permission each client frame needs (docs/security.md, "Permissions").

One entry per frame type a client may send, checked by the connection before the frame's
handler runs, only on a server with users (an authenticated session). A frame type with a
handler and no entry here is refused (fail closed), and ``tests/server/test_authz.py`` fails
when a new frame type or admin call has no rule.

The operations are ``publish``, ``consume`` and ``admin``; resources are ``topic:NAME`` and
``group:NAME`` (the rules' patterns are matched by the security package's gate):

==========================================  ===============================================
frame                                       needs
==========================================  ===============================================
Publish                                     publish topic
Subscribe                                   consume topic and consume group (and publish on
                                            an explicit ``dead_letter_topic``: dead letters
                                            are written there on the subscriber's behalf)
Credit, Ack, Nack, Extend, Reject           consume on the subscription's topic and group,
                                            checked again on every frame (a revoked right
                                            applies to the next operation)
CloseSubscription, Ping, Pong, Error        nothing (ending one's own subscription, session)
CreateTopic, DeleteTopic, SetPartitions     admin topic
ListTopics                                  nothing; the answer lists only the topics the
                                            user holds any right on
DescribeTopic                               any right on the topic
GroupList                                   consume or admin on the topic
GroupDescribe, DlqList                      admin topic, or consume topic and group
GroupReset, DlqRedrive, Call(create_group,  admin topic and admin group
update_group, delete_group)
==========================================  ===============================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .. import protocol as P
from ..errors import PermissionDenied

__all__ = ["OPS", "CHECKS", "CALL_CHECKS", "authorize", "Authorizable"]

OPS = ("publish", "consume", "admin")


class Authorizable(Protocol):
    """What a check needs of a session (``Connection`` is one)."""

    @property
    def user(self) -> str: ...

    def may(self, op: str, kind: str, name: str) -> bool:
        """Whether the session's user may ``op`` the resource ``kind:name``."""

    def subscription_of(self, sub_id: int) -> tuple[str, str] | None:
        """(topic, group) of this session's subscription ``sub_id``, or None if not open."""


Check = Callable[[Authorizable, Any], None]
CHECKS: dict[type[Any], Check] = {}


def _checks(*types: type[Any]) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        for t in types:
            CHECKS[t] = fn
        return fn
    return register


def authorize(s: Authorizable, frame: Any) -> None:
    """Raise ``PermissionDenied`` unless the session may send ``frame``."""
    check = CHECKS.get(type(frame))
    if check is None:
        raise PermissionDenied(f"{type(frame).__name__} has no permission rule on this server")
    check(s, frame)


def _need(s: Authorizable, op: str, kind: str, name: str) -> None:
    if not s.may(op, kind, name):
        raise PermissionDenied(f"user {s.user!r} may not {op} {kind} {name!r}")


def _need_any(s: Authorizable, ops: tuple[str, ...], kind: str, name: str) -> None:
    if not any(s.may(op, kind, name) for op in ops):
        raise PermissionDenied(
            f"user {s.user!r} holds none of {'/'.join(ops)} on {kind} {name!r}")


def _admin_group(s: Authorizable, topic: str, group: str) -> None:
    _need(s, "admin", "topic", topic)
    _need(s, "admin", "group", group)


@_checks(P.Ping, P.Pong, P.Error, P.CloseSubscription, P.ListTopics)
def _nothing(s: Authorizable, f: Any) -> None:
    pass


@_checks(P.Publish)
def _publish(s: Authorizable, f: P.Publish) -> None:
    _need(s, "publish", "topic", f.topic)


@_checks(P.Subscribe)
def _subscribe(s: Authorizable, f: P.Subscribe) -> None:
    _need(s, "consume", "topic", f.topic)
    _need(s, "consume", "group", f.group)
    dlq = f.settings.get("dead_letter_topic") if f.settings else None
    if isinstance(dlq, str) and dlq:
        _need(s, "publish", "topic", dlq)


@_checks(P.Credit, P.Ack, P.Nack, P.Extend, P.Reject)
def _settle(s: Authorizable, f: Any) -> None:
    opened = s.subscription_of(f.subscription_id)
    if opened is None:
        return  # not open: the handler answers that, and nothing is settled
    topic, group = opened
    _need(s, "consume", "topic", topic)
    _need(s, "consume", "group", group)


@_checks(P.CreateTopic, P.DeleteTopic, P.SetPartitions)
def _topic_admin(s: Authorizable, f: Any) -> None:
    _need(s, "admin", "topic", f.name)


@_checks(P.DescribeTopic)
def _describe_topic(s: Authorizable, f: P.DescribeTopic) -> None:
    _need_any(s, OPS, "topic", f.name)


@_checks(P.GroupList)
def _group_list(s: Authorizable, f: P.GroupList) -> None:
    _need_any(s, ("consume", "admin"), "topic", f.topic)


@_checks(P.GroupDescribe, P.DlqList)
def _group_read(s: Authorizable, f: Any) -> None:
    if s.may("admin", "topic", f.topic):
        return
    _need(s, "consume", "topic", f.topic)
    _need(s, "consume", "group", f.group)


@_checks(P.GroupReset, P.DlqRedrive)
def _group_admin(s: Authorizable, f: Any) -> None:
    _admin_group(s, f.topic, f.group)


def _call_group_admin(s: Authorizable, args: dict[str, Any]) -> None:
    topic, group = args.get("topic"), args.get("group")
    if not isinstance(topic, str) or not isinstance(group, str):
        return  # malformed: the handler refuses it before doing anything
    _admin_group(s, topic, group)


#: Per ``Call`` method; an unknown method is refused by the handler (``Unsupported``).
CALL_CHECKS: dict[str, Callable[[Authorizable, dict[str, Any]], None]] = {
    "create_group": _call_group_admin,
    "update_group": _call_group_admin,
    "delete_group": _call_group_admin,
}


@_checks(P.Call)
def _call(s: Authorizable, f: P.Call) -> None:
    check = CALL_CHECKS.get(f.method)
    if check is not None:
        check(s, f.args)
