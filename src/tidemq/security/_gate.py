"""The gate: the one place that decides who a connection is and what it may do.

The TCP server and the HTTP API hold one :class:`Gate` built on the users file. For each
connection the TCP server calls :meth:`Gate.start` with the client's mechanism and first data,
relays the :class:`AuthExchange`'s challenges until it yields a :class:`Principal`, then asks
:meth:`Gate.allows` / :meth:`Gate.check` before every operation and :meth:`Gate.still_valid`
after a reload (a deleted user or a revoked token ends its sessions). The HTTP API has no
session: every request carries its credentials, checked by :meth:`Gate.verify_password`
(HTTP Basic; PBKDF2 on the stored salt, with a cache of recent successes so a request does
not pay it each time) or :meth:`Gate.verify_token` (``Authorization: Bearer``).

Mechanisms (``Hello.auth_mechanism``):

- ``SCRAM-SHA-256``: user and password, two round trips (:mod:`._scram`); the password never
  crosses the wire. Hello carries the client-first message, the challenge is server-first,
  the client's response is client-final, HelloOk carries server-final (``server_data``),
  which the client must verify.
- ``TOKEN``: ``tmq_<id>_<secret>`` in the Hello. A bearer secret, so only over TLS or from
  loopback (on plaintext anyone on the path could copy it).
- ``EXTERNAL``: the verified TLS client certificate names the user (its subject CN or a
  DNS/e-mail SAN, extracted by the server). The Hello may name which of those names to act
  as (an authorization id); otherwise the first name that is a user is taken.

Sans-IO: no sockets, no sleeping, time passed in. Reading the users file is the only I/O. The
gate never sleeps: the server waits :data:`FAILURE_DELAY_S` before answering a failure, and
:class:`FailureLimiter` refuses addresses with too many recent failures.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import os
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

from ..errors import (
    AuthenticationFailed,
    InvalidArgument,
    PermissionDenied,
    TideMQError,
    Unsupported,
)
from ._acl import Permissions
from ._scram import ScramCredentials, ScramServer, salted_password
from ._users import UserDB, load_users, parse_users

__all__ = [
    "MECHANISMS",
    "FAILURE_DELAY_S",
    "Principal",
    "AuthExchange",
    "FailureLimiter",
    "Gate",
    "PasswordCheck",
]

MECHANISMS: Final = ("SCRAM-SHA-256", "TOKEN", "EXTERNAL")
#: How long the server waits before answering a failed login: an online guesser gets few
#: tries per connection-second, and every kind of failure takes as long.
FAILURE_DELAY_S: Final = 0.1

_OFFERED: Final = ", ".join(MECHANISMS)
_MAX_AUTH_DATA: Final = 4096
_PASSWORD_FAILED: Final = "authentication failed: unknown user or wrong password"
_MAX_PASSWORD_BYTES: Final = 1024
#: Successful password checks remembered (user, SHA-256 of the password) -> principal.
_PASSWORD_CACHE_SIZE: Final = 1024


@dataclass(frozen=True)
class Principal:
    """Who a session is: the user, how it logged in, and the token's id for ``TOKEN``."""

    user: str
    mechanism: str
    token_id: str | None = None


