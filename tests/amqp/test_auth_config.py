"""Login (PLAIN, AMQPLAIN) against the users file, permissions, and the amqp_port setting."""

from __future__ import annotations

from pathlib import Path

import kombu
import pika
import pika.exceptions
import pytest

from tidemq.errors import InvalidArgument
from tidemq.security._users import UserDB, save_users
from tidemq.server._config import ServerConfig
from tidemq.server._main import build_parser, config_from_args

from .conftest import in_process, unique


def _users(path: Path) -> Path:
    db = UserDB()
    db.add_user("ops", "ops-secret", iterations=4096)
    db.add_user("shop", "shop-secret", iterations=4096)
    for op in ("admin", "publish", "consume"):
        db.grant("allow", "ops", op, "topic:#")
        db.grant("allow", "ops", op, "group:#")
    db.grant("allow", "shop", "publish", "topic:#")
    db.add_user("auditor", "auditor-secret", iterations=4096)
    db.grant("allow", "auditor", "consume", "topic:#")
    db.grant("allow", "auditor", "consume", "group:#")
    save_users(path, db)
    return path


def test_plain_and_amqplain_against_the_users_file(tmp_path: Path) -> None:
    with in_process(tmp_path, users=str(_users(tmp_path / "users.json"))) as srv:
        creds = pika.PlainCredentials("ops", "ops-secret")
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", srv.port,
                                                                 credentials=creds))
        q = unique("q")
        ch = conn.channel()
        ch.queue_declare(q)
        ch.basic_publish("", q, b"x")
        conn.close()
        # kombu/py-amqp logs in with AMQPLAIN
        with kombu.Connection(f"amqp://ops:ops-secret@127.0.0.1:{srv.port}//",
                              login_method="AMQPLAIN") as kc:
            kc.connect()
            assert kc.connected
        for user, password in (("ops", "wrong"), ("guest", "guest")):
            with pytest.raises(pika.exceptions.ProbableAuthenticationError):
                pika.BlockingConnection(pika.ConnectionParameters(
                    "127.0.0.1", srv.port, credentials=pika.PlainCredentials(user, password),
                    connection_attempts=1))


def test_permissions_are_the_users_files(tmp_path: Path) -> None:
    with in_process(tmp_path, users=str(_users(tmp_path / "users.json"))) as srv:
        creds = pika.PlainCredentials("shop", "shop-secret")
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", srv.port,
                                                                 credentials=creds))
        try:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
                conn.channel().queue_declare(unique("q"))  # shop may not consume
            assert err.value.reply_code == 403
        finally:
            conn.close()


def test_publish_needs_the_publish_permission(tmp_path: Path) -> None:
    # Checked per basic.publish, before anything is stored: a user without it gets the
    # channel closed with 403; one with it gets the confirm.
    with in_process(tmp_path, users=str(_users(tmp_path / "users.json"))) as srv:
        def connect(user: str) -> pika.BlockingConnection:
            creds = pika.PlainCredentials(user, f"{user}-secret")
            return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", srv.port,
                                                                     credentials=creds))
        q = unique("q")
        ops, auditor, shop = connect("ops"), connect("auditor"), connect("shop")
        try:
            ops.channel().queue_declare(q, durable=True)
            ch = auditor.channel()
            ch.confirm_delivery()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
                ch.basic_publish("", q, b"not allowed")
            assert err.value.reply_code == 403
            assert "may not publish" in err.value.reply_text
            ch = shop.channel()
            ch.confirm_delivery()
            ch.basic_publish("", q, b"allowed")  # confirmed, or this raises
            got = ops.channel().basic_get(q, auto_ack=True)
            assert got[2] == b"allowed"
            assert ops.channel().basic_get(q, auto_ack=True) == (None, None, None)
        finally:
            for conn in (ops, auditor, shop):
                conn.close()


def test_amqp_port_setting_and_flag() -> None:
    with pytest.raises(InvalidArgument):
        ServerConfig(amqp_port=70000).validate()
    with pytest.raises(InvalidArgument):
        ServerConfig(port=7600, amqp_port=7600).validate()
    ServerConfig(amqp_port=0).validate()
    args = build_parser().parse_args(["--memory", "--amqp-port"])
    assert config_from_args(args).amqp_port == 5673
    args = build_parser().parse_args(["--memory", "--amqp-port", "0"])
    assert config_from_args(args).amqp_port == 0
    assert config_from_args(build_parser().parse_args(["--memory"])).amqp_port is None


def test_amqps_with_the_servers_certificate(tmp_path: Path) -> None:
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    pem = str(tmp_path / "server.pem")
    with in_process(tmp_path, tls_cert=pem, tls_key=pem) as srv:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", srv.port, ssl_options=pika.SSLOptions(ctx, "127.0.0.1")))
        try:
            ch = conn.channel()
            q = unique("tls")
            ch.queue_declare(q)
            ch.basic_publish("", q, b"secret")
            m, _, body = ch.basic_get(q, auto_ack=True)
            assert body == b"secret"
        finally:
            conn.close()
