"""Handlers of the routes that are not about one topic: probes, metrics, the overview, the
OpenAPI document and the admin page's static files."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import TYPE_CHECKING, Final

from aiohttp import web

from ..errors import InvalidArgument
from ..server._driver import SYNC_BUCKETS
from ._authz import OPS
from ._metrics import CONTENT_TYPE, disk_free, render, take_snapshot
from ._problem import json_response
from ._types import Check, HealthOut, ReadyOut

if TYPE_CHECKING:
    from ._app import HttpApi

__all__ = ["index", "static", "healthz", "readyz", "metrics", "openapi", "stats", "CSP"]

#: The admin page runs only its own script and style, talks only to this origin, and cannot be
#: framed: no inline script or style, no third-party anything.
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_STATIC_TYPES: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}


def _static_bytes(name: str) -> bytes:
    return resources.files("tidemq.http").joinpath("static", name).read_bytes()


def _page(name: str) -> web.Response:
    if name not in _STATIC_TYPES:
        raise web.HTTPNotFound()
    return web.Response(body=_static_bytes(name), content_type=_STATIC_TYPES[name].split(";")[0],
                        charset="utf-8", headers={"Content-Security-Policy": CSP,
                                                  "Cache-Control": "no-cache"})


async def index(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return _page("index.html")


async def static(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return _page(request.match_info["name"])


async def healthz(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return json_response(HealthOut(status="ok"))


async def readyz(api: HttpApi, request: web.Request) -> web.StreamResponse:
    b = api.backend
    checks = [
        Check(name="storage", ok=True, detail="recovered"),  # the API starts after recovery
        Check(name="listening", ok=b.listening() and not b.stopping(),
              detail="the binary port accepts connections" if b.listening() and not
              b.stopping() else "the server is stopping or not listening"),
    ]
    data, need = b.config.data, b.config.ready_min_disk_free
    free = await asyncio.to_thread(disk_free, data)
    if data is not None:
        checks.append(Check(name="disk", ok=free is not None and free >= need,
                            detail=f"{free} bytes free (threshold {need})" if free is not None
                            else "cannot read the data folder's free space"))
    ready = all(c.ok for c in checks)
    return json_response(ReadyOut(ready=ready, checks=checks), status=200 if ready else 503)


async def metrics(api: HttpApi, request: web.Request) -> web.StreamResponse:
    detail = request.query.get("detail")
    if detail not in (None, "", "partition"):
        raise InvalidArgument("detail must be 'partition' (or absent)")
    who = api.access(request)
    group_cache: dict[tuple[str, str | None], bool] = {}

    def visible(topic: str, group: str | None) -> bool:
        key = (topic, group)
        ok = group_cache.get(key)
        if ok is None:
            if group is None:
                ok = any(who.may(op, "topic", topic) for op in OPS)
            else:
                ok = who.may("admin", "topic", topic) or (
                    who.may("consume", "topic", topic) and who.may("consume", "group", group))
            group_cache[key] = ok
        return ok

    b = api.backend
    snap = take_snapshot(b.broker, visible=visible if b.gate is not None else None, detail=detail == "partition",
                         now_us=b.now_us(), version=api.version, data=b.config.data,
                         fsync=b.driver.sync_times.snapshot(), fsync_buckets=SYNC_BUCKETS,
                         connections=api.connections(), errors=api.errors)
    body = await asyncio.to_thread(render, snap)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return web.Response(body=api.openapi_bytes(), content_type="application/json")


async def stats(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return json_response(api.overview())