class FailureLimiter:
    """Refuses an address that failed to log in ``max_failures`` times within ``window_s``
    (a sliding window) until the oldest of those failures leaves the window.

    IPv6 addresses count per /64 (one host usually owns a whole /64). A success forgets the
    address's failures: a user who mistyped a few times does not carry them into the next
    login. Memory is bounded: at most ``max_addresses`` addresses are remembered, the least
    recently failed one forgotten first. Not thread-safe (the server calls it from its loop).
    """

    def __init__(self, max_failures: int = 10, window_s: float = 60.0,
                 max_addresses: int = 10_000) -> None:
        if max_failures < 1 or not window_s > 0 or max_addresses < 1:
            raise InvalidArgument("FailureLimiter needs max_failures >= 1, window_s > 0 and "
                                  "max_addresses >= 1")
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, addr: str, now_s: float) -> None:
        """Raise AuthenticationFailed when ``addr`` is over the limit now."""
        key = _addr_key(addr)
        times = self._failures.get(key)
        if times is None:
            return
        self._expire(times, now_s)
        if not times:
            del self._failures[key]
            return
        if len(times) >= self.max_failures:
            wait = max(1, math.ceil(times[0] + self.window_s - now_s))
            raise AuthenticationFailed(
                f"too many failed logins from this address; try again in {wait} s")

    def failed(self, addr: str, now_s: float) -> None:
        """Count a failed login from ``addr``."""
        key = _addr_key(addr)
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.max_failures)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
            self._expire(times, now_s)
        times.append(now_s)

    def succeeded(self, addr: str) -> None:
        """A login from ``addr`` succeeded: forget its failures."""
        self._failures.pop(_addr_key(addr), None)

    def __len__(self) -> int:
        """How many addresses are remembered."""
        return len(self._failures)

    def _expire(self, times: deque[float], now_s: float) -> None:
        while times and times[0] <= now_s - self.window_s:
            times.popleft()


