"""Security: users, SCRAM passwords, tokens, certificates and per-topic permissions.

Sans-IO (no sockets, no asyncio, time passed in): the server and the HTTP API drive one
:class:`Gate` each, and the ``tidemq user|token|acl`` commands edit the users file through
:class:`UserDB`. Modules:

- ``_scram``: SCRAM-SHA-256 client and server (RFC 5802 / RFC 7677);
- ``_users``: the users file (format in its docstring) and :class:`UserDB`;
- ``_acl``: :class:`Permissions`, the rules compiled (deny wins; no rule: denied);
- ``_gate``: :class:`Gate`, authentication mechanisms, :class:`FailureLimiter`.
"""

from __future__ import annotations

from ._acl import Permissions
from ._gate import FAILURE_DELAY_S, MECHANISMS, AuthExchange, FailureLimiter, Gate, Principal
from ._scram import (
    DEFAULT_ITERATIONS,
    MAX_ITERATIONS,
    MIN_ITERATIONS,
    ScramClient,
    ScramCredentials,
    ScramServer,
    make_credentials,
)
from ._users import (
    EVERY_USER,
    OPS,
    Rule,
    TokenInfo,
    UserDB,
    check_username,
    load_users,
    save_users,
)

__all__ = [
    "AuthExchange",
    "DEFAULT_ITERATIONS",
    "EVERY_USER",
    "FAILURE_DELAY_S",
    "FailureLimiter",
    "Gate",
    "MAX_ITERATIONS",
    "MECHANISMS",
    "MIN_ITERATIONS",
    "OPS",
    "Permissions",
    "Principal",
    "Rule",
    "ScramClient",
    "ScramCredentials",
    "ScramServer",
    "TokenInfo",
    "UserDB",
    "check_username",
    "load_users",
    "make_credentials",
    "save_users",
]
