"""``tidemq user|token|acl ...``: edit the users file (docs/security.md).

These commands read and rewrite the file only (atomically, mode 0600); they never talk to a
server. A running server notices the change and reloads it by itself (or at once on SIGHUP):
new rules apply to each session's next request, and sessions of deleted users or revoked
tokens are closed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from ._common import UsageError, positive_float, positive_int
from ._output import json_line, note, table

__all__ = ["register"]

_EPILOG = """\
examples:
  tidemq user add shop                        (asks for the password twice)
  printf '%s\\n' "$PW" | tidemq user add billing --password-stdin
  tidemq user add gw-01 --no-password         (client certificate or token only)
  tidemq token create shop --ttl 86400        (prints the token once)
  tidemq acl grant shop publish topic:orders
  tidemq acl grant billing consume topic:orders
  tidemq acl grant billing consume group:billing
  tidemq acl grant '*' consume 'topic:inbox.{user}'
  tidemq acl deny ops admin 'topic:audit.#'
  tidemq acl list

Every command takes --users FILE (default: $TIDEMQ_USERS). Patterns: words split on '.',
'*' one word, '#' zero or more, {user} the user's own name. Deny wins; no rule: denied.
"""


def _users_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--users", default=None, metavar="FILE",
                   help="the users file (default: $TIDEMQ_USERS); created if missing")
    return p


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    common = [_users_parent()]
    fmt = argparse.RawDescriptionHelpFormatter

    # --- user -------------------------------------------------------------------------------
    p = sub.add_parser("user", help="add, change, delete and list users",
                       description="Manage the users in the users file.", epilog=_EPILOG,
                       formatter_class=fmt)
    us = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = us.add_parser("add", parents=common, help="add a user",
                      description="Add a user with a password (asked twice, or one line read "
                                  "from stdin), or with none (--no-password: the user logs in "
                                  "with a client certificate or a token).",
                      epilog=_EPILOG, formatter_class=fmt)
    a.add_argument("name", metavar="NAME", help="1-128 chars of A-Z a-z 0-9 . _ @ + -")
    _password_args(a)
    a.add_argument("--no-password", action="store_true",
                   help="no password: log in with a client certificate (EXTERNAL) or a token")
    a.set_defaults(func=_user_add)

    pw = us.add_parser("passwd", parents=common, help="change a user's password",
                       description="Set a new password. Open sessions stay open; new logins "
                                   "need the new password.")
    pw.add_argument("name", metavar="NAME")
    _password_args(pw)
    pw.set_defaults(func=_user_passwd)

    d = us.add_parser("del", parents=common, help="delete a user, its tokens and its rules",
                      description="Delete a user with its tokens and rules; its open sessions "
                                  "are closed when the server reloads the file.")
    d.add_argument("name", metavar="NAME")
    d.set_defaults(func=_user_del)

    ls = us.add_parser("list", parents=common, help="list users",
                       description="List users, how they log in, and their tokens and rules.")
    ls.add_argument("--json", action="store_true", help="one JSON object per user")
    ls.set_defaults(func=_user_list)

    # --- token ------------------------------------------------------------------------------
    p = sub.add_parser("token", help="create, revoke and list API tokens",
                       description="Manage API tokens (TOKEN authentication: over TLS or "
                                   "loopback only).", epilog=_EPILOG, formatter_class=fmt)
    ts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = ts.add_parser("create", parents=common, help="create a token for a user",
                      description="Create a token for a user and print it, alone on a line "
                                  "on stdout. It is shown only this once: only its hash is "
                                  "stored.")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--ttl", type=positive_float, default=None, metavar="SECONDS",
                   help="expire after this many seconds (default: never)")
    c.set_defaults(func=_token_create)
    r = ts.add_parser("revoke", parents=common, help="revoke a token",
                      description="Revoke a token; sessions that logged in with it are closed "
                                  "when the server reloads the file.")
    r.add_argument("token_id", metavar="ID", help="the id shown by 'tidemq token list'")
    r.set_defaults(func=_token_revoke)
    tl = ts.add_parser("list", parents=common, help="list tokens (never their secrets)",
                       description="List tokens: id, user, created, expires.")
    tl.add_argument("--json", action="store_true", help="one JSON object per token")
    tl.set_defaults(func=_token_list)

    # --- acl --------------------------------------------------------------------------------
    p = sub.add_parser("acl", help="grant, deny, revoke and list permissions",
                       description="Manage permission rules: OP is publish, consume or admin; "
                                   "RESOURCE is topic:PATTERN or group:PATTERN. Deny wins; "
                                   "without a matching allow, an operation is denied.",
                       epilog=_EPILOG, formatter_class=fmt)
    acl = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, effect, text in (("grant", "allow", "allow NAME to OP on RESOURCE"),
                                 ("deny", "deny", "deny NAME OP on RESOURCE (deny wins)"),
                                 ("revoke", None, "remove NAME's allow and deny rules for OP "
                                                  "on RESOURCE")):
        g = acl.add_parser(action, parents=common, help=text, description=text[0].upper()
                           + text[1:] + ".", epilog=_EPILOG, formatter_class=fmt)
        g.add_argument("name", metavar="NAME", help="a user, or '*' for every user")
        g.add_argument("op", metavar="OP", help="publish, consume or admin")
        g.add_argument("resource", metavar="RESOURCE",
                       help="topic:PATTERN or group:PATTERN, e.g. topic:orders.# ")
        g.set_defaults(func=_acl_revoke if effect is None else _acl_add, effect=effect)
    al = acl.add_parser("list", parents=common, help="list the rules",
                        description="List the permission rules.")
    al.add_argument("--user", default=None, metavar="NAME",
                    help="only the rules that apply to NAME (its own and those for '*')")
    al.add_argument("--json", action="store_true", help="one JSON object per rule")
    al.set_defaults(func=_acl_list)


def _password_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin (for scripts)")
    p.add_argument("--iterations", type=positive_int, default=None, metavar="N",
                   help="PBKDF2 iterations for SCRAM (default 100000, at least 4096)")


# --- helpers ------------------------------------------------------------------------------------


def _path(args: argparse.Namespace) -> str:
    path: str | None = args.users or os.environ.get("TIDEMQ_USERS") or None
    if path is None:
        raise UsageError("no users file: pass --users FILE or set $TIDEMQ_USERS",
                         f"tidemq {args.command} {args.action}")
    return path


def _password(args: argparse.Namespace) -> str:
    from ..errors import InvalidArgument

    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
        if not password:
            raise InvalidArgument("no password on stdin (expected it on the first line)")
        return password
    password = getpass.getpass(f"password for {args.name}: ")
    if not password:
        raise InvalidArgument("the password must not be empty; nothing changed")
    if getpass.getpass("the same password again: ") != password:
        raise InvalidArgument("the two passwords differ; nothing changed")
    return password


def _iterations(args: argparse.Namespace) -> dict[str, int]:
    return {} if args.iterations is None else {"iterations": args.iterations}


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- user -----------------------------------------------------------------------------------


def _user_add(args: argparse.Namespace) -> int:
    from ..errors import InvalidArgument
    from ..security import check_username, load_users, save_users

    path = _path(args)
    check_username(args.name)  # before asking for a password
    if args.no_password and (args.password_stdin or args.iterations is not None):
        raise UsageError("--no-password excludes --password-stdin and --iterations",
                         "tidemq user add")
    db = load_users(path)
    if db.has_user(args.name):
        raise InvalidArgument(f"user {args.name!r} already exists (change its password with "
                              "'tidemq user passwd')")
    password = None if args.no_password else _password(args)
    db.add_user(args.name, password, **_iterations(args))
    save_users(path, db)
    how = "no password: certificate or token only" if password is None else "a password"
    print(f"added user {args.name} ({how}); it may do nothing until granted "
          f"('tidemq acl grant {args.name} OP RESOURCE')")
    return 0


def _user_passwd(args: argparse.Namespace) -> int:
    from ..errors import InvalidArgument
    from ..security import load_users, save_users

    path = _path(args)
    db = load_users(path)
    if not db.has_user(args.name):
        raise InvalidArgument(f"no user {args.name!r} (see 'tidemq user list')")
    db.set_password(args.name, _password(args), **_iterations(args))
    save_users(path, db)
    print(f"changed the password of {args.name}")
    return 0


def _user_del(args: argparse.Namespace) -> int:
    from ..security import load_users, save_users

    path = _path(args)
    db = load_users(path)
    tokens = sum(1 for t in db.tokens() if t.user == args.name)
    rules = sum(1 for r in db.rules() if r.user == args.name)
    db.delete_user(args.name)
    save_users(path, db)
    print(f"deleted user {args.name} with {tokens} token(s) and {rules} rule(s)")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    from ..security import load_users

    db = load_users(_path(args))
    rows = []
    for name in db.users():
        creds = db.credentials(name)
        rows.append({
            "user": name,
            "password": creds is not None,
            "iterations": None if creds is None else creds.iterations,
            "tokens": sum(1 for t in db.tokens() if t.user == name),
            "rules": sum(1 for r in db.rules() if r.user == name),
        })
    if args.json:
        for row in rows:
            json_line(row)
        return 0
    table(("USER", "LOGIN", "TOKENS", "RULES"),
          [(r["user"], "password" if r["password"] else "certificate/token", r["tokens"],
            r["rules"]) for r in rows])
    return 0


# --- token ----------------------------------------------------------------------------------


def _token_create(args: argparse.Namespace) -> int:
    from ..security import load_users, save_users

    path = _path(args)
    db = load_users(path)
    now = time.time()
    token_id, token = db.create_token(args.name, ttl_s=args.ttl, now_s=now)
    save_users(path, db)
    expires = "never expires" if args.ttl is None else f"expires {_when(now + args.ttl)}"
    note(f"created token {token_id} for user {args.name} ({expires}); it is shown only now, "
         "keep it secret")
    print(token)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from ..security import load_users, save_users

    path = _path(args)
    db = load_users(path)
    db.revoke_token(args.token_id)
    save_users(path, db)
    print(f"revoked token {args.token_id}")
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from ..security import load_users

    db = load_users(_path(args))
    now = time.time()
    tokens = db.tokens()
    if args.json:
        for t in tokens:
            json_line({"id": t.token_id, "user": t.user, "created_s": t.created_s,
                       "expires_s": t.expires_s, "expired": t.expired(now)})
        return 0
    table(("ID", "USER", "CREATED", "EXPIRES"),
          [(t.token_id, t.user, _when(t.created_s),
            _when(t.expires_s) + (" (expired)" if t.expired(now) else "")) for t in tokens])
    return 0


# --- acl ------------------------------------------------------------------------------------


def _acl_add(args: argparse.Namespace) -> int:
    from ..security import load_users, save_users

    path = _path(args)
    db = load_users(path)
    added = db.grant(args.effect, args.name, args.op, args.resource)
    if added:
        save_users(path, db)
    rule = f"{args.effect} {args.name} {args.op} {args.resource}"
    print(f"added rule: {rule}" if added else f"rule already present: {rule}")
    return 0


def _acl_revoke(args: argparse.Namespace) -> int:
    from ..errors import InvalidArgument
    from ..security import load_users, save_users

    path = _path(args)
    db = load_users(path)
    removed = db.revoke_rule(args.name, args.op, args.resource)
    if not removed:
        raise InvalidArgument(f"no rule for {args.name} {args.op} {args.resource} "
                              "(see 'tidemq acl list')")
    save_users(path, db)
    print(f"removed {removed} rule(s) for {args.name} {args.op} {args.resource}")
    return 0


def _acl_list(args: argparse.Namespace) -> int:
    from ..security import EVERY_USER, load_users

    db = load_users(_path(args))
    rules = [r for r in db.rules()
             if args.user is None or r.user in (args.user, EVERY_USER)]
    if args.json:
        for r in rules:
            json_line({"effect": r.effect, "user": r.user, "op": r.op, "resource": r.resource})
        return 0
    table(("EFFECT", "USER", "OP", "RESOURCE"),
          [(r.effect, r.user, r.op, r.resource) for r in rules])
    return 0
