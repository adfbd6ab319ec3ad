"""Heartbeats and server shutdown as an AMQP peer sees them."""

from __future__ import annotations

import socket
import time

import pika
import pika.exceptions
import pytest

from .conftest import InProcess, handshake


def test_a_silent_peer_is_closed_after_two_heartbeats(amqp_server: InProcess) -> None:
    with socket.create_connection(("127.0.0.1", amqp_server.port), timeout=10) as s:
        handshake(s, heartbeat=1)
        t0 = time.monotonic()
        s.settimeout(10)
        beats = 0
        while True:  # we stay silent; the server beats, then hangs up
            try:
                data = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            beats += data.count(b"\x08\x00\x00\x00\x00\x00\x00\xce")
        assert 1.5 <= time.monotonic() - t0 <= 6
        assert beats >= 1


def test_heartbeats_keep_an_idle_connection(amqp_server: InProcess) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", amqp_server.port, heartbeat=1))
    try:
        conn.sleep(3.5)  # pika answers heartbeats while it sleeps
        ch = conn.channel()
        ch.queue_declare("", exclusive=True)
    finally:
        conn.close()


def test_server_stop_closes_with_connection_forced(amqp_server: InProcess) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_server.port))
    ch = conn.channel()
    ch.queue_declare("", exclusive=True)
    assert amqp_server.server is not None
    amqp_server.call(amqp_server.server.stop())
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
        conn.sleep(2)
        ch.queue_declare("", exclusive=True)
    assert err.value.reply_code == 320
