"""The users file: users, their SCRAM keys, API tokens and permission rules.

One JSON file, written only by ``tidemq user|token|acl ...`` (or by hand), read by the server,
which reloads it when it changes. It holds no password and no token: only SCRAM's
``StoredKey``/``ServerKey`` and the SHA-256 of each token's secret. It is still sensitive (the
keys allow an offline dictionary attack and ``ServerKey`` lets one impersonate the server), so
it is always written with mode 0600. Format, version 1::

    {
      "version": 1,
      "fake_salt_key": "<base64, 32 bytes>",
      "users": {
        "shop":  {"scram_sha_256": {"salt": "<base64>", "iterations": 100000,
                                    "stored_key": "<base64>", "server_key": "<base64>"}},
        "gw-01": {"scram_sha_256": null}
      },
      "tokens": {
        "3f9a1c2b7d4e": {"user": "shop", "sha256": "<hex of SHA-256(secret)>",
                         "created_s": 1767225600.0, "expires_s": null}
      },
      "rules": [
        {"effect": "allow", "user": "shop", "op": "publish", "resource": "topic:orders"},
        {"effect": "deny", "user": "*", "op": "admin", "resource": "topic:#"}
      ]
    }

- ``users``: name -> SCRAM credentials, or ``null`` for a user without a password (it logs in
  with a client certificate, EXTERNAL, or a token). Names are 1-128 characters of
  ``[A-Za-z0-9._@+-]`` (:func:`check_username`); ``*`` is reserved for rules about every user.
- ``tokens``: id -> owner, hash, creation and expiry (epoch seconds; ``null``: never). The
  token a client presents is ``tmq_<id>_<secret>``; only ``sha256(secret)`` is stored, so the
  token is shown once, when created.
- ``rules``: ``effect`` allow|deny, ``user`` a name or ``*``, ``op`` publish|consume|admin,
  ``resource`` ``topic:PATTERN`` or ``group:PATTERN``: a routing-key pattern (``*`` one word,
  ``#`` zero or more, words split on ``.``) in which ``{user}`` stands for the user's name.
  See :mod:`tidemq.security._acl` for how they combine (deny wins; no rule: denied).
- ``fake_salt_key``: the secret from which SCRAM answers an unknown user with a stable fake
  salt, so probing cannot tell which users exist (made when the file is created; a file
  without one gets a random key per server start).

Two CLI runs editing the file at the very same moment may lose one of the edits (last rename
wins); the file itself is never torn: it is replaced atomically.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

from ..broker._matcher import check_pattern
from ..errors import InvalidArgument
from ..storage._atomic import atomic_write
from ._scram import DEFAULT_ITERATIONS, ScramCredentials, make_credentials

__all__ = [
    "VERSION",
    "OPS",
    "KINDS",
    "EFFECTS",
    "EVERY_USER",
    "TOKEN_PREFIX",
    "USER_PLACEHOLDER",
    "Rule",
    "TokenInfo",
    "UserDB",
    "check_username",
    "is_username",
    "check_rule",
    "load_users",
    "save_users",
    "parse_users",
    "dump_users",
]

VERSION: Final = 1
OPS: Final = ("publish", "consume", "admin")
KINDS: Final = ("topic", "group")
EFFECTS: Final = ("allow", "deny")
EVERY_USER: Final = "*"
TOKEN_PREFIX: Final = "tmq_"
USER_PLACEHOLDER: Final = "{user}"

_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
_TOKEN_ID_BYTES: Final = 6  # 12 hex characters: ids only need to be unique, not secret
_TOKEN_SECRET_BYTES: Final = 32  # 256 bits: no online or offline guessing
_FAKE_KEY_BYTES: Final = 32


def is_username(name: object) -> bool:
    """Whether ``name`` is a valid user name (see :func:`check_username`)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_username(name: object) -> str:
    """Return ``name`` if it is a valid user name, else raise InvalidArgument naming the rule:
    1-128 characters of letters, digits and ``. _ @ + -`` (so names fit in a certificate's CN or
    e-mail SAN, a ``{user}`` pattern word, and a shell argument without quoting)."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    shown = name[:60] if isinstance(name, str) else name
    raise InvalidArgument(
        f"user name {shown!r} is invalid: use 1-128 characters of letters, digits and "
        "'. _ @ + -' ('*' is reserved for rules that apply to every user)")


def check_rule(effect: str, user: str, op: str, resource: str) -> Rule:
    """The :class:`Rule` for these values, or InvalidArgument saying which one is wrong."""
    if effect not in EFFECTS:
        raise InvalidArgument(f"rule effect must be allow or deny, got {effect!r}")
    if user != EVERY_USER:
        check_username(user)
    if op not in OPS:
        raise InvalidArgument(
            f"operation must be one of {', '.join(OPS)}, got {op!r}")
    kind, sep, pattern = resource.partition(":") if isinstance(resource, str) else ("", "", "")
    if not sep or kind not in KINDS or not pattern:
        raise InvalidArgument(
            f"resource must be topic:PATTERN or group:PATTERN (e.g. topic:orders, "
            f"topic:orders.#, group:billing), got {resource!r}")
    rest = pattern.replace(USER_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise InvalidArgument(
            f"resource {resource!r}: the only placeholder is {USER_PLACEHOLDER} (the user's name)")
    try:
        # A sample name stands for {user}: every valid user name is one or more plain words.
        check_pattern(pattern.replace(USER_PLACEHOLDER, "user"))
    except InvalidArgument as exc:
        raise InvalidArgument(f"resource {resource!r}: {exc.message}") from None
    return Rule(effect=effect, user=user, op=op, resource=resource)


@dataclass(frozen=True, slots=True)
class Rule:
    """One permission rule; ``resource`` is ``topic:PATTERN`` or ``group:PATTERN``."""

    effect: str
    user: str
    op: str
    resource: str

    @property
    def kind(self) -> str:
        """``topic`` or ``group``."""
        return self.resource.partition(":")[0]

    @property
    def pattern(self) -> str:
        """The pattern, ``{user}`` not yet replaced."""
        return self.resource.partition(":")[2]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as listed: never its secret (which is not stored)."""

    token_id: str
    user: str
    created_s: float
    expires_s: float | None

    def expired(self, now_s: float) -> bool:
        return self.expires_s is not None and now_s >= self.expires_s


