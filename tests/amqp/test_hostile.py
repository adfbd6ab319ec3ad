"""Hostile input on the AMQP port: the hardening rules of the binary port apply here too."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pika

from .conftest import InProcess, handshake, in_process, read_until

HEADER = b"AMQP\x00\x00\x09\x01"


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _read_until_closed(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
    return out


def test_bad_protocol_header_gets_ours_and_a_hang_up(amqp_server: InProcess) -> None:
    with _raw(amqp_server.port) as s:
        s.sendall(b"HTTP/1.1 GET /\r\n\r\n")
        assert _read_until_closed(s) == HEADER


def test_oversized_frame_before_tune_closes_with_501(amqp_server: InProcess) -> None:
    with _raw(amqp_server.port) as s:
        s.sendall(HEADER)
        time.sleep(0.1)
        # A method frame claiming 100 MB: refused from its 7-byte head, never buffered.
        s.sendall(struct.pack(">BHI", 1, 0, 100_000_000) + b"\x00" * 64)
        data = _read_until_closed(s)
    # connection.start, then connection.close (class 10, method 50) with reply code 501
    close = struct.pack(">HH", 10, 50) + struct.pack(">H", 501)
    assert close in data


def test_frame_without_end_octet_is_a_frame_error(amqp_server: InProcess) -> None:
    with _raw(amqp_server.port) as s:
        s.sendall(HEADER)
        s.sendall(struct.pack(">BHI", 1, 0, 4) + b"\x00\x0a\x00\x0b" + b"\x00")
        data = _read_until_closed(s)
    assert struct.pack(">HH", 10, 50) + struct.pack(">H", 501) in data


def test_handshake_deadline(tmp_path: Path) -> None:
    with in_process(tmp_path, handshake_timeout=0.5) as srv, _raw(srv.port) as s:
        s.sendall(HEADER)  # and then nothing: no start-ok
        t0 = time.monotonic()
        _read_until_closed(s, timeout=10)
        assert time.monotonic() - t0 < 5


def test_silent_connection_is_closed_by_the_handshake_deadline(tmp_path: Path) -> None:
    with in_process(tmp_path, handshake_timeout=0.5) as srv, _raw(srv.port) as s:
        assert _read_until_closed(s, timeout=10) == b""


def test_connection_limit_per_ip(tmp_path: Path) -> None:
    with in_process(tmp_path, max_connections_per_ip=2) as srv:
        params = pika.ConnectionParameters("127.0.0.1", srv.port, connection_attempts=1)
        a, b = pika.BlockingConnection(params), pika.BlockingConnection(params)
        try:
            try:
                c = pika.BlockingConnection(params)
            except pika.exceptions.AMQPConnectionError:
                pass
            else:
                c.close()
                raise AssertionError("a third connection from one address was admitted")
        finally:
            a.close()
            b.close()
        pika.BlockingConnection(params).close()  # room again


def test_garbage_method_is_a_syntax_error(amqp_server: InProcess) -> None:
    with _raw(amqp_server.port) as s:
        s.sendall(HEADER)
        payload = struct.pack(">HH", 99, 99) + b"zz"  # no such method
        s.sendall(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")
        data = _read_until_closed(s)
    assert struct.pack(">HH", 10, 50) + struct.pack(">H", 502) in data


def test_content_in_flight_is_bounded_per_connection(tmp_path: Path) -> None:
    """Channels announcing large bodies at once: past max_held_bytes the next one is refused
    (406 on its channel) before anything is buffered for it."""
    from pamqp import commands as C
    from pamqp import frame, header

    with in_process(tmp_path, max_frame_bytes=1 << 20, max_held_bytes=1 << 20) as srv, \
            _raw(srv.port) as s:
        handshake(s)
        for ch in (1, 2):
            s.sendall(frame.marshal(C.Channel.Open(), ch))
            read_until(s, C.Channel.OpenOk)
            s.sendall(frame.marshal(C.Basic.Publish(exchange="amq.fanout"), ch)
                      + frame.marshal(header.ContentHeader(0, 700_000, C.Basic.Properties()),
                                      ch))
        close = read_until(s, C.Channel.Close)
        assert isinstance(close, C.Channel.Close) and close.reply_code == 406
