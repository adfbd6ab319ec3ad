"""The HTTP API on the server's event loop: aiohttp's ``AppRunner`` and ``TCPSite``.

Why aiohttp: it is asyncio-native and runs inside a loop we already own (``AppRunner`` +
``TCPSite`` are a few lines, no second loop or thread, so handlers call the single-threaded
broker directly), it is mature and maintained, serves TLS with our ``ssl.SSLContext``, bounds
request bodies (``client_max_size``) and has no framework opinions to fight. Starlette/FastAPI
would need an ASGI server (uvicorn) started inside the loop and pydantic next to msgspec;
a hand-written HTTP/1.1 server on h11 would be ours to harden.

Per request, in order (middlewares): errors become ``application/problem+json``; the route's
rule (:mod:`._authz`) says whether credentials are needed; the requester is authenticated
(:mod:`._auth`) and authorized; then the route's handler runs. The server's loop runs every
handler; handlers never block it (PBKDF2 and metrics rendering go to threads).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from .. import __version__
from ..broker._stats import DeadLetterScanner, storage_bytes
from ..errors import (
    AuthenticationFailed,
    FrameTooLarge,
    InternalError,
    InvalidArgument,
    PermissionDenied,
    TideMQError,
)
from ..security import Principal
from ..server._config import is_loopback_host
from ..server._driver import SYNC_BUCKETS
from ..server._fronts import Backend
from ._auth import CHALLENGE, authenticate
from ._authz import rule_for
from ._consume import HttpConsumers
from ._metrics import disk_free
from ._problem import PROBLEM_JSON, problem, problem_response
from ._ring import Ring, Totals
from ._routes import ROUTES
from ._types import StatsOut

__all__ = ["HttpApi"]

log = logging.getLogger("tidemq.http")

_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                     "X-Frame-Options": "DENY"}
KEEPALIVE_S = 75.0
#: Sent by the admin page's own requests (see _error).
PAGE_HEADER = "X-TideMQ-Page"
_PRINCIPAL: web.RequestKey[Principal | None] = web.RequestKey("tidemq_principal")


def _loopback_name(host: str) -> bool:
    """Whether the Host header names this machine by a loopback address or ``localhost``."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if name.startswith("[") and "]" in name:
        name = name[1:name.index("]")]
    return is_loopback_host(name)


class _Access:
    """The requester as the permission rules see it."""

    __slots__ = ("_gate", "principal")

    def __init__(self, api: HttpApi, principal: Principal | None) -> None:
        self._gate = api.backend.gate
        self.principal = principal

    @property
    def user(self) -> str:
        return "" if self.principal is None else self.principal.user

    def may(self, op: str, kind: str, name: str) -> bool:
        if self._gate is None or self.principal is None:
            return self._gate is None
        return self._gate.allows(self.principal, op, kind, name)