# The hash compared when a token names no stored id, so that path costs the same.
_DUMMY_HASH: Final = hashlib.sha256(b"no such token").digest()


class UserDB:
    """The users file's content, in memory: plain data plus methods that keep it valid.

    Not thread-safe for writers (the CLI is the writer); the server never modifies it and
    swaps a whole new one in on reload. Every method that takes input validates it and raises
    InvalidArgument with what is wrong.
    """

    def __init__(self, *, fake_salt_key: bytes | None = None) -> None:
        self._users: dict[str, ScramCredentials | None] = {}
        self._tokens: dict[str, tuple[TokenInfo, bytes]] = {}
        self._rules: list[Rule] = []
        #: Keys the fake SCRAM salts of unknown users (see the module docstring).
        self.fake_salt_key: bytes = (fake_salt_key if fake_salt_key is not None
                                     else secrets.token_bytes(_FAKE_KEY_BYTES))
        #: False when the key was made up at load because the file had none.
        self.fake_salt_key_stored = fake_salt_key is not None

    # --- users ----------------------------------------------------------------------------

    def add_user(self, name: str, password: str | None, *,
                 iterations: int = DEFAULT_ITERATIONS) -> None:
        """Add a user; ``password=None`` makes a user that logs in only with a client
        certificate or a token. InvalidArgument if the name is taken or invalid."""
        check_username(name)
        if name in self._users:
            raise InvalidArgument(
                f"user {name!r} already exists (change its password with 'tidemq user passwd')")
        self._users[name] = _credentials(password, iterations)

    def set_password(self, name: str, password: str | None, *,
                     iterations: int = DEFAULT_ITERATIONS) -> None:
        """Replace the user's password (None: remove it; certificate or token only). Open
        sessions stay open; new logins need the new password."""
        self._need_user(name)
        self._users[name] = _credentials(password, iterations)

    def delete_user(self, name: str) -> None:
        """Remove the user with its tokens and rules (rules for ``*`` stay)."""
        self._need_user(name)
        del self._users[name]
        self._tokens = {k: v for k, v in self._tokens.items() if v[0].user != name}
        self._rules = [r for r in self._rules if r.user != name]

    def users(self) -> list[str]:
        """The user names, sorted."""
        return sorted(self._users)

    def has_user(self, name: str) -> bool:
        return name in self._users

    def credentials(self, name: str) -> ScramCredentials | None:
        """The user's SCRAM credentials; None for an unknown user or one without a password."""
        return self._users.get(name)

    def _need_user(self, name: str) -> None:
        if name not in self._users:
            raise InvalidArgument(f"no user {name!r} (see 'tidemq user list')")

    # --- tokens ---------------------------------------------------------------------------

    def create_token(self, user: str, *, ttl_s: float | None, now_s: float) -> tuple[str, str]:
        """A new token for ``user``: ``(token_id, token)``. The token (``tmq_<id>_<secret>``)
        is returned only here; only the SHA-256 of its secret is kept. ``ttl_s=None``: it
        never expires."""
        self._need_user(user)
        if ttl_s is not None and not (ttl_s > 0 and ttl_s != float("inf")):
            raise InvalidArgument(f"token lifetime must be a positive number of seconds, got {ttl_s!r}")
        token_id = secrets.token_hex(_TOKEN_ID_BYTES)
        while token_id in self._tokens:  # 48 random bits: practically never taken
            token_id = secrets.token_hex(_TOKEN_ID_BYTES)
        secret = secrets.token_urlsafe(_TOKEN_SECRET_BYTES)
        info = TokenInfo(token_id=token_id, user=user, created_s=float(now_s),
                         expires_s=None if ttl_s is None else float(now_s) + float(ttl_s))
        self._tokens[token_id] = (info, hashlib.sha256(secret.encode("ascii")).digest())
        return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def revoke_token(self, token_id: str) -> None:
        """Remove the token; sessions opened with it end when the server reloads the file."""
        if token_id not in self._tokens:
            raise InvalidArgument(f"no token {token_id!r} (see 'tidemq token list')")
        del self._tokens[token_id]

    def tokens(self) -> list[TokenInfo]:
        """Every token (expired ones too), oldest first."""
        return sorted((v[0] for v in self._tokens.values()),
                      key=lambda t: (t.created_s, t.token_id))

    def token(self, token_id: str) -> TokenInfo | None:
        """The token ``token_id``, or None."""
        entry = self._tokens.get(token_id)
        return None if entry is None else entry[0]

    def verify_token(self, token: str, *, now_s: float) -> TokenInfo | None:
        """The token's info if ``token`` is a current token of an existing user, else None
        (malformed, unknown, wrong secret, expired, or its user deleted). The secret is
        compared in constant time."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 256:
            return None
        token_id, sep, secret = token[len(TOKEN_PREFIX):].partition("_")
        if not sep or not secret:
            return None
        try:
            digest = hashlib.sha256(secret.encode("ascii")).digest()
        except UnicodeEncodeError:
            return None
        entry = self._tokens.get(token_id)
        good = hmac.compare_digest(digest, entry[1] if entry is not None else _DUMMY_HASH)
        if entry is None or not good:
            return None
        info = entry[0]
        if info.expired(now_s) or info.user not in self._users:
            return None
        return info

    # --- rules ----------------------------------------------------------------------------

    def grant(self, effect: str, user: str, op: str, resource: str) -> bool:
        """Add the rule (``effect`` allow or deny); False if it was already there. The user
        must exist (or be ``*``): a rule for a misspelt name would silently do nothing."""
        rule = check_rule(effect, user, op, resource)
        if user != EVERY_USER:
            self._need_user(user)
        if rule in self._rules:
            return False
        self._rules.append(rule)
        return True

    def revoke_rule(self, user: str, op: str, resource: str) -> int:
        """Remove the allow and the deny rule for ``(user, op, resource)``; how many went."""
        before = len(self._rules)
        self._rules = [r for r in self._rules
                       if not (r.user == user and r.op == op and r.resource == resource)]
        return before - len(self._rules)

    def rules(self) -> list[Rule]:
        """The rules in the order they were added (order does not change their meaning)."""
        return list(self._rules)

    # --- serialisation --------------------------------------------------------------------

    def to_json_obj(self) -> dict[str, Any]:
        """The file's JSON object (see the module docstring)."""
        users: dict[str, Any] = {}
        for name in sorted(self._users):
            c = self._users[name]
            users[name] = {"scram_sha_256": None if c is None else {
                "salt": _b64(c.salt), "iterations": c.iterations,
                "stored_key": _b64(c.stored_key), "server_key": _b64(c.server_key)}}
        tokens = {info.token_id: {"user": info.user, "sha256": digest.hex(),
                                  "created_s": info.created_s, "expires_s": info.expires_s}
                  for info, digest in sorted(self._tokens.values(), key=lambda e: e[0].token_id)}
        return {"version": VERSION, "fake_salt_key": _b64(self.fake_salt_key), "users": users,
                "tokens": tokens,
                "rules": [{"effect": r.effect, "user": r.user, "op": r.op,
                           "resource": r.resource} for r in self._rules]}

    @classmethod
    def from_json_obj(cls, obj: object) -> UserDB:
        """Parse the file's JSON object; InvalidArgument saying what is wrong (without the
        file name: :func:`parse_users` adds it)."""
        if not isinstance(obj, dict):
            raise InvalidArgument("expected a JSON object")
        if obj.get("version") != VERSION:
            raise InvalidArgument(
                f"unsupported version {obj.get('version')!r} (this TideMQ reads version {VERSION})")
        key = obj.get("fake_salt_key")
        db = cls(fake_salt_key=None if key is None else _unb64(key, "fake_salt_key"))
        for name, entry in _dict(obj.get("users", {}), "users").items():
            check_username(name)
            entry = _dict(entry, f"users.{name}")
            db._users[name] = _parse_creds(entry.get("scram_sha_256"), name)
        for token_id, entry in _dict(obj.get("tokens", {}), "tokens").items():
            entry = _dict(entry, f"tokens.{token_id}")
            if not token_id or "_" in token_id:
                raise InvalidArgument(f"token id {token_id!r} must be non-empty, without '_'")
            user = check_username(entry.get("user"))
            try:
                digest = bytes.fromhex(_str(entry.get("sha256"), f"tokens.{token_id}.sha256"))
            except ValueError:
                raise InvalidArgument(f"tokens.{token_id}.sha256 is not hex") from None
            if len(digest) != 32:
                raise InvalidArgument(f"tokens.{token_id}.sha256 must be 32 bytes of hex")
            created = _num(entry.get("created_s"), f"tokens.{token_id}.created_s")
            expires = entry.get("expires_s")
            db._tokens[token_id] = (TokenInfo(
                token_id=token_id, user=user, created_s=created,
                expires_s=None if expires is None else _num(expires, f"tokens.{token_id}.expires_s"),
            ), digest)
        rules = obj.get("rules", [])
        if not isinstance(rules, list):
            raise InvalidArgument("rules must be a list")
        for i, entry in enumerate(rules):
            entry = _dict(entry, f"rules[{i}]")
            try:
                rule = check_rule(*(_str(entry.get(k), f"rules[{i}].{k}")
                                    for k in ("effect", "user", "op", "resource")))
            except InvalidArgument as exc:
                raise InvalidArgument(f"rules[{i}]: {exc.message}") from None
            if rule not in db._rules:
                db._rules.append(rule)
        return db


