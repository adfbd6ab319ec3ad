#!/usr/bin/env python3
"""Longest event-loop stall of a ``tidemq serve`` process while snapshots run under load.

Each run starts a real server (``tidemq serve`` next to this Python, a fresh temporary data
folder, 127.0.0.1, a free port), creates topic ``storm`` (``--partitions``, ``--durability``) and
group ``g``, then for ``--seconds`` runs, each in its own process:

- a publish storm: ``--producers`` processes calling ``AsyncClient.publish_batch`` (``--batch``
  bodies of 100 bytes, at most ``--inflight`` calls in flight each), paced to ``--rate``
  messages/s in total (0, the default: as fast as they go);
- ``--consumers`` members of group ``g`` acking every message one by one (``await msg.ack()``).
  The broker journals producer state, deliveries and acks; after 20,000 journal events
  (checked about once a second; or 60 s after the last snapshot) it snapshots the topic
  (``SNAPSHOT_EVERY_EVENTS`` in ``src/tidemq/broker/_topic.py``): sync the logs, write
  ``__broker/snap-*``. A group's consecutive events are coalesced into one before they are
  counted, so what drives snapshots is mostly the number of publish batches on the wire, not
  of messages: hence the small default ``--batch 1`` (about one snapshot every 5-10 s with
  the defaults on a 2-core machine);
- a probe: a raw TCP connection speaking the sans-IO codec of ``tidemq.protocol`` (``Hello``,
  then ``Ping`` every 1 ms, one outstanding at a time), timing each ``Ping`` -> ``Pong`` round
  trip with ``time.perf_counter_ns``. The server answers a ``Ping`` from its event loop, so
  a round trip is at least as long as whatever the loop was busy with when it arrived.

Meanwhile this driver polls ``<data>/__broker/snap-*`` every 50 ms and counts rewrites (a new
inode or mtime) during the window.

Run:  .venv/bin/python benchmarks/loop_stall_bench.py [--seconds 20] [--runs 3]
          [--durability interval always] [--rate 0] [--batch 1] [--producers 2]
          [--consumers 1] [--partitions 1] [--load-nice 0]

``--producers 0 --consumers 0`` measures the probe alone: the machine's own noise floor.

Output: one JSON line per run, then one summary line per durability:

  {"bench": "loop_stall", "durability": "interval", "run": 1, "seconds": 20.0,
   "pings": 14000, "rtt_p50_ms": 0.31, "rtt_p99_ms": 2.1, "rtt_p999_ms": 4.0,
   "rtt_max_ms": 6.2, "published": 400000, "snapshots_seen": 9, "consumed": 399000,
   "rtt_max_near_snapshot_ms": 6.2, "rtt_max_elsewhere_ms": 4.1, "pings_over_5ms": 2,
   "server_cpu_percent_of_core": 71.0, "snapshot_at_s": [4.1, 11.7],
   "worst_rtt_at_s": [[4.09, 6.2], ...], "rate_target": 0.0, "batch": 1, "producers": 2,
   "consumers": 1, "partitions": 1}

- ``rtt_*_ms``: percentiles of the probe's round trips (nearest rank); ``rtt_max_ms`` is the
  longest stall seen (plus one loopback round trip). Target: max <= 5 ms (not asserted).
- ``published`` / ``consumed``: messages confirmed to the producers / received and acked.
- ``snapshots_seen``: snapshot files rewritten during the window (a lower bound if two
  rewrites of one file fall in one 50 ms poll).
- ``rtt_max_near_snapshot_ms``: the longest round trip that overlaps (within 25 ms, for the
  file system's coarse timestamps) the mtime of a snapshot seen; ``rtt_max_elsewhere_ms``:
  the longest of the others. Their difference is what snapshots add to the tail.
- ``snapshot_at_s`` / ``worst_rtt_at_s``: when (seconds into the window) each snapshot was
  written, and the five longest round trips as [when, ms].
- ``server_cpu_percent_of_core``: the server's CPU during the window; near 100 the loop is
  saturated and round trips measure queueing, not stalls.

The probe, producers, consumers and server share the machine: on a machine with few cores
(or a busy one) the probe's own scheduling delays land in the round trips too. Compare
``rtt_max_near_snapshot_ms`` with ``rtt_max_elsewhere_ms`` before blaming the server, and
``--load-nice 10`` runs the load processes at a lower priority than the server and the probe.
The summary line, {"bench": "loop_stall", "summary": true, ...}, holds {"median", "min",
"max"} of every numeric field over the runs of one durability.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import cpu_ticks, free_port, tidemq_command  # noqa: E402

BODY = b"x" * 100
TOPIC, GROUP = "storm", "g"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NEAR_NS = 25_000_000  # a round trip within this of a snapshot's mtime is "near" it


# --- child processes ---------------------------------------------------------------------------




def _preexec(nice: int = 0) -> Any:
    def run() -> None:  # in the child before exec
        try:
            import ctypes

            # PR_SET_PDEATHSIG: SIGTERM if this benchmark dies, even by SIGKILL.
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
        except Exception:  # noqa: BLE001 - best effort, Linux only
            pass
        if nice:
            os.nice(nice)

    return run


class Child:
    """A subprocess whose stdout lines arrive in a queue (read by a thread, so a child never
    blocks on a full pipe) and whose stderr goes to a log file. ``stop()`` always ends it."""

    def __init__(self, name: str, cmd: list[str], log_path: str, *, nice: int = 0,
                 stdin: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self._log, start_new_session=True,
            preexec_fn=_preexec(nice))
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put("")  # EOF

    def line(self, deadline: float) -> str:
        """The next stdout line; "" at EOF; RuntimeError when the deadline passes first."""
        try:
            return self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no output in time; stderr: {self.log_tail()}") from None

    def expect(self, pattern: str, deadline: float) -> re.Match[str]:
        while True:
            line = self.line(deadline)
            if not line:
                raise RuntimeError(f"{self.name} exited ({self.proc.wait()}): {self.log_tail()}")
            m = re.search(pattern, line)
            if m:
                return m

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self.log_path).read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (unless it already exited), wait, SIGKILL if it does not end."""
        rc: int | None = None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        finally:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass
            self._log.close()
        return rc


