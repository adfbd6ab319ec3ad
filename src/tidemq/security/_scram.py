"""SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash), both sides, sans-IO.

Why SCRAM: the password never crosses the wire (not even inside TLS), the server stores only
``StoredKey``/``ServerKey`` (a stolen users file does not log anyone in over SCRAM without an
offline dictionary attack against PBKDF2), and the client checks the server's signature, so a
server that does not hold the user's keys cannot pretend the login succeeded.

The exchange (``C:`` client, ``S:`` server; RFC 7677 §3)::

    C: n,,n=user,r=<client nonce>                                    client-first
    S: r=<client nonce><server nonce>,s=<salt b64>,i=4096            server-first
    C: c=biws,r=<both nonces>,p=<ClientProof b64>                    client-final
    S: v=<ServerSignature b64>                                       server-final

    SaltedPassword  = PBKDF2-HMAC-SHA-256(Normalize(password), salt, i)
    ClientKey       = HMAC(SaltedPassword, "Client Key");  StoredKey = SHA-256(ClientKey)
    ServerKey       = HMAC(SaltedPassword, "Server Key")
    AuthMessage     = client-first-bare + "," + server-first + "," + client-final-without-proof
    ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
    ServerSignature = HMAC(ServerKey, AuthMessage)

Decisions:

- **No channel binding.** The GS2 header is ``n,,`` (the client does not support it) or
  ``y,,`` (it does but believes the server does not: true, we never offer ``-PLUS``, so the RFC
  says to accept it). ``p=...`` asks for binding: :class:`~tidemq.errors.Unsupported`. An
  authorization identity (``n,a=NAME,``) is accepted only when it names the user itself.
- **Normalisation approximates SASLprep** (RFC 4013) with ``unicodedata.normalize("NFKC")``:
  SASLprep is NFKC plus mapping a few characters to nothing/space and prohibiting control and
  unassigned code points. Every ASCII password, and every password that is the same string on
  both sides, gives the same keys either way; only exotic passwords could differ from another
  SCRAM implementation. User names are used as given (TideMQ limits them to ASCII).
- **Unknown users look like known ones.** The server answers an unknown user with a salt
  derived as ``HMAC(fake_secret, username)`` (stable across calls, 16 bytes like a real one)
  and :data:`DEFAULT_ITERATIONS`, verifies the proof against fake keys with the same work, and
  fails with the same message as a wrong password.
- **Malformed input never crashes**: every message is bounded (:data:`MAX_MESSAGE_BYTES`) and
  every parse error is :class:`~tidemq.errors.AuthenticationFailed`.
- **The client caches SaltedPassword** (a small LRU keyed on a hash of password and salt, and
  the iteration count) so a reconnect does not pay PBKDF2's ~50 ms again. The cache holds no
  password; its values are password-equivalent for that one salt, like the client's memory of
  the password itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..errors import AuthenticationFailed, InvalidArgument, Unsupported

__all__ = [
    "DEFAULT_ITERATIONS",
    "MIN_ITERATIONS",
    "MAX_ITERATIONS",
    "MAX_MESSAGE_BYTES",
    "SALT_BYTES",
    "ScramCredentials",
    "ScramClient",
    "ScramServer",
    "make_credentials",
    "salted_password",
]

DEFAULT_ITERATIONS: Final = 100_000
MIN_ITERATIONS: Final = 4096  # RFC 7677 §4: at least 4096
MAX_ITERATIONS: Final = 10_000_000  # a client refuses more: a hostile server could stall it
MAX_MESSAGE_BYTES: Final = 4096  # any SCRAM message; real ones are ~100-300 bytes
SALT_BYTES: Final = 16

_FAILED: Final = "authentication failed: unknown user or wrong password"
_CACHE_SIZE: Final = 16
_NONCE_BYTES: Final = 18  # 24 characters of url-safe base64


@dataclass(frozen=True)
class ScramCredentials:
    """What the server stores for a password user; never the password itself."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _normalize(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """``Hi(Normalize(password), salt, i)`` of RFC 5802 (PBKDF2-HMAC-SHA-256), uncached."""
    return hashlib.pbkdf2_hmac("sha256", _normalize(password), salt, iterations)


def make_credentials(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramCredentials:
    """The credentials to store for ``password``: a fresh random 16-byte salt unless one is
    given. Raises InvalidArgument for fewer than :data:`MIN_ITERATIONS` iterations (RFC 7677
    §4) or more than :data:`MAX_ITERATIONS` (clients would refuse to log in)."""
    if not isinstance(iterations, int) or isinstance(iterations, bool):
        raise InvalidArgument(f"iterations must be a whole number, got {iterations!r}")
    if iterations < MIN_ITERATIONS:
        raise InvalidArgument(
            f"SCRAM iterations must be at least {MIN_ITERATIONS} (RFC 7677), got {iterations}")
    if iterations > MAX_ITERATIONS:
        raise InvalidArgument(
            f"SCRAM iterations must be at most {MAX_ITERATIONS} (clients refuse more), "
            f"got {iterations}")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    elif not salt:
        raise InvalidArgument("the SCRAM salt must not be empty")
    sp = salted_password(password, salt, iterations)
    return ScramCredentials(salt=salt, iterations=iterations,
                            stored_key=_h(_hmac(sp, b"Client Key")),
                            server_key=_hmac(sp, b"Server Key"))


# --- the client's SaltedPassword cache ----------------------------------------------------

_cache: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
_cache_lock = threading.Lock()  # clients may log in from several threads at once


def _cached_salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    pw = _normalize(password)
    # Length-prefixed so that no (password, salt) pair can collide with another by shifting
    # bytes across the boundary (a server chooses the salt).
    key = (_h(len(pw).to_bytes(4, "big") + pw + salt), iterations)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    value = hashlib.pbkdf2_hmac("sha256", pw, salt, iterations)  # outside the lock: ~50 ms
    with _cache_lock:
        _cache[key] = value
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


# --- message parsing --------------------------------------------------------------------------


def _text(data: bytes, what: str) -> str:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AuthenticationFailed(f"malformed SCRAM {what}: expected bytes")
    if len(data) > MAX_MESSAGE_BYTES:
        raise AuthenticationFailed(
            f"malformed SCRAM {what}: {len(data)} bytes, at most {MAX_MESSAGE_BYTES} allowed")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationFailed(f"malformed SCRAM {what}: not UTF-8") from None


def _attributes(text: str, what: str) -> list[tuple[str, str]]:
    """``a=1,b=2`` -> [("a", "1"), ("b", "2")]; every attribute one letter."""
    out: list[tuple[str, str]] = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not ("a" <= part[0] <= "z" or "A" <= part[0] <= "Z"):
            raise AuthenticationFailed(f"malformed SCRAM {what}: bad attribute {part[:20]!r}")
        out.append((part[0], part[2:]))
    return out


def _expect(attrs: list[tuple[str, str]], i: int, name: str, what: str) -> str:
    if i >= len(attrs) or attrs[i][0] != name:
        raise AuthenticationFailed(f"malformed SCRAM {what}: expected '{name}=' attribute")
    return attrs[i][1]


def _no_mandatory_extension(attrs: list[tuple[str, str]], what: str) -> None:
    # 'm=' is reserved for mandatory extensions: one we do not know means we must fail.
    if any(name == "m" for name, _ in attrs):
        raise AuthenticationFailed(f"SCRAM {what} asks for a mandatory extension (m=); "
                                   "none is supported")


def _check_nonce(nonce: str, what: str) -> str:
    # RFC 5802: printable ASCII except ','.
    if not nonce or any(not (0x21 <= ord(c) <= 0x7E) or c == "," for c in nonce):
        raise AuthenticationFailed(f"malformed SCRAM {what}: the nonce must be printable ASCII")
    return nonce


def _unb64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise AuthenticationFailed(f"malformed SCRAM {what}: bad base64") from None


def _escape_name(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _unescape_name(text: str, what: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "=":
            code = text[i + 1:i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                raise AuthenticationFailed(
                    f"malformed SCRAM {what}: '=' in a user name must be escaped as =2C or =3D")
            i += 3
        else:
            out.append(c)
            i += 1
    if not out:
        raise AuthenticationFailed(f"malformed SCRAM {what}: empty user name")
    return "".join(out)


def _parse_gs2(text: str, what: str) -> tuple[str, str, str]:
    """Split ``client-first`` into (gs2 header, authzid or "", the bare message)."""
    flag, sep, rest = text.partition(",")
    if not sep:
        raise AuthenticationFailed(f"malformed SCRAM {what}: no GS2 header (expected 'n,,')")
    if flag.startswith("p="):
        raise Unsupported("SCRAM channel binding (SCRAM-SHA-256-PLUS) is not supported; "
                          "use SCRAM-SHA-256 without binding (GS2 header 'n,,'), over TLS "
                          "if the network is not trusted")
    if flag not in ("n", "y"):
        raise AuthenticationFailed(
            f"malformed SCRAM {what}: GS2 flag must be 'n', 'y' or 'p=', got {flag[:10]!r}")
    authz, sep, bare = rest.partition(",")
    if not sep:
        raise AuthenticationFailed(f"malformed SCRAM {what}: incomplete GS2 header")
    authzid = ""
    if authz:
        if not authz.startswith("a="):
            raise AuthenticationFailed(f"malformed SCRAM {what}: bad authorization identity")
        authzid = _unescape_name(authz[2:], what)
    return f"{flag},{authz},", authzid, bare


def _new_nonce() -> str:
    return secrets.token_urlsafe(_NONCE_BYTES)


# --- the client -------------------------------------------------------------------------------


class ScramClient:
    """The client side: ``first()``, then ``final(server_first)``, then ``verify(server_final)``.

    ``nonce`` fixes the client nonce (tests; RFC vectors); by default 24 random characters. One
    object serves one login; not thread-safe (the SaltedPassword cache it uses is).
    """

    def __init__(self, username: str, password: str, *, nonce: str | None = None) -> None:
        if not username:
            raise InvalidArgument("the SCRAM user name must not be empty")
        self._username = username
        self._password = password
        self._nonce = _check_nonce(nonce, "client nonce") if nonce is not None else _new_nonce()
        self._first_bare = f"n={_escape_name(username)},r={self._nonce}"
        self._server_signature: bytes | None = None
        self._state = "start"

    def first(self) -> bytes:
        """The client-first-message (GS2 header ``n,,``)."""
        if self._state != "start":
            raise InvalidArgument("ScramClient.first() was already called")
        self._state = "first"
        return ("n,," + self._first_bare).encode("utf-8")

    def final(self, server_first: bytes) -> bytes:
        """The client-final-message answering ``server_first``. AuthenticationFailed when the
        server's message is malformed, does not extend our nonce, or asks for fewer than
        :data:`MIN_ITERATIONS` or more than :data:`MAX_ITERATIONS` iterations."""
        if self._state != "first":
            raise InvalidArgument("ScramClient.final() needs first() and is called once")
        self._state = "final"
        text = _text(server_first, "server-first message")
        attrs = _attributes(text, "server-first message")
        if attrs and attrs[0][0] == "e":
            raise AuthenticationFailed(f"the server refused the login: {attrs[0][1][:200]}")
        _no_mandatory_extension(attrs, "server-first message")
        nonce = _check_nonce(_expect(attrs, 0, "r", "server-first message"),
                             "server-first message")
        salt = _unb64(_expect(attrs, 1, "s", "server-first message"), "server-first salt")
        iters_text = _expect(attrs, 2, "i", "server-first message")
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise AuthenticationFailed(
                "the server's SCRAM nonce does not extend ours (a replay or a broken server)")
        if not salt:
            raise AuthenticationFailed("the server sent an empty SCRAM salt")
        if not iters_text.isdigit() or len(iters_text) > 9:
            raise AuthenticationFailed("malformed SCRAM server-first message: bad iteration count")
        iterations = int(iters_text)
        if iterations < MIN_ITERATIONS:
            raise AuthenticationFailed(
                f"the server asks for {iterations} SCRAM iterations; at least {MIN_ITERATIONS} "
                "are required (RFC 7677), so this client refuses")
        if iterations > MAX_ITERATIONS:
            raise AuthenticationFailed(
                f"the server asks for {iterations} SCRAM iterations; more than "
                f"{MAX_ITERATIONS} would stall the client, so it refuses")
        sp = _cached_salted_password(self._password, salt, iterations)
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        auth_message = f"{self._first_bare},{text},{without_proof}".encode()
        client_key = _hmac(sp, b"Client Key")
        proof = _xor(client_key, _hmac(_h(client_key), auth_message))
        self._server_signature = _hmac(_hmac(sp, b"Server Key"), auth_message)
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify(self, server_final: bytes) -> None:
        """Check the server-final-message: returns when the server proved it knows the user's
        keys; AuthenticationFailed on ``e=`` errors, a wrong signature or a malformed message."""
        if self._state != "final" or self._server_signature is None:
            raise InvalidArgument("ScramClient.verify() needs final() first")
        self._state = "done"
        text = _text(server_final, "server-final message")
        attrs = _attributes(text, "server-final message")
        if attrs[0][0] == "e":
            raise AuthenticationFailed(f"the server refused the login: {attrs[0][1][:200]}")
        signature = _unb64(_expect(attrs, 0, "v", "server-final message"), "server signature")
        if not hmac.compare_digest(signature, self._server_signature):
            raise AuthenticationFailed(
                "the server's SCRAM signature is wrong: it does not hold this user's keys "
                "(a wrong server, or someone in between)")


# --- the server -------------------------------------------------------------------------------


class ScramServer:
    """The server side: ``first(client_first)``, then ``final(client_final)``.

    ``lookup(name)`` returns the user's credentials, or None for an unknown user (or one
    without a password); ``fake_secret`` keys the fake salts of unknown users and must stay the
    same across restarts, or a probe could tell unknown users by their changing salt.
    ``nonce`` fixes the server's nonce part (tests). One object serves one login; not
    thread-safe. Every failure is :class:`~tidemq.errors.AuthenticationFailed` (or Unsupported
    for channel binding); a wrong proof and an unknown user give the same one.
    """

    def __init__(
        self,
        lookup: Callable[[str], ScramCredentials | None],
        *,
        fake_secret: bytes,
        nonce: str | None = None,
    ) -> None:
        self._lookup = lookup
        self._fake_secret = fake_secret
        self._server_nonce = (_check_nonce(nonce, "server nonce") if nonce is not None
                              else _new_nonce())
        self._state = "start"
        self._username = ""
        self._authenticated = ""
        self._creds: ScramCredentials | None = None
        self._known = False
        self._gs2 = ""
        self._nonce = ""
        self._first_bare = ""
        self._server_first = ""

    @property
    def username(self) -> str:
        """The authenticated user's name after a successful ``final``; "" before."""
        return self._authenticated

    def _fake(self, username: str) -> ScramCredentials:
        digest = _hmac(self._fake_secret, b"salt\0" + username.encode("utf-8"))
        keys = _hmac(self._fake_secret, b"keys\0" + username.encode("utf-8"))
        return ScramCredentials(salt=digest[:SALT_BYTES], iterations=DEFAULT_ITERATIONS,
                                stored_key=_h(keys), server_key=keys)

    def first(self, client_first: bytes) -> bytes:
        """The server-first-message for ``client_first``."""
        if self._state != "start":
            self._state = "failed"
            raise AuthenticationFailed("SCRAM client-first message sent twice")
        self._state = "failed"  # until this message is accepted
        text = _text(client_first, "client-first message")
        gs2, authzid, bare = _parse_gs2(text, "client-first message")
        attrs = _attributes(bare, "client-first message")
        _no_mandatory_extension(attrs, "client-first message")
        username = _unescape_name(_expect(attrs, 0, "n", "client-first message"),
                                  "client-first message")
        nonce = _check_nonce(_expect(attrs, 1, "r", "client-first message"),
                             "client-first message")
        if authzid and authzid != username:
            raise AuthenticationFailed(
                "SCRAM authorization identity (a=) must be the user itself; acting as another "
                "user is not supported")
        # Always derive the fake keys, so a known and an unknown user cost the same here.
        fake = self._fake(username)
        creds = self._lookup(username)
        self._known = creds is not None
        self._creds = creds if creds is not None else fake
        self._username = username
        self._gs2 = gs2
        self._nonce = nonce + self._server_nonce
        self._first_bare = bare
        self._server_first = (f"r={self._nonce},s={_b64(self._creds.salt)},"
                              f"i={self._creds.iterations}")
        self._state = "first"
        return self._server_first.encode("ascii")

    def final(self, client_final: bytes) -> bytes:
        """Verify ``client_final``; the server-final-message (``v=...``) when the proof is
        right. AuthenticationFailed otherwise."""
        if self._state != "first" or self._creds is None:
            self._state = "failed"
            raise AuthenticationFailed("SCRAM client-final message before the client-first one")
        self._state = "failed"
        text = _text(client_final, "client-final message")
        without_proof, sep, proof_part = text.rpartition(",")
        if not sep or not proof_part.startswith("p="):
            raise AuthenticationFailed("malformed SCRAM client-final message: no proof (p=)")
        attrs = _attributes(without_proof, "client-final message")
        _no_mandatory_extension(attrs, "client-final message")
        binding = _unb64(_expect(attrs, 0, "c", "client-final message"), "channel binding")
        nonce = _expect(attrs, 1, "r", "client-final message")
        proof = _unb64(proof_part[2:], "client proof")
        if binding != self._gs2.encode("utf-8"):
            raise AuthenticationFailed(
                "SCRAM channel-binding data (c=) does not match the GS2 header sent first")
        if not hmac.compare_digest(nonce.encode("utf-8"), self._nonce.encode("utf-8")):
            raise AuthenticationFailed("SCRAM nonce mismatch (a replayed or tampered message)")
        if len(proof) != hashlib.sha256().digest_size:
            raise AuthenticationFailed("malformed SCRAM client proof: wrong length")
        creds = self._creds
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        # The same work for a known and an unknown user: the fake keys are checked just alike,
        # and only then does "unknown" decide the answer.
        client_key = _xor(proof, _hmac(creds.stored_key, auth_message))
        good = hmac.compare_digest(_h(client_key), creds.stored_key)
        signature = _hmac(creds.server_key, auth_message)
        if not (good and self._known):
            raise AuthenticationFailed(_FAILED)
        self._authenticated = self._username
        self._state = "done"
        return f"v={_b64(signature)}".encode("ascii")