def _credentials(password: str | None, iterations: int) -> ScramCredentials | None:
    if password is None:
        return None
    if not isinstance(password, str) or not password:
        raise InvalidArgument("the password must not be empty (omit it for a user that logs "
                              "in with a client certificate or a token)")
    return make_credentials(password, iterations=iterations)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, where: str) -> bytes:
    try:
        out = base64.b64decode(_str(value, where).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidArgument(f"{where} is not valid base64") from None
    if not out:
        raise InvalidArgument(f"{where} must not be empty")
    return out


def _dict(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be a JSON object")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{where} must be a string")
    return value


def _num(value: object, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidArgument(f"{where} must be a number")
    return float(value)


def _parse_creds(value: object, name: str) -> ScramCredentials | None:
    if value is None:
        return None
    where = f"users.{name}.scram_sha_256"
    entry = _dict(value, where)
    iterations = entry.get("iterations")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise InvalidArgument(f"{where}.iterations must be a positive whole number")
    creds = ScramCredentials(salt=_unb64(entry.get("salt"), f"{where}.salt"),
                             iterations=iterations,
                             stored_key=_unb64(entry.get("stored_key"), f"{where}.stored_key"),
                             server_key=_unb64(entry.get("server_key"), f"{where}.server_key"))
    if len(creds.stored_key) != 32 or len(creds.server_key) != 32:
        raise InvalidArgument(f"{where}: stored_key and server_key must be 32 bytes")
    return creds


# --- the file ---------------------------------------------------------------------------------


def dump_users(db: UserDB) -> bytes:
    """The file's bytes for ``db`` (stable: sorted, indented, newline at the end)."""
    return (json.dumps(db.to_json_obj(), indent=2) + "\n").encode("utf-8")


def parse_users(data: bytes, source: str) -> UserDB:
    """Parse a users file's bytes; InvalidArgument naming ``source`` and what is wrong."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"users file {source} is not valid JSON: {exc}") from None
    try:
        return UserDB.from_json_obj(obj)
    except InvalidArgument as exc:
        raise InvalidArgument(f"users file {source}: {exc.message}") from None


def load_users(path: str | os.PathLike[str]) -> UserDB:
    """Read the users file; a missing file is created empty (mode 0600) and returned as an
    empty database. InvalidArgument naming the file when it cannot be read or is malformed."""
    target = os.fspath(path)
    try:
        with open(target, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        db = UserDB()
        save_users(target, db)
        return db
    except OSError as exc:
        raise InvalidArgument(f"cannot read the users file {target}: {exc.strerror or exc}") from None
    return parse_users(data, target)


def save_users(path: str | os.PathLike[str], db: UserDB) -> None:
    """Replace the users file with ``db`` atomically, mode 0600 (temp file, fsync, rename,
    fsync the folder). InvalidArgument naming the file when it cannot be written."""
    target = os.fspath(path)
    try:
        write_private(target, dump_users(db))
    except OSError as exc:
        raise InvalidArgument(
            f"cannot write the users file {target}: {exc.strerror or exc}") from None


def write_private(target: str, data: bytes) -> None:
    """Replace ``target`` atomically and durably with a file of mode 0600 (a file of keys is
    never readable by others). Raises OSError."""
    atomic_write(target, data, mode=0o600)


