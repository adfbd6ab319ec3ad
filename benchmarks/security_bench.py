#!/usr/bin/env python3
"""What security costs (issue 9's figures), against real ``tidemq serve`` processes.

- ``scram_server_us``: the server side of one SCRAM-SHA-256 login, in process — the gate's
  ``start`` + ``respond`` (a few HMACs; the client pays PBKDF2), µs per login.
- ``login_cpu_ms``: server CPU (utime + stime of the process, /proc) per connection that logs in
  by SCRAM and closes, and ``plain_connect_cpu_ms`` for a connection without login on a server
  without users: what authentication adds to a connection.
- ``logins_per_s`` while an ``AsyncClient`` publishes at full speed (durability ``interval``,
  100-byte messages, 500 in flight), with that publisher's ``publish_per_s`` and its quiet figure
  (``publish_vs_quiet``). Logins come from 2 processes of raw sessions (connect, SCRAM, close).
- ``publish_per_s`` and ``consume_per_s`` over ``tidemqs://`` (TLS 1.3, trustme certificates)
  and ``tidemq://`` on the same kind of server, and their ratio: per-message ``publish`` with
  2,000 in flight, then ``receive(1000)`` + ``ack`` each.

Every figure is the median of ``--runs`` runs (default 3) with min and max, each run on a fresh
server. Run:  .venv/bin/python benchmarks/security_bench.py [--runs 3] [--seconds 4]
              [--messages 100000] [--only scram,login_cpu,logins,tls]
Output: one JSON line per figure, e.g.
  {"bench": "security", "figure": "tls_publish_ratio", "median": 0.93, "min": 0.9, "max": 0.95,
   "runs": 3, "cpu_count": 2}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _procs import cpu_ticks, publish_for  # noqa: E402

import tidemq  # noqa: E402
from tidemq import protocol as P  # noqa: E402
from tidemq.security import Gate, ScramClient, UserDB, save_users  # noqa: E402

USER, PASSWORD = "bench", "bench-password"
BODY = b"m" * 100
TICK = os.sysconf("SC_CLK_TCK")


# --- servers --------------------------------------------------------------------------------


def write_users(path: Path) -> None:
    db = UserDB()
    db.add_user(USER, PASSWORD)  # the default iterations: what a real deployment stores
    for op, res in (("admin", "topic:#"), ("admin", "group:#"), ("publish", "topic:#"),
                    ("consume", "topic:#"), ("consume", "group:#")):
        db.grant("allow", USER, op, res)
    save_users(path, db)


@contextlib.contextmanager
def server(*, users: bool, tls: bool) -> Iterator[tuple[subprocess.Popen[bytes], str, dict[str, Any]]]:
    """A fresh server; yields (process, URL, client options)."""
    with tempfile.TemporaryDirectory(prefix="tidemq-secbench-") as d:
        args = ["--data", f"{d}/data", "--port", "0", "--log-level", "WARNING"]
        options: dict[str, Any] = {}
        if users:
            write_users(Path(d) / "users.json")
            args += ["--users", f"{d}/users.json"]
        if tls:
            import trustme
            ca = trustme.CA()
            ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(f"{d}/s.pem")
            ca.cert_pem.write_to_path(f"{d}/ca.pem")
            args += ["--tls-cert", f"{d}/s.pem", "--tls-key", f"{d}/s.pem"]
            options["tls_ca"] = f"{d}/ca.pem"
        proc = subprocess.Popen([sys.executable, "-m", "tidemq.server", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            m = re.search(r"listening on [\d.]+:(\d+)", line)
            if not m:
                raise RuntimeError(f"server did not start: {line!r}")
            cred = f"{USER}:{PASSWORD}@" if users else ""
            yield proc, f"{'tidemqs' if tls else 'tidemq'}://{cred}127.0.0.1:{m.group(1)}", options
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            proc.kill()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# --- raw sessions ----------------------------------------------------------------------------


def _frame(sock: socket.socket, dec: P.Decoder) -> Any:
    while (f := dec.next_frame()) is P.NEED_DATA:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        dec.feed(data)
    return f


def session(port: int, *, login: bool) -> None:
    """Connect, Hello (with a SCRAM login), close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        dec = P.Decoder(1 << 20)
        scram = ScramClient(USER, PASSWORD) if login else None
        sock.sendall(P.encode(P.Hello(
            request_id=1, versions=[1], client_id="bench", max_frame_size=1 << 20,
            auth_mechanism="SCRAM-SHA-256" if scram else None,
            auth_data=scram.first() if scram else None)))
        f = _frame(sock, dec)
        if scram is not None:
            assert isinstance(f, P.AuthChallenge), f
            sock.sendall(P.encode(P.AuthResponse(request_id=1, data=scram.final(f.data))))
            f = _frame(sock, dec)
            assert isinstance(f, P.HelloOk), f
            assert f.auth_data is not None
            scram.verify(f.auth_data)
        assert isinstance(f, P.HelloOk), f


def login_loop(port: int, seconds: float, out: Any) -> None:
    session(port, login=True)  # the salted password is cached from here on
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        session(port, login=True)
        n += 1
    out.put(n / (time.monotonic() - t0))


# --- figures ---------------------------------------------------------------------------------