def start_server(tmp: str, loop: str) -> tuple[Child, int]:
    cmd = [*tidemq_command(), "serve", "--data", os.path.join(tmp, "data"),
           "--host", "127.0.0.1", "--port", "0", "--http-port", str(free_port()),
           "--loop", loop, "--log-level", "WARNING"]
    server = Child("server", cmd, os.path.join(tmp, "server.log"))
    try:
        deadline = time.monotonic() + 30
        port = int(server.expect(r"listening on \S+:(\d+)\s*$", deadline).group(1))
        while True:  # it said so; check that it really accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline or server.proc.poll() is not None:
                    raise RuntimeError(
                        f"server does not accept connections: {server.log_tail()}") from exc
                time.sleep(0.05)
    except BaseException:
        server.stop()
        raise
    return server, port



# --- the snapshot watcher ------------------------------------------------------------------------


class SnapshotWatcher:
    """Polls ``<data>/__broker/snap-*`` every ``interval`` s in a thread; after ``arm()``, each
    new file or new (inode, mtime) of one counts as a snapshot, and its mtime is kept."""

    def __init__(self, data: str, interval: float = 0.05) -> None:
        self.folder = Path(data) / "__broker"
        self.interval = interval
        self.seen: dict[str, tuple[int, int]] = {}
        self.mtimes_ns: list[int] = []
        self._armed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        try:
            names = [p for p in self.folder.glob("snap-*") if not p.name.endswith(".tmp")]
        except OSError:
            return
        for p in names:
            try:
                st = p.stat()
            except OSError:
                continue  # replaced while we looked: the next poll sees it
            key = (st.st_ino, st.st_mtime_ns)
            if self.seen.get(p.name) != key:
                self.seen[p.name] = key
                if self._armed:
                    self.mtimes_ns.append(st.st_mtime_ns)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def arm(self) -> None:
        self._poll()  # the baseline: files written before the window do not count
        self._armed = True
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        if self._armed:
            self._poll()
        self._armed = False


# --- workers (run as `loop_stall_bench.py --worker ROLE ...`) ------------------------------------


