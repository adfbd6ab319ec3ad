"""Credentials and TLS of a ``tidemq://`` / ``tidemqs://`` client (docs/security.md).

:func:`client_security` checks what the user gave — URL credentials, ``username=``,
``password=``, ``token=``, ``ssl_context=``, ``tls_ca=``, ``tls_cert=``, ``tls_key=`` — and
refuses any combination it cannot honour with a typed error, before a socket is opened: TLS
options without ``tidemqs://``, a token that would travel in plaintext to another machine, a
username without a password or a certificate. The result picks the mechanism:

- ``token=`` → ``TOKEN``;
- ``username`` and ``password`` → ``SCRAM-SHA-256`` (the password never leaves the client; the
  server's final message is checked, so a server that does not know the keys is refused too);
- a client certificate and no password → ``EXTERNAL`` (the server names the user from the
  certificate; ``username`` picks one of its names). A certificate is known to be there with
  ``tls_cert=``; with your own ``ssl_context`` pass ``username=`` (and no password) to ask for
  ``EXTERNAL``;
- nothing → no authentication (a server with users refuses that).
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any

from ..errors import AuthenticationFailed, InvalidArgument
from ..security import ScramClient

__all__ = ["ClientSecurity", "client_security", "Login", "SECURITY_OPTIONS"]

#: The keyword arguments of ``Client``/``AsyncClient`` this module takes.
SECURITY_OPTIONS = ("username", "password", "token", "ssl_context", "tls_ca", "tls_cert",
                    "tls_key")


@dataclass(frozen=True)
class ClientSecurity:
    """How one client connects: its TLS context (None: plaintext) and its credentials."""

    ssl_context: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    external: bool = False

    def login(self) -> Login | None:
        """A fresh login for one connection attempt (None: no credentials offered)."""
        if self.token is not None:
            return Login("TOKEN", self.token.encode())
        if self.username is not None and self.password is not None:
            return Login("SCRAM-SHA-256", None, ScramClient(self.username, self.password))
        if self.external:
            return Login("EXTERNAL", (self.username or "").encode())
        return None


class Login:
    """One mechanism's client side for one handshake (sans-IO)."""

    def __init__(self, mechanism: str, data: bytes | None, scram: ScramClient | None = None):
        self.mechanism = mechanism
        self._data = data
        self._scram = scram

    def first(self) -> bytes:
        """``Hello.auth_data``."""
        if self._scram is not None:
            return self._scram.first()
        return self._data or b""

    def respond(self, challenge: bytes) -> bytes:
        """The ``AuthResponse`` to an ``AuthChallenge``."""
        if self._scram is None:
            raise AuthenticationFailed(f"the server sent a challenge {self.mechanism} does not "
                                       "have")
        return self._scram.final(challenge)

    def finish(self, user: str, server_data: bytes | None) -> None:
        """Check the ``HelloOk``: SCRAM's server signature proves the server knew the keys."""
        if self._scram is not None:
            if server_data is None:
                raise AuthenticationFailed("the server did not prove it knows the password's "
                                           "keys (no SCRAM server-final message)")
            self._scram.verify(server_data)
        if not user:
            raise AuthenticationFailed("the server accepted the session without a user")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_security(host: str, *, tls: bool, username: str | None = None,
                    password: str | None = None, token: str | None = None,
                    ssl_context: ssl.SSLContext | None = None, tls_ca: str | None = None,
                    tls_cert: str | None = None, tls_key: str | None = None) -> ClientSecurity:
    """Check the options and build the TLS context; see the module docstring."""
    for name, value in (("username", username), ("password", password), ("token", token),
                        ("tls_ca", tls_ca), ("tls_cert", tls_cert), ("tls_key", tls_key)):
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidArgument(f"{name} must be a non-empty string")
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise InvalidArgument("ssl_context must be an ssl.SSLContext")
    tls_options = [n for n, v in (("ssl_context", ssl_context), ("tls_ca", tls_ca),
                                  ("tls_cert", tls_cert), ("tls_key", tls_key)) if v is not None]
    if tls_options and not tls:
        raise InvalidArgument(f"{', '.join(tls_options)} need TLS: use a tidemqs:// URL")
    if ssl_context is not None and (tls_ca or tls_cert or tls_key):
        raise InvalidArgument("give either ssl_context or tls_ca/tls_cert/tls_key, not both")
    if tls_key is not None and tls_cert is None:
        raise InvalidArgument("tls_key needs tls_cert")
    if token is not None and (username is not None or password is not None):
        raise InvalidArgument("give either a token or a username and password, not both")
    if password is not None and username is None:
        raise InvalidArgument("a password needs a username")
    if token is not None and not tls and not is_loopback(host):
        raise InvalidArgument(
            f"refusing to send a token in plaintext to {host}: use tidemqs:// (TLS), or a "
            "loopback address")
    ctx: ssl.SSLContext | None = None
    if tls:
        if ssl_context is not None:
            ctx = ssl_context
        else:
            try:
                ctx = ssl.create_default_context(cafile=tls_ca)
                if tls_cert is not None:
                    ctx.load_cert_chain(tls_cert, tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise InvalidArgument(f"cannot load the TLS files: {exc}") from None
        ctx.minimum_version = max(ctx.minimum_version, ssl.TLSVersion.TLSv1_2)
    # EXTERNAL: a client certificate and no password or token. With tls_cert we know there is
    # one; an ssl_context does not say, so there a username without password asks for it.
    external = tls and password is None and token is None and (
        tls_cert is not None or (ssl_context is not None and username is not None))
    if username is not None and password is None and not external:
        raise InvalidArgument(f"user {username!r} needs a password (or a client certificate, "
                              "tls_cert=, for EXTERNAL over tidemqs://)")
    return ClientSecurity(ssl_context=ctx, username=username, password=password, token=token,
                          external=external)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(security options, the rest) of a client's keyword arguments."""
    sec = {k: options[k] for k in SECURITY_OPTIONS if k in options}
    rest = {k: v for k, v in options.items() if k not in sec}
    return sec, rest
