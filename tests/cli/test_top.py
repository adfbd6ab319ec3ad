"""``tidemq top`` against a live ``tidemq serve`` with the HTTP API: ``--once`` prints one frame
with the rates and each group's lag; credentials, a refusal and an unreachable server."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.http.conftest import write_users
from tidemq.cli import main

_HTTP_LINE = re.compile(rb"tidemq http on [\d.]+:(\d+)")


def _serve(*extra: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidemq.server", "--memory", "--port", "0", "--http-port", "0",
         "--log-level", "WARNING", *extra],
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf, port = b"", None
    deadline = time.monotonic() + 20
    while port is None and time.monotonic() < deadline:
        if sel.select(timeout=1):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            m = _HTTP_LINE.search(buf)
            port = int(m.group(1)) if m else None
    sel.close()
    try:
        assert port is not None, f"the server did not start: {buf!r}"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


@pytest.fixture
def server() -> Iterator[str]:
    yield from _serve()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[str, str]]:
    users = tmp_path / "users.json"
    _, token = write_users(users)
    for base in _serve("--users", str(users)):
        yield base, token


def call(base: str, method: str, path: str, body: Any = None,
         auth: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    req = urllib.request.Request(base + path, method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
    return json.loads(text) if text else None


def _seed(base: str, auth: str | None = None) -> None:
    T = "/api/v1/topics"
    call(base, "PUT", f"{T}/orders", {"partitions": 2}, auth)
    call(base, "PUT", f"{T}/orders/groups/billing", {}, auth)
    call(base, "PUT", f"{T}/orders/groups/audit", {}, auth)
    call(base, "PUT", f"{T}/idle", {}, auth)
    call(base, "POST", f"{T}/orders/messages", [{"payload": f"m{i}"} for i in range(7)], auth)
    got = call(base, "POST", f"{T}/orders/groups/billing/receive", {"max_messages": 3}, auth)
    assert len(got["messages"]) == 3


def _top(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["top", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _row(out: str, *first: str) -> list[str]:
    for line in out.splitlines():
        cells = line.split()
        if cells[: len(first)] == list(first):
            return cells
    raise AssertionError(f"no row {first} in:\n{out}")


def test_once_prints_rates_and_lag_per_group(server: str, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    _seed(server)
    code, out, err = _top(capsys, server, "--once", "--interval", "0.3")
    assert code == 0, err
    assert "tidemq top" in out and "PUBLISH/S" in out and "LAG AGE" in out
    # billing: 7 published, 3 leased (in flight): lag 7 (none done), 3 in flight.
    row = _row(out, "orders", "billing")
    assert row[4] == "7" and row[-2] == "3", row  # LAG, IN FLIGHT
    audit = _row(out, "orders", "audit")
    assert audit[4] == "7" and audit[-2] == "0", audit
    assert _row(out, "idle")[1] == "—"  # a topic without groups
    # Only the chosen topic.
    code, out, _ = _top(capsys, server, "--once", "--interval", "0.1", "--topic", "idle")
    assert code == 0 and "idle" in out and "orders" not in out


def test_publish_rate_is_measured_between_two_reads(server: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _seed(server)
    import threading

    def publish() -> None:
        time.sleep(0.2)
        call(server, "POST", "/api/v1/topics/orders/messages",
             [{"payload": "x"} for _ in range(100)])

    th = threading.Thread(target=publish)
    th.start()
    try:
        code, out, err = _top(capsys, server, "--once", "--interval", "1")
    finally:
        th.join()
    assert code == 0, err
    rate = float(_row(out, "orders", "billing")[2].replace(",", ""))
    assert 50 <= rate <= 110, out  # 100 messages over ~1 s


def test_credentials_and_refusals(secured: tuple[str, str],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    base, token = secured
    _seed(base, "Bearer " + token)
    code, out, err = _top(capsys, base, "--once", "--interval", "0.1")
    assert code == 1 and "HTTP 401" in err and out == ""
    code, out, err = _top(capsys, base, "--once", "--interval", "0.1", "--token", token)
    assert code == 0, err
    assert _row(out, "orders", "billing")[4] == "7"
    user_url = base.replace("http://", "http://ops:ops-secret@")
    code, out, err = _top(capsys, user_url, "--once", "--interval", "0.1")
    assert code == 0 and "orders" in out, err
    assert "ops-secret" not in out + err
    bad = base.replace("http://", "http://ops:bad-pw-123@")
    code, _, err = _top(capsys, bad, "--once", "--interval", "0.1")
    assert code == 1 and "HTTP 401" in err and "bad-pw-123" not in err


def test_https_with_a_client_certificate(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """mTLS: the certificate alone logs top in (EXTERNAL over HTTP: its CN names user ops)."""
    import trustme

    ca = trustme.CA()
    server_pem, ca_pem, ops_pem = (tmp_path / n for n in ("server.pem", "ca.pem", "ops.pem"))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(server_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    ca.issue_cert("ops.example", common_name="ops").private_key_and_cert_chain_pem \
        .write_to_path(str(ops_pem))
    users = tmp_path / "users.json"
    write_users(users)
    for base in _serve("--users", str(users), "--tls-cert", str(server_pem), "--tls-key",
                       str(server_pem), "--tls-client-ca", str(ca_pem)):
        url = base.replace("http://", "https://")
        code, out, err = _top(capsys, url, "--once", "--interval", "0.1", "--tls-ca",
                              str(ca_pem), "--tls-cert", str(ops_pem))
        assert code == 0, err
        assert "tidemq top" in out and "(no topics)" in out
        code, _, err = _top(capsys, url, "--once", "--tls-ca", str(ca_pem))  # no certificate
        assert code == 3 and "cannot read" in err
        code, _, err = _top(capsys, base, "--once", "--tls-cert", str(ops_pem))
        assert code == 2 and "https://" in err


def test_unreachable_server_and_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nobody listens there
    code, _, err = _top(capsys, f"http://127.0.0.1:{port}", "--once")
    assert code == 3 and "cannot read" in err
    code, _, err = _top(capsys, "tidemq://127.0.0.1:7600", "--once")
    assert code == 2 and "http://" in err
    code, _, err = _top(capsys, "http://192.0.2.1:7680", "--once", "--token", "tmq_x_y")
    assert code == 2 and "https://" in err  # a token never goes out in plain text