def _wait_go() -> bool:
    print("ready", flush=True)
    return sys.stdin.readline().strip() == "go"


async def _producer(a: argparse.Namespace) -> dict[str, Any]:
    import tidemq

    async with tidemq.AsyncClient(a.url) as mq:
        await mq.describe_topic(TOPIC)  # connected, topic known
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, _wait_go):
            return {}
        bodies = [BODY] * a.batch
        published = failed = 0
        pending: set[asyncio.Future[Any]] = set()

        def done(f: asyncio.Future[Any]) -> None:
            nonlocal published, failed
            pending.discard(f)
            if f.cancelled() or f.exception() is not None:
                failed += 1
            else:
                published += a.batch

        period = a.batch / a.rate if a.rate > 0 else 0.0
        t0 = time.monotonic()
        end, due = t0 + a.seconds, t0
        while (now := time.monotonic()) < end:
            if len(pending) >= a.inflight:
                await asyncio.wait(pending, timeout=end - now,
                                   return_when=asyncio.FIRST_COMPLETED)
                continue
            if period:
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                due = max(due + period, now - 0.1)  # catch up at most 100 ms of lag
            task = asyncio.ensure_future(mq.publish_batch(TOPIC, bodies))
            pending.add(task)
            task.add_done_callback(done)
        if pending:
            await asyncio.wait(pending, timeout=10)
        for left in list(pending):
            left.cancel()
        return {"published": published, "failed_batches": failed}


async def _consumer(a: argparse.Namespace) -> dict[str, Any]:
    import tidemq

    async with tidemq.AsyncClient(a.url) as mq:
        sub = await mq.subscribe(TOPIC, GROUP, prefetch=a.prefetch)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, _wait_go):
            return {}
        consumed = 0
        end = time.monotonic() + a.seconds
        while (left := end - time.monotonic()) > 0:
            for m in await sub.receive(1000, min(0.1, left)):
                await m.ack()
                consumed += 1
        await sub.close()
        return {"consumed": consumed}


