"""Security against a real ``tidemq serve`` process: the login mechanisms, permissions on every
request, reloads, TLS and mTLS, and the loopback rule (docs/security.md).

Certificates are made by ``trustme``; users are written with the security package's own
``UserDB`` (SCRAM at 4,096 iterations to keep logins quick).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import tidemq
from tidemq import protocol as P
from tidemq.errors import (
    AuthenticationFailed,
    ConnectionLost,
    InvalidArgument,
    PermissionDenied,
    Unsupported,
)
from tidemq.security import ScramClient, UserDB, load_users, save_users
from tidemq.server._authz import CALL_CHECKS, CHECKS
from tidemq.server._dispatch import _CALLS, HANDLERS

from .conftest import ServerProcess

PASSWORDS = {"alice": "alice-secret", "shop": "shop-secret", "billing": "billing-secret",
             "ops": "ops-secret", "nobody": "nobody-secret"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_users(path: Path) -> UserDB:
    db = UserDB()
    for name, password in PASSWORDS.items():
        db.add_user(name, password, iterations=4096)
    db.add_user("svc-billing", None)  # certificate only (EXTERNAL)
    db.grant("allow", "shop", "publish", "topic:orders.#")
    db.grant("allow", "billing", "consume", "topic:orders.#")
    db.grant("allow", "billing", "consume", "group:billing")
    db.grant("allow", "svc-billing", "consume", "topic:orders.#")
    db.grant("allow", "svc-billing", "consume", "group:billing")
    db.grant("allow", "ops", "admin", "topic:#")
    db.grant("allow", "ops", "admin", "group:#")
    db.grant("allow", "ops", "publish", "topic:#")
    db.grant("allow", "ops", "consume", "topic:#")
    db.grant("allow", "ops", "consume", "group:#")
    db.grant("deny", "ops", "publish", "topic:forbidden")
    db.grant("allow", "*", "publish", "topic:{user}.#")
    db.grant("allow", "*", "consume", "topic:{user}.#")
    db.grant("allow", "*", "consume", "group:{user}")
    save_users(path, db)
    return db


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    client = ca.issue_cert("svc-billing@example.com", common_name="svc-billing")
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    other_ca = trustme.CA()
    stranger = other_ca.issue_cert("svc-billing@example.com", common_name="svc-billing")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(d / "stranger.pem"))
    return {"dir": d, "ca": str(d / "ca.pem"), "server": str(d / "server.pem"),
            "client": str(d / "client.pem"), "stranger": str(d / "stranger.pem")}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """A plaintext server with users (clients on loopback)."""
    d = tmp_path_factory.mktemp("secured")
    users = d / "users.json"
    write_users(users)
    proc = ServerProcess(d / "data", args=("--users", str(users))).start()
    try:
        yield proc, users
    finally:
        proc.close()


def url(proc: ServerProcess, user: str | None = None, *, scheme: str = "tidemq") -> str:
    cred = f"{user}:{PASSWORDS[user]}@" if user else ""
    return f"{scheme}://{cred}127.0.0.1:{proc.port}"


# --- mechanisms ---------------------------------------------------------------------------


def test_scram_login_and_permissions(secured: tuple[ServerProcess, Path]) -> None:
    proc, _ = secured
    topic = f"orders.{unique('t')}"
    with tidemq.Client(url(proc, "ops")) as ops:
        ops.create_topic(topic)
    with tidemq.Client(url(proc, "shop")) as shop:
        shop.publish(topic, b"order-1")
        with pytest.raises(PermissionDenied, match="shop"):
            shop.publish("payments", b"x")
        with pytest.raises(PermissionDenied):
            shop.subscribe(topic, "billing")
        with pytest.raises(PermissionDenied):
            shop.delete_topic(topic)
    with tidemq.Client(url(proc, "billing")) as billing:
        sub = billing.subscribe(topic, "billing")
        [m] = sub.receive(1, timeout=5)
        assert m.body == b"order-1"
        m.ack()
        sub.flush()
        with pytest.raises(PermissionDenied, match="group 'audit'"):
            billing.subscribe(topic, "audit")
        with pytest.raises(PermissionDenied):
            billing.publish(topic, b"x")
        # list_topics shows only what the user holds a right on
        names = {t.name for t in billing.list_topics()}
        assert topic in names and all(n.startswith(("orders.", "billing.")) for n in names)


def test_deny_wins_and_user_namespaces(secured: tuple[ServerProcess, Path]) -> None:
    proc, _ = secured
    with tidemq.Client(url(proc, "ops")) as ops, pytest.raises(PermissionDenied):
        ops.publish("forbidden", b"x")
    with tidemq.Client(url(proc, "alice")) as alice:
        alice.publish("alice.inbox", b"mine")  # {user} expansion
        with pytest.raises(PermissionDenied):
            alice.publish("shop.inbox", b"not mine")


def test_wrong_password_and_unknown_user_are_indistinguishable(
        secured: tuple[ServerProcess, Path]) -> None:
    proc, _ = secured
    errors = []
    for user, password in (("alice", "wrong"), ("mallory", "wrong")):
        with pytest.raises(AuthenticationFailed) as info:
            tidemq.Client(f"tidemq://{user}:{password}@127.0.0.1:{proc.port}").list_topics()
        errors.append((type(info.value), info.value.message))
    assert errors[0] == errors[1]
    assert errors[0][1]  # a message that says something


def test_no_credentials_is_refused(secured: tuple[ServerProcess, Path]) -> None:
    proc, _ = secured
    with pytest.raises(AuthenticationFailed, match="authentication required"):
        tidemq.Client(url(proc)).list_topics()


def test_token_login_and_revocation_closes_the_session(
        secured: tuple[ServerProcess, Path]) -> None:
    proc, users = secured
    db = load_users(users)
    token_id, token = db.create_token("ops", ttl_s=None, now_s=time.time())
    save_users(users, db)
    with eventually_client(proc, f"tidemq://127.0.0.1:{proc.port}", token=token) as mq:
        assert isinstance(mq.list_topics(), list)  # loopback plaintext: allowed
        db = load_users(users)
        db.revoke_token(token_id)
        save_users(users, db)
        deadline = time.monotonic() + 10
        while True:  # the server notices the change within ~1 s and closes the session
            try:
                mq.list_topics()
            except AuthenticationFailed:
                break
            except ConnectionLost:
                pass
            assert time.monotonic() < deadline, "the revoked token's session stayed open"
            time.sleep(0.1)
    with pytest.raises(AuthenticationFailed):
        tidemq.Client(f"tidemq://127.0.0.1:{proc.port}", token=token).list_topics()


def eventually_client(proc: ServerProcess, url: str, **options: Any) -> tidemq.Client:
    """A client logged in once the server reloaded the users file (SIGHUP; retried, a
    failed login counting against this address's limit of 10 a minute)."""
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    deadline = time.monotonic() + 10
    while True:
        try:
            mq = tidemq.Client(url, **options)
            mq.list_topics()
            return mq
        except AuthenticationFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def test_token_is_not_sent_in_plaintext_off_loopback() -> None:
    with pytest.raises(InvalidArgument, match="plaintext"):
        tidemq.Client("tidemq://192.0.2.1:7600", token="tmq_x_y").list_topics()


def _outward_ip() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a route
            ip: str = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_server_refuses_a_token_over_plaintext_from_another_address(tmp_path: Path) -> None:
    ip = _outward_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address")
    users = tmp_path / "users.json"
    db = write_users(users)
    _, token = db.create_token("ops", ttl_s=None, now_s=time.time())
    save_users(users, db)
    proc = ServerProcess(tmp_path / "data", args=("--users", str(users), "--host", "0.0.0.0"))
    proc.start()
    try:
        sock = socket.create_connection((ip, proc.port), timeout=5, source_address=(ip, 0))
        with contextlib.closing(sock):
            sock.sendall(P.encode(P.Hello(request_id=1, versions=[1], client_id="raw",
                                          max_frame_size=1 << 20, auth_mechanism="TOKEN",
                                          auth_data=token.encode())))
            answer = _read_frame(sock)
        assert isinstance(answer, P.Error) and answer.fatal
        assert answer.code == AuthenticationFailed.code and "TLS" in answer.message
        # SCRAM from the same address works: only the token is refused.
        with tidemq.Client(f"tidemq://ops:{PASSWORDS['ops']}@{ip}:{proc.port}") as mq:
            mq.list_topics()
    finally:
        proc.close()


def _read_frame(sock: socket.socket, dec: P.Decoder | None = None) -> Any:
    dec = dec or P.Decoder(1 << 20)
    while (f := dec.next_frame()) is P.NEED_DATA:
        data = sock.recv(65536)
        if not data:
            return None
        dec.feed(data)
    return f


def test_credentials_to_a_server_without_users_are_refused(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data").start()
    try:
        with pytest.raises(AuthenticationFailed, match="no users"):
            tidemq.Client(f"tidemq://alice:x@127.0.0.1:{proc.port}").list_topics()
        with tidemq.Client(proc.url) as mq:  # and without credentials it serves
            mq.list_topics()
    finally:
        proc.close()


def test_security_options_with_an_embedded_url_are_unsupported() -> None:
    with pytest.raises(Unsupported, match="embedded"):
        tidemq.Client("memory://", token="t")


def test_repeated_failures_from_one_address_are_limited(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    write_users(users)
    proc = ServerProcess(tmp_path / "data", args=("--users", str(users))).start()
    try:
        for _ in range(10):
            with pytest.raises(AuthenticationFailed):
                tidemq.Client(f"tidemq://alice:guess@127.0.0.1:{proc.port}").list_topics()
        # Now even the right password is refused from this address, for a while.
        with pytest.raises(AuthenticationFailed, match="too many"):
            tidemq.Client(url(proc, "alice")).list_topics()
    finally:
        proc.close()


# --- permissions on every frame -------------------------------------------------------------


def test_every_client_frame_type_has_a_permission_rule() -> None:
    missing = [t.__name__ for t in HANDLERS if t not in CHECKS]
    assert not missing, f"frame types without a permission rule in server/_authz.py: {missing}"
    assert set(CALL_CHECKS) == set(_CALLS), "admin calls without a permission rule"


class Session:
    """A raw-protocol session logged in by SCRAM."""

    def __init__(self, port: int, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.dec = P.Decoder(1 << 24)
        self.rid = 10
        scram = ScramClient(user, PASSWORDS[user])
        self.send(P.Hello(request_id=1, versions=[1], client_id="raw", max_frame_size=1 << 24,
                          auth_mechanism="SCRAM-SHA-256", auth_data=scram.first()))
        challenge = self.next()
        assert isinstance(challenge, P.AuthChallenge) and challenge.request_id == 1
        self.send(P.AuthResponse(request_id=1, data=scram.final(challenge.data)))
        ok = self.next()
        assert isinstance(ok, P.HelloOk) and ok.user == user, ok
        assert ok.auth_data is not None
        scram.verify(ok.auth_data)

    def send(self, frame: Any) -> None:
        self.sock.sendall(P.encode(frame, max_frame_size=1 << 24))

    def next(self) -> Any:
        while True:
            f = _read_frame(self.sock, self.dec)
            if isinstance(f, P.Ping):
                self.send(P.Pong(request_id=f.request_id))
                continue
            if isinstance(f, P.Deliver):
                continue
            return f

    def request(self, frame: Any) -> Any:
        import msgspec
        self.rid += 1
        self.send(msgspec.structs.replace(frame, request_id=self.rid))
        answer = self.next()
        assert answer.request_id == self.rid, answer
        return answer

    def close(self) -> None:
        self.sock.close()


def _batch() -> bytes:
    from tidemq.storage import Record, encode_batch
    return encode_batch([Record(body=b"x")])


def _samples(topic: str, group: str, sub_id: int) -> dict[type, Any]:
    """One request of every kind a client may send, on ``topic``/``group``."""
    return {
        P.CreateTopic: P.CreateTopic(name=topic),
        P.DeleteTopic: P.DeleteTopic(name=topic),
        P.DescribeTopic: P.DescribeTopic(name=topic),
        P.SetPartitions: P.SetPartitions(name=topic, partitions=2),
        P.GroupList: P.GroupList(topic=topic),
        P.GroupDescribe: P.GroupDescribe(topic=topic, group=group),
        P.GroupReset: P.GroupReset(topic=topic, group=group, start="earliest"),
        P.DlqList: P.DlqList(topic=topic, group=group),
        P.DlqRedrive: P.DlqRedrive(topic=topic, group=group),
        P.Call: P.Call(method="delete_group", args={"topic": topic, "group": group}),
        P.Publish: P.Publish(topic=topic, batch=_batch()),
        P.Subscribe: P.Subscribe(topic=topic, group=group, prefetch=1),
        P.Credit: P.Credit(subscription_id=sub_id, n=1),
        P.Ack: P.Ack(subscription_id=sub_id, ids=["0-0"]),
        P.Nack: P.Nack(subscription_id=sub_id, ids=["0-0"]),
        P.Extend: P.Extend(subscription_id=sub_id, ids=["0-0"], seconds=1.0),
        P.Reject: P.Reject(subscription_id=sub_id, ids=["0-0"], reason="r"),
    }


_FREE = {P.Ping, P.Pong, P.Error, P.CloseSubscription, P.ListTopics}


def test_every_request_is_refused_without_the_permission(
        secured: tuple[ServerProcess, Path]) -> None:
    """'billing' consumes orders.* as group billing; it opens a subscription, then its right is
    revoked in the users file: every request kind — the subscription's too — is refused."""
    proc, users = secured
    topic = f"orders.{unique('perm')}"
    with tidemq.Client(url(proc, "ops")) as ops:
        ops.create_topic(topic)
        ops.publish(topic, b"m")
    s = Session(proc.port, "billing")
    try:
        ok = s.request(P.Subscribe(topic=topic, group="billing", prefetch=1))
        assert isinstance(ok, P.SubscribeOk), ok
        samples = _samples(topic, "billing", ok.subscription_id)
        assert set(samples) | _FREE == set(HANDLERS), "a request kind has no sample here"
        db = load_users(users)
        db.revoke_rule("billing", "consume", "topic:orders.#")
        save_users(users, db)
        deadline = time.monotonic() + 10
        while True:  # the server reloads within ~1 s; then the next request is refused
            answer = s.request(P.DescribeTopic(name=topic))
            if isinstance(answer, P.Error):
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for kind, frame in samples.items():
            if kind is P.Credit:  # no answer on success: only a refusal comes back
                s.send(frame)
                answer = s.next()
            else:
                answer = s.request(frame)
            assert isinstance(answer, P.Error), (kind.__name__, answer)
            assert answer.code == PermissionDenied.code and not answer.fatal, (kind, answer)
            assert answer.message
        # the free ones still work
        assert isinstance(s.request(P.ListTopics()), P.Result)
        assert isinstance(s.request(P.Ping()), P.Pong)
        # grant again: the next operation works
        db = load_users(users)
        db.grant("allow", "billing", "consume", "topic:orders.#")
        save_users(users, db)
        deadline = time.monotonic() + 10
        while not isinstance(s.request(P.DescribeTopic(name=topic)), P.Result):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        s.close()


def test_deleting_a_user_closes_their_session_on_sighup(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    write_users(users)
    proc = ServerProcess(tmp_path / "data", args=("--users", str(users))).start()
    try:
        s = Session(proc.port, "alice")
        assert isinstance(s.request(P.ListTopics()), P.Result)
        db = load_users(users)
        db.delete_user("alice")
        save_users(users, db)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        s.sock.settimeout(5)
        last = s.next()
        assert isinstance(last, P.Error) and last.fatal, last
        assert last.code == AuthenticationFailed.code
        assert _read_frame(s.sock, s.dec) is None  # closed
        s.close()
    finally:
        proc.close()


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory,
               certs: dict[str, Any]) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("tls")
    users = d / "users.json"
    write_users(users)
    proc = ServerProcess(d / "data", args=(
        "--users", str(users), "--tls-cert", certs["server"], "--tls-key", certs["server"],
        "--tls-client-ca", certs["ca"])).start()
    try:
        yield proc
    finally:
        proc.close()


def test_tls_with_scram_and_with_a_client_certificate(tls_server: ServerProcess,
                                                      certs: dict[str, Any]) -> None:
    topic = f"orders.{unique('tls')}"
    # mTLS is on: every client presents a certificate; SCRAM then names the user.
    with tidemq.Client(url(tls_server, "ops", scheme="tidemqs"), tls_ca=certs["ca"],
                       tls_cert=certs["client"]) as ops:
        ops.create_topic(topic)
        ops.publish(topic, b"over tls")
    # EXTERNAL: the certificate names the user (svc-billing, consume orders.# as billing)
    with tidemq.Client(f"tidemqs://127.0.0.1:{tls_server.port}", tls_ca=certs["ca"],
                       tls_cert=certs["client"]) as svc:
        [m] = svc.subscribe(topic, "billing").receive(1, timeout=5)
        assert m.body == b"over tls"
        with pytest.raises(PermissionDenied):
            svc.publish(topic, b"x")
    # a ready-made SSLContext works as well
    ctx = ssl.create_default_context(cafile=certs["ca"])
    ctx.load_cert_chain(certs["client"])
    with tidemq.Client(f"tidemqs://127.0.0.1:{tls_server.port}", ssl_context=ctx,
                       username="svc-billing") as svc:
        svc.describe_topic(topic)


def test_mtls_refuses_clients_without_a_trusted_certificate(tls_server: ServerProcess,
                                                            certs: dict[str, Any]) -> None:
    with pytest.raises((ConnectionLost, AuthenticationFailed)):
        tidemq.Client(url(tls_server, "ops", scheme="tidemqs"),
                      tls_ca=certs["ca"]).list_topics()
    with pytest.raises((ConnectionLost, AuthenticationFailed)):
        tidemq.Client(url(tls_server, "ops", scheme="tidemqs"), tls_ca=certs["ca"],
                      tls_cert=certs["stranger"]).list_topics()


def test_plaintext_and_tls_mismatches_fail_clearly(tls_server: ServerProcess,
                                                   secured: tuple[ServerProcess, Path],
                                                   certs: dict[str, Any]) -> None:
    plain, _ = secured
    with pytest.raises(ConnectionLost, match="TLS handshake"):
        tidemq.Client(url(plain, "ops", scheme="tidemqs"), tls_ca=certs["ca"]).list_topics()
    with pytest.raises(ConnectionLost, match="tidemqs"):
        tidemq.Client(url(tls_server, "ops")).list_topics()
    with pytest.raises(InvalidArgument, match="tidemqs"):
        tidemq.Client(url(plain, "ops"), tls_ca=certs["ca"])


def test_sighup_reloads_the_certificate_without_dropping_connections(
        tmp_path: Path, certs: dict[str, Any]) -> None:
    users = tmp_path / "users.json"
    write_users(users)
    cert = tmp_path / "server.pem"
    cert.write_bytes(Path(certs["server"]).read_bytes())
    proc = ServerProcess(tmp_path / "data", args=(
        "--users", str(users), "--tls-cert", str(cert), "--tls-key", str(cert))).start()
    try:
        with tidemq.Client(url(proc, "ops", scheme="tidemqs"), tls_ca=certs["ca"]) as old:
            old.list_topics()
            new_ca = trustme.CA()
            new_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
                str(cert))
            new_ca_pem = tmp_path / "new-ca.pem"
            new_ca.cert_pem.write_to_path(str(new_ca_pem))
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while True:
                try:
                    with tidemq.Client(url(proc, "ops", scheme="tidemqs"),
                                       tls_ca=str(new_ca_pem)) as fresh:
                        fresh.list_topics()
                    break
                except ConnectionLost:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            # The open connection was not dropped: a reconnect would have to trust the new
            # certificate, which this client's tls_ca does not.
            old.list_topics()
    finally:
        proc.close()


# --- the loopback rule ------------------------------------------------------------------------


def test_non_loopback_bind_without_users_is_refused(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "tidemq.server", "--data", str(tmp_path / "d"),
                          "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--users" in out.stderr and "--insecure" in out.stderr


def test_insecure_starts_and_warns(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tidemq.server", "--data",
                             str(tmp_path / "d"), "--host", "0.0.0.0", "--port", "0",
                             "--insecure"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 0.0.0.0" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert "INSECURE" in err


def test_cli_logs_in_and_never_prints_the_password(secured: tuple[ServerProcess, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tidemq.cli import main
    proc, _ = secured
    assert main(["topic", "list", "--url", url(proc, "ops")]) == 0
    assert main(["topic", "list", "--url",
                 f"tidemq://ops:hunter2@127.0.0.1:{proc.port}"]) == 1  # wrong password
    err = capsys.readouterr().err
    assert "authentication failed" in err and "hunter2" not in err
    assert main(["topic", "list", "--url", "tidemq://ops:hunter2@127.0.0.1:1"]) == 3
    err = capsys.readouterr().err
    assert "hunter2" not in err and "ops:***@" in err


def test_a_stalled_tls_handshake_is_cut_at_the_handshake_deadline(
        tmp_path: Path, certs: dict[str, Any]) -> None:
    users = tmp_path / "users.json"
    write_users(users)
    proc = ServerProcess(tmp_path / "data", args=(
        "--users", str(users), "--tls-cert", certs["server"], "--tls-key", certs["server"],
        "--handshake-timeout", "1")).start()
    try:
        # A peer that opens TCP and never starts (or never finishes) TLS.
        silent = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
        partial = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
        partial.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, no more
        t0 = time.monotonic()
        for sock in (silent, partial):
            with contextlib.closing(sock):
                assert sock.recv(4096) == b""  # the server closes it
        assert time.monotonic() - t0 < 5
        # and a proper client still gets in
        with tidemq.Client(url(proc, "ops", scheme="tidemqs"), tls_ca=certs["ca"]) as mq:
            mq.list_topics()
    finally:
        proc.close()
