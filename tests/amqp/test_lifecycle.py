"""Heartbeats and server shutdown as an AMQP peer sees them."""

from __future__ import annotations

import socket
import struct
import time

import pika
import pika.exceptions
import pytest
from pamqp import commands as C
from pamqp import frame

from .conftest import InProcess


def _frames(sock: socket.socket, want: type, timeout: float = 5.0) -> object:
    """Read frames until one of type ``want`` arrives."""
    buf = b""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while len(buf) >= 7:
            size = struct.unpack(">I", buf[3:7])[0]
            if len(buf) < size + 8:
                break
            _, _, f = frame.unmarshal(buf[:size + 8])
            buf = buf[size + 8:]
            if isinstance(f, want):
                return f
        buf += sock.recv(65536)
    raise AssertionError(f"no {want.__name__}")


def test_a_silent_peer_is_closed_after_two_heartbeats(amqp_server: InProcess) -> None:
    with socket.create_connection(("127.0.0.1", amqp_server.port), timeout=10) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        _frames(s, C.Connection.Start)
        s.sendall(frame.marshal(C.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\x00guest\x00guest",
            locale="en_US"), 0))
        _frames(s, C.Connection.Tune)
        s.sendall(frame.marshal(C.Connection.TuneOk(channel_max=10, frame_max=131072,
                                                    heartbeat=1), 0)
                  + frame.marshal(C.Connection.Open(virtual_host="/"), 0))
        _frames(s, C.Connection.OpenOk)
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
