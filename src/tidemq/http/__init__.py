"""The HTTP side of the server: HTTP/JSON API, Prometheus metrics and the admin page.

``tidemq serve --http-port 7680`` runs it in the server process, on the server's event loop,
over the same broker, users, permissions and TLS as the binary port (docs/http.md,
docs/metrics.md). Modules:

- ``_app``: :class:`HttpApi` (aiohttp ``AppRunner``/``TCPSite``), middlewares, overview;
- ``_routes``: every route once (the app and the OpenAPI document use it);
- ``_authz``: the permission each route needs (the binary protocol's rules);
- ``_auth``: Basic and Bearer against the gate;
- ``_topics``, ``_groups``, ``_misc``: the handlers; ``_consume``: HTTP members and receipts;
- ``_metrics``: the Prometheus collector; ``_ring``: the overview's 15-minute ring;
- ``_types``: request and response bodies (msgspec); ``_openapi``: the document from them;
- ``static/``: the admin page (no build step, no third-party code).
"""

from __future__ import annotations

from ..server._fronts import Backend
from ._app import HttpApi

__all__ = ["HttpApi", "Backend"]
