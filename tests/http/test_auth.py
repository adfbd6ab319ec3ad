"""Authentication and permissions over HTTP: Basic and Bearer against the users file, the
binary protocol's permission rules, filtered listings and metrics, TLS, client certificates
(EXTERNAL)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
import trustme

from tidemq.security import load_users, save_users

from .conftest import Http, serving

T = "/api/v1/topics"


def test_credentials_required_and_checked(users: tuple[Path, str]) -> None:
    path, token = users

    async def main() -> None:
        async with serving(users=str(path)) as (_, anon):
            r = await anon.get(T)
            assert r.status == 401 and r.json["title"] == "AuthenticationFailed"
            assert r.json["code"] == 50
            assert r.headers["WWW-Authenticate"].startswith('Basic realm="TideMQ"')
            t0 = time.monotonic()
            r = await anon.as_user("ops", "wrong").get(T)
            assert r.status == 401 and time.monotonic() - t0 >= 0.09  # the failure delay
            assert r.json["detail"] == "authentication failed: unknown user or wrong password"
            assert (await anon.as_user("ghost", "x").get(T)).json["detail"] == r.json["detail"]
            for header in ("Digest abc", "Basic !!!", "Basic " + "QQ==", "Bearer tmq_nope"):
                r = await anon.get(T, headers={"Authorization": header})
                assert r.status == 401, header
            ops = anon.as_user("ops")
            assert (await ops.get(T)).status == 200
            assert (await ops.get(T)).status == 200  # (the cached check)
            assert (await anon.with_token(token).get(T)).status == 200  # loopback: accepted
            # Public: probes and the page's files.
            for path_ in ("/healthz", "/readyz", "/", "/static/app.js"):
                assert (await anon.get(path_)).status == 200, path_
            assert (await anon.get("/metrics")).status == 401
            assert (await anon.get("/api/v1/openapi.json")).status == 401
    asyncio.run(main())


def test_permissions_follow_the_binary_rules(users: tuple[Path, str]) -> None:
    path, _ = users

    async def main() -> None:
        async with serving(users=str(path)) as (_, anon):
            ops, shop, billing, nobody = (anon.as_user(u) for u in
                                          ("ops", "shop", "billing", "nobody"))
            G = f"{T}/orders/groups/billing"
            assert (await shop.put(f"{T}/orders", {})).status == 403
            assert (await ops.put(f"{T}/orders", {})).status == 201
            assert (await ops.put(f"{T}/secret", {})).status == 201
            assert (await ops.put(G, {})).status == 201
            r = await shop.post(f"{T}/orders/messages", [{"payload": "p"}])
            assert r.status == 200
            r = await shop.post(f"{T}/secret/messages", [{"payload": "p"}])
            assert r.status == 403 and r.json["title"] == "PermissionDenied"
            assert r.json["detail"] == "user 'shop' may not publish topic 'secret'"
            assert (await billing.post(f"{T}/orders/messages", [{"payload": "p"}])).status == 403
            # Listing shows only topics with a right; describing needs one.
            names = [t["name"] for t in (await shop.get(T)).json["topics"]]
            assert names == ["orders"]
            assert (await nobody.get(T)).json["topics"] == []
            assert (await nobody.get(f"{T}/orders")).status == 403
            assert (await shop.get(f"{T}/orders")).status == 200
            # Consuming needs consume on the topic and the group.
            r = await billing.post(f"{G}/receive", {})
            assert r.status == 200 and len(r.json["messages"]) == 1
            receipt = r.json["messages"][0]["receipt"]
            assert (await shop.post(f"{G}/ack", {"receipts": [receipt]})).status == 403
            assert (await billing.post(f"{G}/ack", {"receipts": [receipt]})).status == 200
            await ops.put(f"{T}/orders/groups/audit", {})
            assert (await billing.post(f"{T}/orders/groups/audit/receive", {})).status == 403
            # Reading a group: admin topic, or consume topic and group.
            assert (await billing.get(G)).status == 200
            assert (await billing.get(f"{G}/dlq")).status == 200
            assert (await shop.get(G)).status == 403
            assert (await billing.get(f"{T}/orders/partitions/0/messages")).status == 200
            assert (await shop.get(f"{T}/orders/partitions/0/messages")).status == 403
            # Changing a group, redriving: admin on topic and group.
            assert (await billing.put(G, {"ack_timeout": 5})).status == 403
            assert (await billing.post(f"{G}/reset", {"start": "latest"})).status == 403
            assert (await billing.post(f"{G}/dlq/redrive", {})).status == 403
            assert (await ops.post(f"{G}/dlq/redrive", {})).status == 200
            assert (await billing.delete(f"{T}/orders")).status == 403
            # Metrics show only what the scraper may see.
            text = (await shop.get("/metrics")).text
            assert 'topic="orders"' in text and 'topic="secret"' not in text
            assert 'group="billing"' not in text  # shop may not read the group
            text = (await billing.get("/metrics")).text
            assert 'tidemq_group_lag_messages{group="billing",topic="orders"}' in text
            assert 'group="audit"' not in text
            text = (await ops.get("/metrics")).text
            assert 'group="audit"' in text and 'topic="secret"' in text
    asyncio.run(main())


def test_reload_applies_to_the_next_request(users: tuple[Path, str]) -> None:
    path, token = users

    async def main() -> None:
        async with serving(users=str(path)) as (srv, anon):
            ops = anon.as_user("ops")
            assert (await ops.get(T)).status == 200
            assert (await anon.with_token(token).get(T)).status == 200
            db = load_users(path)
            db.set_password("ops", "new-secret", iterations=4096)
            for info in db.tokens():
                db.revoke_token(info.token_id)
            save_users(path, db)
            srv.reload()
            assert (await ops.get(T)).status == 401  # the cached password is forgotten
            assert (await anon.as_user("ops", "new-secret").get(T)).status == 200
            assert (await anon.with_token(token).get(T)).status == 401
    asyncio.run(main())


def test_failure_limit_per_address(users: tuple[Path, str]) -> None:
    path, _ = users

    async def main() -> None:
        async with serving(users=str(path)) as (_, anon):
            bad = anon.as_user("ops", "guess")
            await asyncio.gather(*(bad.get(T) for _ in range(10)))
            r = await anon.as_user("ops").get(T)
            assert r.status == 401 and "too many failed logins" in r.json["detail"]
    asyncio.run(main())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_tls_and_bearer_tokens(users: tuple[Path, str], tmp_path: Path, ca: trustme.CA) -> None:
    path, token = users
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main() -> None:
        async with serving(users=str(path), tls_cert=str(cert_file),
                           tls_key=str(key_file)) as (srv, anon):
            conn = aiohttp.TCPConnector(ssl=client_ctx)
            async with aiohttp.ClientSession(connector=conn) as session:
                http = Http(session, anon.base)
                assert anon.base.startswith("https://")
                assert (await http.with_token(token).get(T)).status == 200
                assert (await http.as_user("ops").get(T)).status == 200
                # Plain HTTP on the TLS port is not served.
                with pytest.raises(aiohttp.ClientError):
                    async with aiohttp.ClientSession() as plain:
                        await Http(plain, anon.base.replace("https", "http")).get("/healthz")
    asyncio.run(main())


def test_client_certificates_authenticate_like_external(users: tuple[Path, str], tmp_path: Path,
                                                        ca: trustme.CA) -> None:
    """With --tls-client-ca, a request without Authorization is the user its certificate names
    (EXTERNAL's rule: the CN, then the subjectAltNames, the first that is a user); with a
    header, the header decides; a certificate naming no user is refused."""
    path, token = users
    server = ca.issue_cert("127.0.0.1", "localhost")
    server_file, ca_file = tmp_path / "server.pem", tmp_path / "ca.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(server_file))
    ca.cert_pem.write_to_path(str(ca_file))

    def client(*names: str, common_name: str | None = None, issuer: trustme.CA = ca
               ) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        issuer.issue_cert(*names, common_name=common_name).configure_cert(ctx)
        return ctx

    billing = client("billing.example", common_name="billing")
    by_san = client("ghost.example", "billing@example.com", "billing", common_name="ghost")
    ghost = client("ghost.example", common_name="ghost")
    stranger = client("billing.example", common_name="billing", issuer=trustme.CA())
    bare = ssl.create_default_context()
    ca.configure_trust(bare)

    async def main() -> None:
        async with serving(users=str(path), tls_cert=str(server_file),
                           tls_key=str(server_file), tls_client_ca=str(ca_file)) as (_, anon):
            async def as_cert(ctx: ssl.SSLContext, method: str, route: str,
                              body: object = None, auth: str | None = None) -> int:
                conn = aiohttp.TCPConnector(ssl=ctx)
                async with aiohttp.ClientSession(connector=conn) as session:
                    http = Http(session, anon.base, auth)
                    return (await http.call(method, route, body)).status

            ops = "Basic " + base64.b64encode(b"ops:ops-secret").decode()
            assert await as_cert(billing, "PUT", f"{T}/orders", {}, ops) == 201
            # billing may consume orders (GET its groups) but not administer it.
            assert await as_cert(billing, "GET", f"{T}/orders/groups") == 200
            assert await as_cert(billing, "PUT", f"{T}/orders/groups/x", {}) == 403
            assert await as_cert(by_san, "GET", f"{T}/orders/groups") == 200  # a SAN names it
            # A header decides over the certificate: ops' token administers.
            assert await as_cert(billing, "PUT", f"{T}/orders/groups/x", {},
                                 "Bearer " + token) == 201
            assert await as_cert(ghost, "GET", f"{T}/orders/groups") == 401
            assert await as_cert(ghost, "GET", "/healthz") == 200  # public routes stay public
            # No certificate, or one of another CA: the TLS handshake itself fails.
            for ctx in (bare, stranger):
                with pytest.raises(aiohttp.ClientError):
                    await as_cert(ctx, "GET", "/healthz")
    asyncio.run(main())


def test_a_certificate_is_no_credential_without_client_ca(users: tuple[Path, str],
                                                          tmp_path: Path,
                                                          ca: trustme.CA) -> None:
    """Without --tls-client-ca the server does not ask for (or verify) a certificate: a client
    that has one is still anonymous and must send credentials."""
    path, _ = users
    server = ca.issue_cert("127.0.0.1", "localhost")
    server_file = tmp_path / "server.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(server_file))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ca.issue_cert("billing.example", common_name="billing").configure_cert(ctx)

    async def main() -> None:
        async with (serving(users=str(path), tls_cert=str(server_file),
                            tls_key=str(server_file)) as (_, anon),
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s):
            assert (await Http(s, anon.base).get(f"{T}")).status == 401
    asyncio.run(main())


def test_loopback_rule_holds_for_the_http_port(users: tuple[Path, str]) -> None:
    from tidemq.errors import InvalidArgument
    from tidemq.server import ServerConfig

    with pytest.raises(InvalidArgument, match="without users"):
        ServerConfig(host="0.0.0.0", http_port=7680).validate()
    with pytest.raises(InvalidArgument, match="both 7600"):
        ServerConfig(port=7600, http_port=7600).validate()
    with pytest.raises(InvalidArgument, match="http_port"):
        ServerConfig(http_port=70000).validate()
    ServerConfig(host="0.0.0.0", http_port=7680, users=str(users[0])).validate()
