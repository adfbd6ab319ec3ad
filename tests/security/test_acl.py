"""Permissions: deny wins, no rule denies, ``*`` users, ``{user}``, patterns, and speed."""

from __future__ import annotations

import time

import pytest

from tidemq.errors import InvalidArgument
from tidemq.security import Permissions, UserDB
from tidemq.security._users import Rule


def perms(*rules: str) -> Permissions:
    """``perms("allow shop publish topic:orders", ...)``."""
    return Permissions(Rule(*r.split()) for r in rules)


def test_no_rule_denies() -> None:
    p = perms()
    assert not p.allows("anyone", "publish", "topic", "orders")
    p = perms("allow shop publish topic:orders")
    assert not p.allows("shop", "consume", "topic", "orders")  # other op
    assert not p.allows("shop", "publish", "group", "orders")  # other kind
    assert not p.allows("shop", "publish", "topic", "orders2")  # other name
    assert not p.allows("other", "publish", "topic", "orders")  # other user


def test_shop_may_only_publish_orders() -> None:
    p = perms("allow shop publish topic:orders")
    assert p.allows("shop", "publish", "topic", "orders")
    assert not p.allows("shop", "publish", "topic", "payments")
    assert not p.allows("shop", "consume", "topic", "orders")
    assert not p.allows("shop", "admin", "topic", "orders")


def test_billing_consumes_orders_as_group_billing_only() -> None:
    p = perms("allow billing consume topic:orders", "allow billing consume group:billing")
    assert p.allows("billing", "consume", "topic", "orders")
    assert p.allows("billing", "consume", "group", "billing")
    assert not p.allows("billing", "consume", "group", "analytics")
    assert not p.allows("billing", "consume", "topic", "payments")
    assert not p.allows("billing", "publish", "topic", "orders")


def test_deny_wins_whatever_the_order() -> None:
    for rules in (("allow ops admin topic:#", "deny ops admin topic:audit.#"),
                  ("deny ops admin topic:audit.#", "allow ops admin topic:#")):
        p = perms(*rules)
        assert p.allows("ops", "admin", "topic", "orders")
        assert not p.allows("ops", "admin", "topic", "audit")
        assert not p.allows("ops", "admin", "topic", "audit.2026")
    p = perms("allow ops admin topic:x", "deny * admin topic:x")
    assert not p.allows("ops", "admin", "topic", "x")  # a deny for everyone beats a user allow
    p = perms("allow * admin topic:x", "deny ops admin topic:x")
    assert not p.allows("ops", "admin", "topic", "x")
    assert p.allows("dev", "admin", "topic", "x")


def test_every_user_rules() -> None:
    p = perms("allow * consume topic:public.#")
    assert p.allows("a", "consume", "topic", "public.news")
    assert p.allows("b", "consume", "topic", "public")
    assert not p.allows("b", "consume", "topic", "private")


def test_user_placeholder_expands_to_the_name() -> None:
    p = perms("allow * consume topic:inbox.{user}", "allow * consume group:{user}.#",
              "allow bob publish topic:{user}-out")
    assert p.allows("alice", "consume", "topic", "inbox.alice")
    assert not p.allows("alice", "consume", "topic", "inbox.bob")
    assert p.allows("alice", "consume", "group", "alice")
    assert p.allows("alice", "consume", "group", "alice.workers")
    assert not p.allows("alice", "consume", "group", "bob.workers")
    assert p.allows("bob", "publish", "topic", "bob-out")
    # A dotted name is several words, matched literally.
    assert p.allows("gw.eu", "consume", "topic", "inbox.gw.eu")
    assert not p.allows("gw.eu", "consume", "topic", "inbox.gw.us")


def test_placeholder_cannot_be_abused_by_an_invalid_name() -> None:
    """A name with wildcards (never a real user) must not turn {user} into a wildcard."""
    p = perms("allow * consume topic:inbox.{user}")
    assert not p.allows("#", "consume", "topic", "inbox.alice")
    assert not p.allows("*", "consume", "topic", "inbox.alice")


def test_star_and_hash_patterns() -> None:
    p = perms("allow u publish topic:orders.*", "allow u consume topic:logs.#.error")
    assert p.allows("u", "publish", "topic", "orders.eu")
    assert not p.allows("u", "publish", "topic", "orders")
    assert not p.allows("u", "publish", "topic", "orders.eu.x")
    assert p.allows("u", "consume", "topic", "logs.error")
    assert p.allows("u", "consume", "topic", "logs.a.b.error")
    assert not p.allows("u", "consume", "topic", "logs.a.warn")


def test_unknown_op_or_kind_is_a_bug_not_a_denial() -> None:
    p = perms("allow u publish topic:x")
    with pytest.raises(InvalidArgument, match="operation"):
        p.allows("u", "write", "topic", "x")
    with pytest.raises(InvalidArgument, match="kind"):
        p.allows("u", "publish", "queue", "x")


def test_built_from_userdb_rules() -> None:
    db = UserDB()
    db.add_user("shop", None)
    db.grant("allow", "shop", "publish", "topic:orders")
    assert Permissions(db.rules()).allows("shop", "publish", "topic", "orders")


def test_cached_check_is_fast() -> None:
    rules = [f"allow u{i} publish topic:t{i}.#" for i in range(200)]
    p = perms(*rules, "allow * consume topic:inbox.{user}", "deny u7 publish topic:t7.secret")
    assert p.allows("u7", "publish", "topic", "t7.a")
    n = 100_000
    start = time.perf_counter()
    for _ in range(n):
        p.allows("u7", "publish", "topic", "t7.a")
    per_call = (time.perf_counter() - start) / n
    assert per_call < 5e-6, f"{per_call * 1e6:.2f} us per cached check"  # ~0.2 us here
