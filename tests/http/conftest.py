"""Helpers for the HTTP API's tests: an in-process server with ``http_port=0`` and a client.

Each test runs its own event loop (``asyncio.run``) with a :class:`Server` on it, like
``tests/server/test_server_inprocess.py``; :class:`Http` wraps an aiohttp session with the
base URL and optional credentials.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tidemq.security import UserDB, save_users
from tidemq.server import Server, ServerConfig

PASSWORDS = {"ops": "ops-secret", "shop": "shop-secret", "billing": "billing-secret",
             "nobody": "nobody-secret"}


class Reply:
    def __init__(self, status: int, headers: Any, text: str) -> None:
        self.status = status
        self.headers = headers
        self.text = text
        try:
            self.json: Any = json.loads(text) if text else None
        except ValueError:
            self.json = None

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.text[:300]})"


class Http:
    def __init__(self, session: aiohttp.ClientSession, base: str,
                 auth: str | None = None) -> None:
        self.session = session
        self.base = base
        self.auth = auth

    def as_user(self, user: str, password: str | None = None) -> Http:
        raw = f"{user}:{password if password is not None else PASSWORDS[user]}".encode()
        return Http(self.session, self.base, "Basic " + base64.b64encode(raw).decode())

    def with_token(self, token: str) -> Http:
        return Http(self.session, self.base, "Bearer " + token)

    async def call(self, method: str, path: str, body: Any = None, *,
                   raw: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        h = dict(headers or {})
        if self.auth is not None:
            h.setdefault("Authorization", self.auth)
        kwargs: dict[str, Any] = {"headers": h}
        if body is not None and raw is None:
            raw = json.dumps(body).encode()
        if raw is not None:
            h.setdefault("Content-Type", "application/json")
            kwargs["data"] = io.BytesIO(raw)  # (aiohttp warns about large bytes bodies)
        async with self.session.request(method, self.base + path, **kwargs) as r:
            return Reply(r.status, r.headers, await r.text())

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("PUT", path, {} if body is None else body, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("POST", path, {} if body is None else body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)


@contextlib.asynccontextmanager
async def serving(**config: Any) -> AsyncIterator[tuple[Server, Http]]:
    """A server with the HTTP API on free ports; yields it and an unauthenticated client."""
    cfg = ServerConfig(**{"data": None, "port": 0, "http_port": 0, **config})
    async with Server(cfg) as srv, aiohttp.ClientSession() as session:
        assert srv.http_port is not None
        scheme = "https" if cfg.tls_cert else "http"
        yield srv, Http(session, f"{scheme}://127.0.0.1:{srv.http_port}")


def write_users(path: Path) -> tuple[UserDB, str]:
    """Users of the tests (SCRAM at 4,096 iterations: quick) and ops' token."""
    db = UserDB()
    for name, password in PASSWORDS.items():
        db.add_user(name, password, iterations=4096)
    db.grant("allow", "ops", "admin", "topic:#")
    db.grant("allow", "ops", "admin", "group:#")
    db.grant("allow", "ops", "publish", "topic:#")
    db.grant("allow", "ops", "consume", "topic:#")
    db.grant("allow", "ops", "consume", "group:#")
    db.grant("allow", "shop", "publish", "topic:orders")
    db.grant("allow", "billing", "consume", "topic:orders")
    db.grant("allow", "billing", "consume", "group:billing")
    _, token = db.create_token("ops", ttl_s=None, now_s=0.0)
    save_users(path, db)
    return db, token


@pytest.fixture
def users(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "users.json"
    _, token = write_users(path)
    return path, token
