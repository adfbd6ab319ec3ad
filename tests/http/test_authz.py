"""Every HTTP route has a permission rule (fail closed), and the rules are the binary
protocol's."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from tidemq.errors import PermissionDenied
from tidemq.http._authz import RULES, authorize
from tidemq.http._routes import ROUTES


def test_every_route_has_a_rule_and_every_rule_a_route() -> None:
    routes = {(r.method, r.path) for r in ROUTES}
    missing = sorted(routes - set(RULES))
    assert not missing, f"routes without a permission rule (add them to http/_authz.py): {missing}"
    stale = sorted(set(RULES) - routes)
    assert not stale, f"rules for routes that do not exist: {stale}"


def test_a_route_without_a_rule_is_refused() -> None:
    with pytest.raises(PermissionDenied, match="no permission rule"):
        authorize(_Grants(set()), "POST", "/api/v1/new-thing", {})


class _Grants:
    def __init__(self, grants: set[tuple[str, str, str]]) -> None:
        self.grants = grants
        self.user = "u"

    def may(self, op: str, kind: str, name: str) -> bool:
        return (op, kind, name) in self.grants


M: Mapping[str, str] = {"topic": "t", "group": "g", "partition": "0", "name": "app.js"}
_T = "/api/v1/topics/{topic}"
_G = _T + "/groups/{group}"


@pytest.mark.parametrize("method, path, enough, not_enough", [
    ("POST", _T + "/messages", [{("publish", "topic", "t")}], [{("consume", "topic", "t")}]),
    ("PUT", _T, [{("admin", "topic", "t")}], [{("publish", "topic", "t")}]),
    ("DELETE", _T, [{("admin", "topic", "t")}], [{("consume", "topic", "t")}]),
    ("GET", _T, [{("publish", "topic", "t")}, {("consume", "topic", "t")}], [set()]),
    ("GET", _T + "/groups", [{("consume", "topic", "t")}, {("admin", "topic", "t")}],
     [{("publish", "topic", "t")}]),
    ("POST", _G + "/receive", [{("consume", "topic", "t"), ("consume", "group", "g")}],
     [{("consume", "topic", "t")}, {("admin", "topic", "t"), ("admin", "group", "g")}]),
    ("POST", _G + "/ack", [{("consume", "topic", "t"), ("consume", "group", "g")}],
     [{("consume", "group", "g")}]),
    ("GET", _G, [{("admin", "topic", "t")}, {("consume", "topic", "t"), ("consume", "group", "g")}],
     [{("consume", "topic", "t")}]),
    ("POST", _G + "/dlq/redrive", [{("admin", "topic", "t"), ("admin", "group", "g")}],
     [{("admin", "topic", "t")}, {("consume", "topic", "t"), ("consume", "group", "g")}]),
    ("PUT", _G, [{("admin", "topic", "t"), ("admin", "group", "g")}], [{("admin", "topic", "t")}]),
])
def test_rules_match_the_binary_protocol(method: str, path: str,
                                         enough: list[set[tuple[str, str, str]]],
                                         not_enough: list[set[tuple[str, str, str]]]) -> None:
    for grants in enough:
        authorize(_Grants(grants), method, path, M)
    for grants in not_enough:
        with pytest.raises(PermissionDenied):
            authorize(_Grants(grants), method, path, M)


def test_public_routes_are_only_probes_and_static_files() -> None:
    public = sorted(path for (method, path), rule in RULES.items() if rule.public)
    assert public == ["/", "/healthz", "/readyz", "/static/{name}"]