def scram_server_us(n: int = 2000) -> float:
    """Server side of one login, in process (the gate, no sockets)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "users.json"
        write_users(path)
        gate = Gate(str(path), now_s=time.time())
        clients = []
        for _ in range(n):
            c = ScramClient(USER, PASSWORD)
            clients.append((c, c.first()))
        spent = 0.0
        for c, first in clients:
            t0 = time.perf_counter()
            ex = gate.start("SCRAM-SHA-256", first, peer_addr="127.0.0.1", loopback=True,
                            tls=False, now_s=time.time())
            assert ex.challenge is not None
            t1 = time.perf_counter()
            final = c.final(ex.challenge)  # the client's work: not timed
            t2 = time.perf_counter()
            ex.respond(final, time.time())
            spent += (t1 - t0) + (time.perf_counter() - t2)
            assert ex.principal is not None
        return spent / n * 1e6


def login_cpu_ms(n: int = 300) -> tuple[float, float]:
    """Server CPU per connection with and without a SCRAM login."""
    out = []
    for users in (True, False):
        with server(users=users, tls=False) as (proc, url, _):
            port = _port(url)
            session(port, login=users)  # warm up (and cache the client's salted password)
            time.sleep(0.3)
            t0 = cpu_ticks(proc.pid)
            for _ in range(n):
                session(port, login=users)
            time.sleep(0.2)  # let the server finish closing them
            out.append((cpu_ticks(proc.pid) - t0) / TICK / n * 1000)
    return out[0], out[1]


async def _publish_for(url: str, seconds: float, options: dict[str, Any]) -> float:
    async with tidemq.AsyncClient(url, **options) as mq:
        topic = f"pub-{os.getpid()}-{time.monotonic_ns()}"
        await mq.create_topic(topic)
        await mq.publish(topic, b"warm")
        return await publish_for(mq, topic, BODY, seconds, 500)


def logins_while_publishing(seconds: float) -> dict[str, float]:
    with server(users=True, tls=False) as (_, url, options):
        quiet = asyncio.run(_publish_for(url, seconds, options))
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        procs = [ctx.Process(target=login_loop, args=(_port(url), seconds, q)) for _ in range(2)]
        for p in procs:
            p.start()
        busy = asyncio.run(_publish_for(url, seconds, options))
        for p in procs:
            p.join(seconds + 30)
        logins = sum(q.get(timeout=10) for _ in procs)
    return {"logins_per_s": logins, "publish_per_s": busy, "publish_quiet_per_s": quiet,
            "publish_vs_quiet": busy / quiet}


async def _throughput(url: str, options: dict[str, Any], n: int) -> tuple[float, float]:
    async with tidemq.AsyncClient(url, **options) as mq:
        topic = f"tls-{time.monotonic_ns()}"
        await mq.create_topic(topic)
        window = 2000
        t0 = time.perf_counter()
        for _ in range(n // window):
            await asyncio.gather(*[mq.publish(topic, BODY) for _ in range(window)])
        pub = n / (time.perf_counter() - t0)
        sub = mq.subscribe(topic, "g", prefetch=2000)
        got = 0
        t0 = time.perf_counter()
        while got < n:
            for m in await sub.receive(1000, 5.0):
                await m.ack()
                got += 1
        await sub.flush()
        con = n / (time.perf_counter() - t0)
    return pub, con


def tls_vs_plain(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for tls in (False, True):
        with server(users=True, tls=tls) as (_, url, options):
            pub, con = asyncio.run(_throughput(url, options, n))
        name = "tls" if tls else "plain"
        out[f"{name}_publish_per_s"] = pub
        out[f"{name}_consume_per_s"] = con
    out["tls_publish_ratio"] = out["tls_publish_per_s"] / out["plain_publish_per_s"]
    out["tls_consume_ratio"] = out["tls_consume_per_s"] / out["plain_consume_per_s"]
    return out


def emit(figure: str, values: list[float], unit: str) -> None:
    print(json.dumps({"bench": "security", "figure": figure, "unit": unit,
                      "median": round(statistics.median(values), 4),
                      "min": round(min(values), 4), "max": round(max(values), 4),
                      "runs": len(values), "cpu_count": os.cpu_count(),
                      "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)


def repeat(runs: int, fn: Callable[[], dict[str, float]]) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    for _ in range(runs):
        for k, v in fn().items():
            results.setdefault(k, []).append(v)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--only", default="scram,login_cpu,logins,tls")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if "scram" in only:
        emit("scram_server_us", [scram_server_us() for _ in range(args.runs)], "µs/login")
    if "login_cpu" in only:
        pairs = [login_cpu_ms() for _ in range(args.runs)]
        emit("login_cpu_ms", [a for a, _ in pairs], "ms server CPU per connection+login")
        emit("plain_connect_cpu_ms", [b for _, b in pairs], "ms server CPU per connection")
    if "logins" in only:
        res = repeat(args.runs, lambda: logins_while_publishing(args.seconds))
        units = {"logins_per_s": "logins/s", "publish_vs_quiet": "ratio"}
        for k, v in res.items():
            emit(k, v, units.get(k, "msgs/s"))
    if "tls" in only:
        res = repeat(args.runs, lambda: tls_vs_plain(args.messages))
        for k, v in res.items():
            emit(k, v, "ratio" if k.endswith("ratio") else "msgs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
