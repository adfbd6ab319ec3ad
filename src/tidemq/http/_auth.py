"""Who sent an HTTP request: ``Authorization: Basic`` or ``Bearer``, checked by the gate.

On a server with users every request (but the public ones of :mod:`._authz`: probes and the
admin page's static files) must carry credentials; there are no sessions, so each request is
checked, and a deleted user or a revoked token is refused at its next request.

- **Basic** (``user:password``): :meth:`Gate.begin_password`; a password seen before (since the
  users file last changed) is answered from the gate's cache, else PBKDF2 runs on a small
  thread pool (never on the event loop: ~40 ms for 100,000 iterations), then the gate finishes
  the check on the loop. Over plain HTTP off loopback the password crosses the network in the
  clear: serve TLS (``--tls-cert``) when the API is reachable from elsewhere.
- **Bearer** (a ``tidemq token create`` token): :meth:`Gate.verify_token`, only over TLS or
  from a loopback address, like the ``TOKEN`` mechanism of the binary protocol.
- **Client certificate** (mTLS, a server started with ``--tls-client-ca``): a request without
  an ``Authorization`` header is the user its verified certificate names, as the ``EXTERNAL``
  mechanism of the binary protocol decides it (:meth:`Gate.start`: the subject CN, then the
  DNS, e-mail and URI subjectAltNames, the first that is a user). With a header, the header
  decides (a certificate's holder may still log in as another user with that user's password
  or token, as on the binary port).

A failure is answered after :data:`~tidemq.security.FAILURE_DELAY_S` (as on the binary port)
with 401 and ``WWW-Authenticate: Basic realm="TideMQ"``; the gate's failure limiter counts it
against the peer address.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import ipaddress
import time

from aiohttp import web

from ..errors import AuthenticationFailed
from ..security import FAILURE_DELAY_S, Gate, Principal

__all__ = ["authenticate", "CHALLENGE", "peer_is_loopback"]

CHALLENGE = {"WWW-Authenticate": 'Basic realm="TideMQ", charset="UTF-8"'}
_MAX_HEADER = 8192

# PBKDF2 runs here: two threads, so a burst of wrong passwords cannot take every core (the
# failure limiter bounds it per address; hashlib releases the GIL while it runs).
_pbkdf2 = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="tidemq-pbkdf2")


def peer_is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def _cert_names(request: web.Request) -> list[str]:
    """The names of the request's verified TLS client certificate (none without mTLS)."""
    transport = request.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return []
    from ..server._connection import cert_names  # one rule for both ports

    return cert_names(ssl_object.getpeercert())


async def authenticate(gate: Gate, request: web.Request) -> Principal:
    """The principal of ``request``; AuthenticationFailed (after the failure delay) if it has
    no acceptable credentials."""
    try:
        return await _authenticate(gate, request)
    except AuthenticationFailed:
        await asyncio.sleep(FAILURE_DELAY_S)
        raise


async def _authenticate(gate: Gate, request: web.Request) -> Principal:
    header = request.headers.get("Authorization")
    if header is None:
        names = _cert_names(request)
        if names:  # EXTERNAL: done at once, or AuthenticationFailed
            exchange = gate.start("EXTERNAL", None, peer_addr=request.remote or "?",
                                  loopback=peer_is_loopback(request), tls=True,
                                  peer_cert_names=names, now_s=time.time())
            if exchange.principal is None:  # (not reached: EXTERNAL has no challenge)
                raise AuthenticationFailed("client certificate authentication did not finish")
            return exchange.principal
        raise AuthenticationFailed(
            "authentication required: send 'Authorization: Basic' (user:password) or "
            "'Authorization: Bearer <token>', or a client certificate (docs/http.md)")
    if len(header) > _MAX_HEADER:
        raise AuthenticationFailed("the Authorization header is too large")
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    addr = request.remote or "?"
    now = time.time()
    if scheme == "bearer":
        return gate.verify_token(value, peer_addr=addr, loopback=peer_is_loopback(request),
                                 tls=request.secure, now_s=now)
    if scheme != "basic":
        raise AuthenticationFailed(
            f"unsupported authorization scheme {scheme[:20]!r}; use Basic or Bearer")
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode("utf-8") \
            .partition(":")
    except (binascii.Error, ValueError):
        raise AuthenticationFailed("malformed Basic credentials: base64 of user:password") \
            from None
    if not sep:
        raise AuthenticationFailed("malformed Basic credentials: base64 of user:password")
    check = gate.begin_password(user, password, peer_addr=addr, now_s=now)
    if check.principal is not None:
        return check.principal
    await asyncio.get_running_loop().run_in_executor(_pbkdf2, check.derive)
    return check.finish(time.time())