def _probe(a: argparse.Namespace) -> dict[str, Any]:
    from tidemq import protocol as P

    port = int(a.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dec = P.Decoder()
    buf = bytearray(1 << 16)

    def frame() -> Any:
        while (f := dec.next_frame()) is P.NEED_DATA:
            n = sock.recv_into(buf)
            if not n:
                raise RuntimeError("the server closed the probe connection")
            dec.feed(memoryview(buf)[:n])
        return f

    sock.sendall(P.encode(P.Hello(
        request_id=1, versions=list(P.SUPPORTED_VERSIONS), client_id=uuid.uuid4().hex,
        client_name="loop-stall-probe", max_frame_size=P.DEFAULT_MAX_FRAME_SIZE,
        heartbeat_ms=0)))
    ok = frame()
    if not isinstance(ok, P.HelloOk):
        raise RuntimeError(f"handshake refused: {ok!r}")
    if not _wait_go():
        return {}
    period = a.ping_interval_ms * 1_000_000
    send_wall_us: list[int] = []  # wall clock (for matching snapshot mtimes) of each ping
    rtt_ns: list[int] = []
    pong, ping, perf, wall = P.Pong, P.Ping, time.perf_counter_ns, time.time_ns
    rid = 1
    t_end = perf() + int(a.seconds * 1e9)
    while (t0 := perf()) < t_end:
        rid = rid + 1 if rid < 0xFFFF_FFFF else 2
        w = wall()
        sock.sendall(P.encode(ping(request_id=rid)))
        while True:
            f = frame()
            if type(f) is pong and f.request_id == rid:
                break
            if type(f) is ping:  # a server heartbeat (not expected: we are never silent)
                sock.sendall(P.encode(pong(request_id=f.request_id)))
            elif isinstance(f, (P.Error, P.GoAway)):
                raise RuntimeError(f"server sent {f!r}")
        t1 = perf()
        rtt_ns.append(t1 - t0)
        send_wall_us.append(w // 1000)
        nxt = t0 + period
        if nxt > t1:
            time.sleep((nxt - t1) / 1e9)
    sock.close()
    return {"send_wall_us": send_wall_us, "rtt_us": [round(r / 1000, 1) for r in rtt_ns]}


def worker_main(a: argparse.Namespace) -> int:
    # The driver stops workers with SIGTERM only when something went wrong: die quietly.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    if a.worker == "probe":
        res = _probe(a)
    else:
        coro = _producer(a) if a.worker == "producer" else _consumer(a)
        res = asyncio.run(coro)
    if res:
        print("result " + json.dumps(res), flush=True)
    return 0


# --- the driver ----------------------------------------------------------------------------------


def _pct(sorted_vals: list[float], p: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    return sorted_vals[max(0, min(len(sorted_vals) - 1, math.ceil(p * len(sorted_vals)) - 1))]


def _worker_cmd(role: str, url: str, a: argparse.Namespace) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--worker", role, "--url", url,
            "--seconds", str(a.seconds), "--rate", str(a.rate / max(1, a.producers)),
            "--batch", str(a.batch), "--inflight", str(a.inflight),
            "--prefetch", str(a.prefetch), "--ping-interval-ms", str(a.ping_interval_ms)]


def one_run(run: int, durability: str, a: argparse.Namespace) -> dict[str, Any]:
    import tidemq

    tmp = tempfile.mkdtemp(prefix="tidemq-stall-", dir=a.tmpdir)
    children: list[Child] = []
    server: Child | None = None
    watcher: SnapshotWatcher | None = None
    try:
        server, port = start_server(tmp, a.loop)
        url = f"tidemq://127.0.0.1:{port}"
        with tidemq.Client(url) as mq:
            mq.create_topic(TOPIC, partitions=a.partitions, durability=durability)
            mq.create_group(TOPIC, GROUP)
        roles = (["consumer"] * a.consumers + ["producer"] * a.producers + ["probe"])
        for i, role in enumerate(roles):
            children.append(Child(
                f"{role}-{i}", _worker_cmd(role, url, a), os.path.join(tmp, f"{role}-{i}.log"),
                nice=0 if role == "probe" else a.load_nice, stdin=True))
        deadline = time.monotonic() + 60
        for c in children:
            c.expect(r"^ready$", deadline)
        watcher = SnapshotWatcher(os.path.join(tmp, "data"))
        watcher.arm()
        cpu0, t0, go_wall_ns = cpu_ticks(server.proc.pid), time.monotonic(), time.time_ns()
        for c in children:
            c.send("go\n")
        results: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + a.seconds + 60
        for c in children:
            m = c.expect(r"^result (.*)$", deadline)
            results.setdefault(c.name.split("-")[0], []).append(json.loads(m.group(1)))
        cpu1, dt = cpu_ticks(server.proc.pid), time.monotonic() - t0
        watcher.stop()
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server died during the run: {server.log_tail()}")
    finally:
        if watcher is not None:
            watcher.stop()
        try:
            for c in children:
                c.stop(10)
            if server is not None:
                rc = server.stop()
                if rc not in (0, None):
                    print(f"loop_stall_bench: server exited with {rc}: {server.log_tail()}",
                          file=sys.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    probe = results["probe"][0]
    rtts = probe["rtt_us"]
    srt = sorted(rtts)
    # Rewrites in the window (not those while the workers wrote their results).
    snaps = sorted(t for t in watcher.mtimes_ns
                   if go_wall_ns - NEAR_NS <= t <= go_wall_ns + int(a.seconds * 1e9) + NEAR_NS)
    near: list[float] = []
    away: list[float] = []
    for w_us, r_us in zip(probe["send_wall_us"], rtts, strict=True):
        lo, hi = w_us * 1000 - NEAR_NS, (w_us + r_us) * 1000 + NEAR_NS
        (near if any(lo <= s <= hi for s in snaps) else away).append(r_us)
    ms = 1000.0
    go_us = go_wall_ns // 1000
    worst = sorted(range(len(rtts)), key=rtts.__getitem__)[-5:][::-1]
    return {
        "bench": "loop_stall", "durability": durability, "run": run,
        "seconds": round(dt, 3), "pings": len(rtts),
        "rtt_p50_ms": round(_pct(srt, 0.5) / ms, 3), "rtt_p99_ms": round(_pct(srt, 0.99) / ms, 3),
        "rtt_p999_ms": round(_pct(srt, 0.999) / ms, 3), "rtt_max_ms": round(srt[-1] / ms, 3),
        "published": sum(r["published"] for r in results.get("producer", [])),
        "snapshots_seen": len(snaps),
        "consumed": sum(r["consumed"] for r in results.get("consumer", [])),
        "rtt_max_near_snapshot_ms": round(max(near) / ms, 3) if near else None,
        "rtt_max_elsewhere_ms": round(max(away) / ms, 3) if away else None,
        "pings_over_5ms": sum(1 for r in rtts if r > 5000),
        "server_cpu_percent_of_core": round(100 * (cpu1 - cpu0) / CLK_TCK / dt, 1),
        # When (s after the start of the window) the snapshots and the 5 longest round trips
        # happened, to line them up by eye.
        "snapshot_at_s": [round((t // 1000 - go_us) / 1e6, 3) for t in snaps],
        "worst_rtt_at_s": [[round((probe["send_wall_us"][i] - go_us) / 1e6, 3),
                            round(rtts[i] / ms, 3)] for i in worst],
        "rate_target": a.rate, "batch": a.batch, "producers": a.producers,
        "consumers": a.consumers, "partitions": a.partitions,
    }


def summary(durability: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "loop_stall", "summary": True, "durability": durability,
                           "runs": len(results)}
    skip = {"run", "rate_target", "batch", "producers", "consumers", "partitions"}
    for key in results[0]:
        if key in skip:
            continue
        vals = [r[key] for r in results
                if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
        if vals:
            out[key] = {"median": round(statistics.median(vals), 3), "min": min(vals),
                        "max": max(vals)}
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="length of the load window per run (default 20)")
    ap.add_argument("--runs", type=int, default=3, help="runs per durability (default 3)")
    ap.add_argument("--durability", nargs="+", choices=["always", "interval", "never"],
                    default=["interval", "always"],
                    help="topic durabilities to run, in order (default: interval always)")
    ap.add_argument("--rate", type=float, default=0,
                    help="messages/s published, all producers together (default 0: unpaced)")
    ap.add_argument("--producers", type=int, default=2, help="producer processes (default 2)")
    ap.add_argument("--consumers", type=int, default=1, help="consumer processes (default 1)")
    ap.add_argument("--partitions", type=int, default=1,
                    help="partitions of the topic (default 1)")
    ap.add_argument("--batch", type=int, default=1, help="messages per publish_batch (default 1)")
    ap.add_argument("--inflight", type=int, default=8,
                    help="publish_batch calls in flight per producer (default 8)")
    ap.add_argument("--prefetch", type=int, default=1000, help="consumer prefetch (default 1000)")
    ap.add_argument("--ping-interval-ms", type=float, default=1.0,
                    help="probe: time from one ping to the next (default 1 ms)")
    ap.add_argument("--load-nice", type=int, default=0,
                    help="nice increment for producers and consumers (default 0)")
    ap.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                    help="the server's event loop (default auto: uvloop if installed)")
    ap.add_argument("--tmpdir", default=None, help="where the temporary data folders go")
    ap.add_argument("--worker", choices=["producer", "consumer", "probe"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker_main(a)
    if a.seconds <= 0 or a.runs < 1 or a.producers < 0 or a.consumers < 0 or a.partitions < 1 or a.batch < 1 \
            or a.inflight < 1 or a.rate < 0:
        ap.error("--seconds, --runs, --partitions, --batch and --inflight must be positive, "
                 "--producers, --consumers and --rate >= 0")

    signal.signal(signal.SIGTERM, _interrupt)  # unwind like Ctrl-C: every `finally` runs
    try:
        for durability in a.durability:
            results = []
            for run in range(1, a.runs + 1):
                res = one_run(run, durability, a)
                if not res["snapshots_seen"] and a.producers and a.consumers:
                    print("loop_stall_bench: no snapshot was written in this run's window "
                          "(longer --seconds, smaller --batch?)", file=sys.stderr)
                results.append(res)
                print(json.dumps(res), flush=True)
            print(json.dumps(summary(durability, results)), flush=True)
    except KeyboardInterrupt:
        print("loop_stall_bench: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