def _addr_key(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AuthExchange:
    """One login in progress. Read :attr:`principal`: None means send :attr:`challenge` to the
    client and pass its answer to :meth:`respond`; otherwise the login succeeded, and
    :attr:`server_data` (may be None) goes to the client with HelloOk. Every failure raises
    AuthenticationFailed (or Unsupported for a SCRAM feature we lack) and ends the exchange.
    """

    def __init__(self, gate: Gate, peer_addr: str) -> None:
        self._gate = gate
        self._addr = peer_addr
        self._scram: ScramServer | None = None
        self._ended = False
        self.challenge: bytes | None = None
        self.principal: Principal | None = None
        self.server_data: bytes | None = None

    def respond(self, data: bytes, now_s: float) -> None:
        """The client's answer to :attr:`challenge`."""
        scram = self._scram
        if self._ended or scram is None or self.principal is not None:
            raise AuthenticationFailed("unexpected authentication response: the exchange "
                                       "already ended")
        try:
            final = scram.final(data)
        except TideMQError as exc:
            self._fail(exc, now_s)
        self._done(Principal(user=scram.username, mechanism="SCRAM-SHA-256"), final)

    def _challenge(self, data: bytes) -> None:
        self.challenge = data

    def _done(self, principal: Principal, server_data: bytes | None = None) -> None:
        self._ended = True
        self.challenge = None
        self.principal = principal
        self.server_data = server_data
        self._gate.limiter.succeeded(self._addr)

    def _fail(self, exc: TideMQError, now_s: float) -> NoReturn:
        self._ended = True
        self.challenge = None
        self._gate.limiter.failed(self._addr, now_s)
        if isinstance(exc, AuthenticationFailed | Unsupported):
            raise exc
        raise AuthenticationFailed(exc.message) from exc

class PasswordCheck:
    """One password check in progress (:meth:`Gate.begin_password`), in three steps so that
    the costly part can run off the caller's event loop:

    1. :attr:`principal` is set at once when the check was answered from the gate's cache of
       recent successes (then there is nothing more to do);
    2. otherwise :meth:`derive` computes PBKDF2 over the stored salt and iteration count
       (~40 ms for 100,000 iterations). It touches no gate state: any thread may run it;
    3. :meth:`finish`, back on the gate's thread, compares the keys in constant time, counts
       a failure against the address or caches the success, and returns the principal (or
       raises AuthenticationFailed).

    An unknown user or one without a password gets a fake salt and the default iteration count
    (the SCRAM rule): the same work, the same error as a wrong password.
    """

    def __init__(self, gate: Gate, user: str, password: str, peer_addr: str,
                 creds: ScramCredentials | None, fake: ScramCredentials, known: bool) -> None:
        self._gate = gate
        self._user = user
        self._password = password
        self._addr = peer_addr
        self._creds = creds if creds is not None else fake
        self._known = known and creds is not None
        self._generation = gate.generation
        self._stored_key: bytes | None = None
        self._ended = False
        self.principal: Principal | None = None

    def derive(self) -> None:
        """PBKDF2, ClientKey, StoredKey (RFC 5802): pure computation, thread-safe."""
        creds = self._creds
        salted = salted_password(self._password, creds.salt, creds.iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        self._stored_key = hashlib.sha256(client_key).digest()

    def finish(self, now_s: float) -> Principal:
        """The principal for a right password (cached until the users file changes), else
        AuthenticationFailed (counted against the address by the failure limiter)."""
        if self.principal is not None:
            return self.principal
        if self._ended:
            raise AuthenticationFailed("this password check already ended")
        self._ended = True
        if self._stored_key is None:
            self.derive()
        assert self._stored_key is not None
        good = hmac.compare_digest(self._stored_key, self._creds.stored_key)
        gate = self._gate
        if not (good and self._known):
            gate.limiter.failed(self._addr, now_s)
            raise AuthenticationFailed(_PASSWORD_FAILED)
        gate.limiter.succeeded(self._addr)
        principal = Principal(user=self._user, mechanism="PASSWORD")
        if gate.generation == self._generation:  # a reload meanwhile: do not cache
            gate._remember_password(self._user, self._password, principal)
        self.principal = principal
        return principal


class Gate:
    """The users file, in force: authentication (:meth:`start`) and permissions
    (:meth:`allows`). Loads ``users_path`` now (creating an empty file, mode 0600, if there is
    none; InvalidArgument if it is malformed) and again on :meth:`reload`.

    Not thread-safe for :meth:`start` (the limiter), but :meth:`allows` may run on other threads
    while :meth:`reload` swaps in a new database: readers see the old rules or the new.
    """

    def __init__(self, users_path: str, *, now_s: float,
                 limiter: FailureLimiter | None = None) -> None:
        self.users_path = os.fspath(users_path)
        self.limiter = limiter if limiter is not None else FailureLimiter()
        #: Bumped by every reload that changed the file's content; caches keyed on it are
        #: stale when it moves.
        self.generation = 0
        self._signature: tuple[int, int, int] | None = None
        self._content: bytes | None = None
        load_users(self.users_path)  # creates the file (0600) when it does not exist yet
        self.db: UserDB = UserDB()
        self.permissions = Permissions(())
        self.loaded_s = now_s  # when the users in force were read
        # (user, SHA-256 of the password) -> principal, for the users file of ``_cached_gen``.
        self._passwords: OrderedDict[tuple[str, bytes], Principal] = OrderedDict()
        self._cached_gen = -1
        self.reload(now_s, force=True)

    # --- the users file -----------------------------------------------------------------------

    def reload(self, now_s: float, *, force: bool = False) -> bool:
        """Read the users file again if it changed on disk (its mtime, size or inode), or
        always with ``force``; True when its content changed (and :attr:`generation` moved).
        A missing or malformed file raises InvalidArgument and keeps the users in force."""
        path = self.users_path
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                signature = (st.st_mtime_ns, st.st_size, st.st_ino)
                if signature == self._signature and not force:
                    return False
                data = f.read()
        except FileNotFoundError:
            raise InvalidArgument(
                f"users file {path} is missing; keeping the users loaded before (recreate it "
                "with 'tidemq user add', or restore it)") from None
        except OSError as exc:
            raise InvalidArgument(
                f"cannot read the users file {path}: {exc.strerror or exc}; keeping the users "
                "loaded before") from None
        if data == self._content:
            self._signature = signature
            return False
        db = parse_users(data, path)  # raises before anything is replaced
        if not db.fake_salt_key_stored and self._content is not None:
            db.fake_salt_key = self.db.fake_salt_key  # stay stable for this process
        permissions = Permissions(db.rules())
        self.db, self.permissions = db, permissions
        self._signature, self._content = signature, data
        self.generation += 1
        self.loaded_s = now_s
        return True

    # --- authentication -----------------------------------------------------------------------

    def start(
        self,
        mechanism: str | None,
        data: bytes | None,
        *,
        peer_addr: str,
        loopback: bool,
        tls: bool,
        peer_cert_names: Sequence[str] = (),
        now_s: float,
    ) -> AuthExchange:
        """Begin a login with the Hello's mechanism and data. Returns the exchange (done at once
        for TOKEN and EXTERNAL); AuthenticationFailed for a refusal. Addresses with too many
        recent failures are refused before anything else is looked at."""
        self.limiter.check(peer_addr, now_s)
        exchange = AuthExchange(self, peer_addr)
        try:
            self._start(exchange, mechanism, data, loopback=loopback, tls=tls,
                        peer_cert_names=peer_cert_names, now_s=now_s)
        except TideMQError as exc:
            exchange._fail(exc, now_s)
        return exchange

    def _start(self, exchange: AuthExchange, mechanism: str | None, data: bytes | None, *,
               loopback: bool, tls: bool, peer_cert_names: Sequence[str], now_s: float) -> None:
        if mechanism is None:
            raise AuthenticationFailed(f"authentication required; mechanisms: {_OFFERED}")
        if data is not None and len(data) > _MAX_AUTH_DATA:
            raise AuthenticationFailed(
                f"authentication data of {len(data)} bytes is too large "
                f"(at most {_MAX_AUTH_DATA})")
        db = self.db
        if mechanism == "SCRAM-SHA-256":
            if not data:
                raise AuthenticationFailed(
                    "SCRAM-SHA-256 needs the client-first message in the Hello's auth data")
            scram = ScramServer(db.credentials, fake_secret=db.fake_salt_key)
            exchange._scram = scram
            exchange._challenge(scram.first(data))
        elif mechanism == "TOKEN":
            if not (tls or loopback):
                raise AuthenticationFailed(
                    "TOKEN authentication needs TLS or a loopback connection (a token sent "
                    "in plain text can be copied by anyone on the path)")
            info = db.verify_token(_utf8(data, "token"), now_s=now_s)
            if info is None:
                raise AuthenticationFailed(
                    "authentication failed: unknown, revoked or expired token")
            exchange._done(Principal(user=info.user, mechanism="TOKEN",
                                     token_id=info.token_id))
        elif mechanism == "EXTERNAL":
            exchange._done(Principal(user=self._external_user(db, data, tls, peer_cert_names),
                                     mechanism="EXTERNAL"))
        else:
            raise AuthenticationFailed(
                f"unknown authentication mechanism {mechanism[:40]!r}; this server offers "
                f"{_OFFERED}")

    @staticmethod
    def _external_user(db: UserDB, data: bytes | None, tls: bool,
                       names: Sequence[str]) -> str:
        if not tls or not names:
            raise AuthenticationFailed(
                "EXTERNAL authentication needs TLS with a verified client certificate "
                "(the server must be started with a client CA, and the client present a "
                "certificate)")
        wanted = _utf8(data, "authorization id") if data else ""
        if wanted:
            if wanted not in names:
                raise AuthenticationFailed(
                    f"the client certificate does not name {wanted[:130]!r}; it names "
                    f"{', '.join(repr(n) for n in names[:5])}")
            if not db.has_user(wanted):
                raise AuthenticationFailed(
                    f"authentication failed: no user {wanted[:130]!r} for this certificate")
            return wanted
        for name in names:
            if db.has_user(name):
                return name
        raise AuthenticationFailed(
            "authentication failed: no user matches the client certificate's names "
            f"({', '.join(repr(n) for n in names[:5])}); add one with 'tidemq user add NAME'")

    # --- per-request credentials (HTTP) -------------------------------------------------------

    def begin_password(self, user: str, password: str, *, peer_addr: str,
                       now_s: float) -> PasswordCheck:
        """Start checking ``user``'s ``password`` (HTTP Basic). The answer is immediate
        (:attr:`PasswordCheck.principal` set) when the same user and password succeeded since
        the users file last changed; else run :meth:`PasswordCheck.derive` (anywhere) and
        :meth:`PasswordCheck.finish` (here). AuthenticationFailed at once for an address over
        the failure limit or input that cannot be a password."""
        self.limiter.check(peer_addr, now_s)
        if (not isinstance(user, str) or not isinstance(password, str)
                or len(user) > _MAX_PASSWORD_BYTES or len(password) > _MAX_PASSWORD_BYTES):
            self.limiter.failed(peer_addr, now_s)
            raise AuthenticationFailed(_PASSWORD_FAILED)
        db = self.db
        cached = self._cached_password(user, password)
        creds = db.credentials(user)
        # An unknown user is checked against fake keys, as SCRAM answers it (same rule).
        fake = ScramServer(db.credentials, fake_secret=db.fake_salt_key)._fake(user)
        check = PasswordCheck(self, user, password, peer_addr, creds, fake,
                              known=db.has_user(user))
        if cached is not None:
            self.limiter.succeeded(peer_addr)
            check.principal = cached
        return check

    def verify_password(self, user: str, password: str, *, peer_addr: str,
                        now_s: float) -> Principal:
        """Check ``user``'s ``password`` against the stored SCRAM keys (PBKDF2 with the stored
        salt and iterations -> ClientKey -> StoredKey, compared in constant time) on this
        thread: :meth:`begin_password`, ``derive``, ``finish``. An unknown user and a wrong
        password fail alike (AuthenticationFailed, the same message and work) and count
        against ``peer_addr`` in the failure limiter. A success is cached until the users
        file changes (:attr:`generation`), so a repeated request costs a hash, not PBKDF2."""
        check = self.begin_password(user, password, peer_addr=peer_addr, now_s=now_s)
        if check.principal is not None:
            return check.principal
        check.derive()
        return check.finish(now_s)

    def verify_token(self, token: str, *, peer_addr: str, loopback: bool, tls: bool,
                     now_s: float) -> Principal:
        """The principal of a bearer ``token`` (``Authorization: Bearer``), with the rules of
        the ``TOKEN`` mechanism: only over TLS or from loopback, unknown, revoked and expired
        tokens refused alike, failures counted against ``peer_addr``."""
        data = token.encode("utf-8", "replace") if isinstance(token, str) else b""
        exchange = self.start("TOKEN", data, peer_addr=peer_addr, loopback=loopback, tls=tls,
                              now_s=now_s)
        assert exchange.principal is not None
        return exchange.principal

    def _cached_password(self, user: str, password: str) -> Principal | None:
        if self._cached_gen != self.generation:
            self._passwords.clear()
            self._cached_gen = self.generation
            return None
        key = (user, hashlib.sha256(password.encode("utf-8", "replace")).digest())
        hit = self._passwords.get(key)
        if hit is not None:
            self._passwords.move_to_end(key)
        return hit

    def _remember_password(self, user: str, password: str, principal: Principal) -> None:
        if self._cached_gen != self.generation:
            self._passwords.clear()
            self._cached_gen = self.generation
        key = (user, hashlib.sha256(password.encode("utf-8", "replace")).digest())
        self._passwords[key] = principal
        self._passwords.move_to_end(key)
        while len(self._passwords) > _PASSWORD_CACHE_SIZE:
            self._passwords.popitem(last=False)

    def still_valid(self, principal: Principal, now_s: float) -> bool:
        """Whether a session may go on: its user exists and, for a token login, the token is
        neither revoked nor expired. (A changed password does not end sessions.)"""
        db = self.db
        if not db.has_user(principal.user):
            return False
        if principal.token_id is not None:
            info = db.token(principal.token_id)
            return info is not None and info.user == principal.user and not info.expired(now_s)
        return True

    # --- permissions --------------------------------------------------------------------------

    def allows(self, principal: Principal, op: str, kind: str, name: str) -> bool:
        """Whether the principal may ``op`` (publish, consume, admin) the ``kind`` (topic,
        group) ``name`` under the rules in force (:mod:`._acl`)."""
        return self.permissions.allows(principal.user, op, kind, name)

    def check(self, principal: Principal, op: str, kind: str, name: str) -> None:
        """:meth:`allows`, or PermissionDenied naming the user, operation and resource."""
        if not self.permissions.allows(principal.user, op, kind, name):
            raise PermissionDenied(f"user {principal.user!r} may not {op} {kind} {name!r}")


def _utf8(data: bytes | None, what: str) -> str:
    if not data:
        raise AuthenticationFailed(f"the Hello carries no {what}")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationFailed(f"the {what} is not UTF-8") from None