class HttpApi:
    """The HTTP API of one server. ``await start()`` binds ``host:port``; ``await stop()``."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.broker = backend.broker
        self.version = __version__
        self.consumers = HttpConsumers(backend)
        self.dead_letters = DeadLetterScanner()
        self.errors: Counter[int] = backend.errors  # answered errors by code (all ports)
        self.ring = Ring()
        self._started = time.time()
        self._openapi: bytes | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._sampler: asyncio.TimerHandle | None = None
        self.port: int | None = None
        self.app = self._make_app()
        self._loopback_only = is_loopback_host(backend.config.host)

    # --- the app ---------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.backend.config.http_max_body_bytes,
                              middlewares=[self._errors, self._guard])
        for route in ROUTES:
            app.router.add_route(route.method, route.path, self._bind(route.handler))
        return app

    def _bind(self, handler: Callable[[HttpApi, web.Request], Awaitable[web.StreamResponse]]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await handler(self, request)
        return handle

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except TideMQError as exc:
            response = self._error(exc, request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = self._http_error(exc, request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: report it, answer InternalError
            log.exception("%s %s failed", request.method, request.path)
            response = self._error(InternalError(f"{type(exc).__name__}: {exc}"), request)
        for k, v in _SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.path.startswith("/api/") or request.path == "/metrics":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _error(self, exc: TideMQError, request: web.Request) -> web.Response:
        self.errors[exc.code] += 1
        # The challenge makes a browser show its login prompt; the admin page asks for
        # credentials itself (and offers the prompt on request), so it is not challenged.
        challenge = isinstance(exc, AuthenticationFailed) and PAGE_HEADER not in request.headers
        return problem_response(exc, request.path, CHALLENGE if challenge else None)

    def _http_error(self, exc: web.HTTPException, request: web.Request) -> web.Response:
        """aiohttp's own errors (no route, wrong method, body too large) in our shape."""
        status = exc.status
        err: TideMQError
        if status == 413:
            err = FrameTooLarge(f"the request body is larger than the server accepts "
                                f"(http_max_body_bytes = {self.backend.config.http_max_body_bytes})")
        elif status == 404:
            err = InvalidArgument(f"no such route: {request.method} {request.path[:200]}; see "
                                  "/api/v1/openapi.json")
        elif status == 405:
            err = InvalidArgument(f"{request.method} is not allowed on {request.path[:200]}")
        elif status < 500:
            err = InvalidArgument(exc.reason or "bad request")
        else:
            err = InternalError(exc.reason or "server error")
        self.errors[err.code] += 1
        body = problem(err, request.path)
        body.status = status
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.Response(status=status, body=msgspec.json.encode(body),
                            content_type=PROBLEM_JSON, headers=headers)

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        """Authentication and permission of the matched route (fail closed)."""
        info = request.match_info
        route = info.route.resource
        if route is None:  # no route matched: let aiohttp answer 404/405
            return await handler(request)
        path = route.canonical
        rule = rule_for(request.method, path)
        if rule is None:
            raise PermissionDenied(f"{request.method} {path} has no permission rule")
        principal: Principal | None = None
        gate = self.backend.gate
        if gate is not None and not rule.public:
            principal = await authenticate(gate, request)
        elif gate is None and self._loopback_only and not _loopback_name(request.host):
            # Without users the server trusts whoever reaches loopback; a page of another
            # site whose name resolves to 127.0.0.1 (DNS rebinding) must not be "whoever".
            raise PermissionDenied(f"Host {request.host[:100]!r} is not accepted by a server "
                                   "without users: use 127.0.0.1, [::1] or localhost")
        request[_PRINCIPAL] = principal
        rule.check(_Access(self, principal), info)
        return await handler(request)

    def access(self, request: web.Request) -> _Access:
        """The requester of ``request`` (authenticated by the guard)."""
        return _Access(self, request.get(_PRINCIPAL))

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Bind and serve (TLS with the server's context, when it has one)."""
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                     keepalive_timeout=KEEPALIVE_S,
                                     shutdown_timeout=self.backend.config.shutdown_grace)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host or None, port,
                                 ssl_context=self.backend.tls(), reuse_address=True,
                                 backlog=512)
        await self._site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        self._sample()

    async def stop(self) -> None:
        """Stop accepting, end long polls, let requests in flight finish (up to the server's
        ``shutdown_grace``), leave every group (leases released)."""
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        self.consumers.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            try:
                await runner.cleanup()
            except Exception:
                log.exception("stopping the HTTP API failed")

    def connections(self) -> dict[str, int]:
        server = self._runner.server if self._runner is not None else None
        http = len(server.connections) if server is not None else 0
        return {"binary": self.backend.binary_connections(), "http": http}

    # --- overview --------------------------------------------------------------------------

    def _totals(self) -> Totals:
        s = self.broker.stats
        acked = sum(n for k, n in s.settled.items() if k[2] == "ack")
        counts, _, _ = self.backend.driver.sync_times.snapshot()
        return Totals(at=time.time(), published=sum(s.published.values()),
                      delivered=sum(s.delivered.values()), acked=acked,
                      dead_lettered=sum(s.dead_lettered.values()), fsync_counts=tuple(counts))

    def _sample(self) -> None:
        try:
            self.ring.add(self._totals())
        except TideMQError:  # the broker is closing
            return
        self._sampler = asyncio.get_running_loop().call_later(self.ring.interval, self._sample)

    def overview(self) -> StatsOut:
        now = self._totals()
        samples = self.ring.rates(now)
        topics = self.broker.list_topics()
        return StatsOut(
            version=self.version, uptime_seconds=time.time() - self._started,
            connections=self.connections(), storage_bytes=storage_bytes(self.broker),
            disk_free_bytes=disk_free(self.backend.config.data),
            fsync_p99_seconds=self.ring.fsync_p99(SYNC_BUCKETS, now.fsync_counts),
            topics=len(topics), groups=sum(len(t.groups) for t in topics),
            window_seconds=self.ring.window, samples=samples)

    def openapi_bytes(self) -> bytes:
        if self._openapi is None:
            from ._openapi import openapi_document
            self._openapi = msgspec.json.encode(openapi_document())
        return self._openapi

    def __repr__(self) -> str:
        return f"HttpApi(port={self.port})"
