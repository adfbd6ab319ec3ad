"""TideMQ and its peers, measured in one run with equal work, written to docs/.

Run:  .venv/bin/python benchmarks/compare.py --runs 3
      (writes docs/benchmarks.json, docs/benchmarks.md and docs/benchmarks.png)

      --scale 0.1        a smoke run (counts × 0.1); --no-write prints only
      --only ROW ...     only these rows (ids as in the JSON); --systems tidemq redis ...
      --no-profile       skip the py-spy phase ("where the time goes")
      --from-json FILE   re-render the docs from saved figures

Every figure is the median of ``--runs`` runs with min–max beside it; every run measures every
row for every system in the same order. Each cell runs in a fresh process
(``benchmarks/_cells.py``) against a fresh server (TideMQ, a private ``redis-server`` per
durability class, a private ``nats-server -js``) — except RabbitMQ, the machine's shared
broker at 127.0.0.1:5672 (guest/guest); its queues are named per run and deleted. CPU seconds
per million messages: the client process (``getrusage``) and the server processes (``/proc``)
over exactly the measured interval.

Needs: RabbitMQ on 5672, ``redis-server`` and ``nats-server`` on PATH, pika, nats-py, redis-py;
matplotlib for the plot and py-spy for the profile phase (``pip install -e '.[bench,peers]'``;
without them the page says the plot or the profile is missing).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOCS = os.path.join(ROOT, "docs")
sys.path.insert(0, HERE)

from _procs import Server, pids_named, start_nats, start_redis, start_tidemq  # noqa: E402

# --- what is measured ----------------------------------------------------------------------

# column id -> (label on the page, system, how it is set up)
SYSTEMS: dict[str, tuple[str, str, str]] = {
    "tidemq-always": ("TideMQ `always`", "tidemq", "always"),
    "tidemq-interval": ("TideMQ `interval`", "tidemq", "interval"),
    "rabbitmq-quorum": ("RabbitMQ quorum queue", "rabbitmq", ""),
    "redis-always": ("Redis `appendfsync always`", "redis", "always"),
    "redis-everysec": ("Redis `appendfsync everysec`", "redis", "everysec"),
    "nats-js": ("NATS JetStream (file, defaults)", "nats", ""),
    "embedded": ("TideMQ embedded", "embedded", "interval"),
}

KIB = 1024


@dataclass
class Row:
    id: str
    label: str
    case: str
    systems: list[str]
    work: dict[str, Any]
    kind: str = "rate"  # rate (msgs/s) | latency (ms)
    short: str = ""  # tick label of the plot
    # cells that cannot do the work: column id -> why (shown in the cell)
    cannot: dict[str, str] = field(default_factory=dict)


NO_JS_FSYNC = ("cannot: JetStream 2.9 has no fsync-per-write setting (`sync_interval` is an "
               "unknown field in 2.9.10)")
NO_RABBIT_CACHE = ("n/a: RabbitMQ confirms a persistent message only once it is on disk "
                   "(see the fsync table)")


def rows(scale: float) -> list[Row]:
    def n(x: int) -> int:
        return max(1000, int(x * scale) // 1000 * 1000)

    fsync = ["tidemq-always", "rabbitmq-quorum", "redis-always"]
    cache = ["tidemq-interval", "redis-everysec", "nats-js"]
    consume = ["tidemq-interval", "rabbitmq-quorum", "nats-js", "redis-everysec"]
    out: list[Row] = []
    for size, count, name in ((100, 80_000, "100 B"), (KIB, 40_000, "1 KiB"),
                              (16 * KIB, 10_000, "16 KiB")):
        out.append(Row(f"publish_fsync_{size}", f"publish {name}, 1 producer, "
                       "1,000 unconfirmed", "publish", fsync,
                       {"size": size, "n": n(count), "window": 1000},
                       cannot={"nats-js": NO_JS_FSYNC}, short=f"{name}\n1 × 1,000"))
    out.append(Row("publish_fsync_16x100", "publish 100 B, 16 producers × 100 unconfirmed",
                   "publish_multi", fsync,
                   {"size": 100, "n": n(96_000), "window": 100, "producers": 16},
                   cannot={"nats-js": NO_JS_FSYNC}, short="100 B\n16 × 100"))
    for size, count, name in ((100, 80_000, "100 B"), (KIB, 40_000, "1 KiB"),
                              (16 * KIB, 10_000, "16 KiB")):
        out.append(Row(f"publish_cache_{size}", f"publish {name}, 1 producer, "
                       "1,000 unconfirmed", "publish", cache,
                       {"size": size, "n": n(count), "window": 1000},
                       cannot={"rabbitmq-quorum": NO_RABBIT_CACHE},
                       short=f"publish\n{name}"))
    out.append(Row("publish_batch_1000", "publish_batch of 1,000 × 100 B, 4 batches "
                   "unconfirmed", "batch", ["tidemq-interval"],
                   {"size": 100, "n": n(2_000_000)},
                   cannot={"redis-everysec": "see the per-message row: redis-py pipelining "
                           "is its batch", "nats-js": "no batch publish in JetStream 2.9"}))
    for rate, secs in ((5_000, 6.0), (50_000, 2.0)):
        out.append(Row(f"latency_{rate}", f"e2e latency, 100 B at {rate:,} msgs/s offered",
                       "latency", [*cache, "rabbitmq-quorum"],
                       {"size": 100, "rate": rate, "seconds": max(0.5, secs * scale)},
                       kind="latency", short=f"{rate:,}/s"))
    out.append(Row("consume_each", "consume 100 B + ack each (acks answered)", "consume_each",
                   consume, {"size": 100, "n": n(100_000)}, short="consume\nack each"))
    out.append(Row("consume_batch", "consume 100 B + batch ack per 1,000 (acks answered)",
                   "consume_batch", consume, {"size": 100, "n": n(100_000)},
                   short="consume\nbatch ack"))
    out.append(Row("embedded_publish", "publish 100 B one at a time", "publish", ["embedded"],
                   {"size": 100, "n": n(200_000)}))
    out.append(Row("embedded_consume_each", "receive + ack each", "consume_each",
                   ["embedded"], {"size": 100, "n": n(200_000)}))
    out.append(Row("embedded_consume_batch", "receive + batch ack", "consume_batch",
                   ["embedded"], {"size": 100, "n": n(400_000)}))
    for r in out:  # the work goes into the label: the page shows it, the JSON holds it
        w = r.work
        r.label += (f"; {w['seconds']:g} s" if "seconds" in w else f"; {w['n']:,} msgs")
    return out


TABLES: list[tuple[str, str, list[str], Callable[[str], bool]]] = [
    ("Fsync before confirm",
     "A confirm means the message is on disk (fsync/fdatasync) on this machine.",
     ["tidemq-always", "rabbitmq-quorum", "redis-always", "nats-js"],
     lambda r: r.startswith("publish_fsync")),
    ("Page cache, periodic fsync",
     "A confirm means the server has the message in memory / the page cache; it is fsynced "
     "later (TideMQ every 100 ms by default, Redis every second, JetStream every 2 minutes "
     "by default). The latency rows add RabbitMQ's quorum queue for reference: it has no "
     "page-cache mode, so its latency includes an fsync (publisher and consumer on their "
     "own connections, a push consumer acking each message). Latency is from the *scheduled* "
     "publish time: when a client process cannot keep up with the offered rate (its CPU per "
     "message × rate exceeds one core, shown in the cell), the backlog shows as latency, "
     "as it would for a real producer. At 5,000 msgs/s the CPU per message includes the "
     "paced loops' wake-ups, so it is higher than in the throughput rows.",
     ["tidemq-interval", "redis-everysec", "nats-js", "rabbitmq-quorum"],
     lambda r: r.startswith(("publish_cache", "publish_batch", "latency"))),
    ("Consume (queue filled beforehand, one consumer, prefetch 2,000)",
     "The clock stops when the server has answered every ack.",
     ["tidemq-interval", "rabbitmq-quorum", "nats-js", "redis-everysec"],
     lambda r: r.startswith("consume")),
    ("Embedded (in-process, no network)", "TideMQ's `Client(folder)`; topic `interval`.",
     ["embedded"], lambda r: r.startswith("embedded")),
]

# Issue 11, point 5: (id, text, kind, goal, how to read the measured value)
TARGETS: list[dict[str, Any]] = [
    {"id": "batch", "text": "publish_batch of 1,000, msgs/s", "op": ">=", "goal": 2_000_000,
     "figure": "publish_batch_1000.tidemq-interval"},
    {"id": "consume_batch", "text": "consume + batch ack (acks answered), msgs/s", "op": ">=",
     "goal": 600_000, "figure": "consume_batch.tidemq-interval"},
    {"id": "consume_each", "text": "consume + ack each (acks answered), msgs/s", "op": ">=",
     "goal": 300_000, "figure": "consume_each.tidemq-interval"},
    {"id": "publish", "text": "per-message async publish (`interval`), msgs/s", "op": ">=",
     "goal": 300_000, "figure": "publish_cache_100.tidemq-interval"},
    {"id": "publish_vs_peer", "text": "per-message publish ÷ best peer's (100 B, any class)",
     "op": ">=", "goal": 1.5, "ratio": ("publish_cache_100.tidemq-interval",
                                        ["publish_cache_100.redis-everysec",
                                         "publish_cache_100.nats-js",
                                         "publish_fsync_100.rabbitmq-quorum",
                                         "publish_fsync_100.redis-always"])},
    {"id": "always", "text": "`always`, 16 producers × 100 unconfirmed, msgs/s", "op": ">=",
     "goal": 200_000, "figure": "publish_fsync_16x100.tidemq-always"},
    {"id": "always_vs_rabbit", "text": "the same ÷ RabbitMQ quorum's", "op": ">=", "goal": 3,
     "ratio": ("publish_fsync_16x100.tidemq-always", ["publish_fsync_16x100.rabbitmq-quorum"])},
    {"id": "always_vs_redis", "text": "the same ÷ Redis `appendfsync always`'s", "op": ">=",
     "goal": 2,
     "ratio": ("publish_fsync_16x100.tidemq-always", ["publish_fsync_16x100.redis-always"])},
    {"id": "lat_p50", "text": "e2e latency p50 at 5,000 msgs/s, ms", "op": "<=", "goal": 0.4,
     "figure": "latency_5000.tidemq-interval", "field": "p50",
     "peer": "latency_5000.redis-everysec"},
    {"id": "lat_p99", "text": "e2e latency p99 at 5,000 msgs/s, ms", "op": "<=", "goal": 1,
     "figure": "latency_5000.tidemq-interval", "field": "p99",
     "peer": "latency_5000.redis-everysec"},
    {"id": "lat_p999", "text": "e2e latency p99.9 at 5,000 msgs/s, ms", "op": "<=", "goal": 3,
     "figure": "latency_5000.tidemq-interval", "field": "p999",
     "peer": "latency_5000.redis-everysec"},
    {"id": "lat50_p99", "text": "e2e latency p99 at 50,000 msgs/s, ms", "op": "<=", "goal": 5,
     "figure": "latency_50000.tidemq-interval", "field": "p99"},
    {"id": "emb_publish", "text": "embedded publish one at a time, msgs/s", "op": ">=",
     "goal": 200_000, "figure": "embedded_publish.embedded"},
    {"id": "emb_each", "text": "embedded receive + ack each, msgs/s", "op": ">=",
     "goal": 250_000, "figure": "embedded_consume_each.embedded"},
    {"id": "emb_batch", "text": "embedded receive + batch ack, msgs/s", "op": ">=",
     "goal": 600_000, "figure": "embedded_consume_batch.embedded"},
]

CLIENTS = {
    "tidemq": "TideMQ `AsyncClient` (tidemq://) on asyncio; server `python -m tidemq.server` "
              "on uvloop (`--loop auto`); 1 partition; per-message `publish` futures in a "
              "sliding window; consume with `receive(1000)` and `await sub.flush()` at the end",
    "rabbitmq": "pika {pika}: publish through `SelectConnection`s on one ioloop, persistent "
                "messages to one durable quorum queue, publisher confirms (RabbitMQ's "
                "multiple-acks), a sliding window of unconfirmed messages; consume through "
                "`BlockingConnection.consume` (prefetch 2,000), `basic_ack` per message or "
                "`multiple=True` per 1,000, then a synchronous `queue_declare(passive)` on the "
                "same channel, answered only after the acks before it were processed",
    "nats": "nats-py {nats}: one stream, file storage, JetStream defaults; "
            "`publish_async` with the PubAck futures in a sliding window; consume through a "
            "pull consumer, `fetch(1000)`, `ack()` per message (AckExplicit) or the last of "
            "each batch (AckAll), then `flush()` and `consumer_info()` until no ack is pending; "
            "latency through a push consumer with a callback",
    "redis": "redis-py {redis}: Redis Streams; `XADD` per message, pipelined (one pipeline "
             "per window, replies read); 16 producers = 16 `redis.asyncio` connections; consume "
             "with `XREADGROUP COUNT 1000`, `XACK` per message pipelined or one `XACK` of 1,000 "
             "ids; latency: a producer connection pacing `XADD`s (the messages due at once go "
             "in one pipeline) and a consumer blocking on `XREADGROUP`",
}


# --- running -------------------------------------------------------------------------------


def _server_for(system: str, setting: str) -> tuple[Server | None, dict[str, Any]]:
    if system == "tidemq":
        s = start_tidemq("--loop", "auto")
        return s, {"url": f"tidemq://127.0.0.1:{s.port}", "durability": setting,
                   "server_pids": s.pids}
    if system == "redis":
        s = start_redis(setting)
        return s, {"port": s.port, "server_pids": s.pids}
    if system == "nats":
        s = start_nats()
        return s, {"url": f"nats://127.0.0.1:{s.port}", "server_pids": s.pids}
    if system == "rabbitmq":
        return None, {"server_pids": pids_named("beam.smp")}
    return None, {"durability": setting}


class Profiler:
    """py-spy on the given pids between the cell's START and STOP lines."""

    def __init__(self, pids: dict[str, int], rate: int = 200) -> None:
        self.pids, self.rate = pids, rate
        self.procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}

    def start(self) -> None:
        self.t0 = time.perf_counter()
        for who, pid in self.pids.items():
            out = tempfile.mktemp(prefix=f"pyspy-{who}-", suffix=".txt")
            p = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"),
                                  "record", "--pid", str(pid), "--rate", str(self.rate),
                                  "--format", "raw", "--nonblocking", "-o", out],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs[who] = (p, out)

    def stop(self) -> dict[str, Any]:
        secs = time.perf_counter() - self.t0
        result: dict[str, Any] = {}
        for who, (p, out) in self.procs.items():
            p.send_signal(signal.SIGINT)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            try:
                with open(out) as f:
                    result[who] = _summarise(f.read(), secs, self.rate)
                os.unlink(out)
            except FileNotFoundError:
                result[who] = {"error": "py-spy wrote nothing (ptrace refused?)"}
        return result


def _summarise(raw: str, secs: float, rate: int) -> dict[str, Any]:
    """Collapsed stacks -> share of samples by leaf function, by leaf file, and busy share."""
    by_fn: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        leaf = stack.split(";")[-1]
        m = re.match(r"(.*) \((.*?)(?::(\d+))?\)$", leaf)
        fn, path = (m.group(1), m.group(2)) if m else (leaf, "?")
        short = _short(path)
        by_fn[f"{fn} ({short})"] += c
        by_file[short] += c
    if not total:
        return {"error": "no samples"}

    def share(c: int) -> float:
        return round(100 * c / total, 1)

    return {"samples": total, "seconds": round(secs, 1),
            "busy_pct": round(min(100.0, 100 * total / (rate * secs)), 1) if secs else None,
            "top_functions": [[k, share(v)] for k, v in by_fn.most_common(8)],
            "top_files": [[k, share(v)] for k, v in by_file.most_common(6)]}


def _short(path: str) -> str:
    for marker in ("/src/tidemq/", "site-packages/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1] if marker != "/src/tidemq/" else \
                "tidemq/" + path.split(marker, 1)[1]
    return os.path.basename(path) or path


def run_cell(row: Row, col: str, timeout: float,
             profile: bool = False) -> dict[str, Any]:
    _label, system, setting = SYSTEMS[col]
    for attempt in range(3):  # the tree may be mid-edit by someone else: retry, then report
        try:
            server, extra = _server_for(system, setting)
            break
        except Exception as exc:  # noqa: BLE001
            if attempt == 2:
                return {"error": f"server did not start: {exc}"[:300]}
            time.sleep(3)
    spec = {"system": system, "case": row.case, **row.work, **extra, "max_seconds": 60}
    try:
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "_cells.py"),
                                 json.dumps(spec)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        prof: Profiler | None = None
        result: dict[str, Any] | None = None
        prof_out: dict[str, Any] | None = None
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            if not line:
                break
            line = line.strip()
            if line == "START" and profile:
                pids = {"client": proc.pid}
                if server is not None:
                    pids["server"] = server.proc.pid
                prof = Profiler(pids)
                prof.start()
            elif line == "STOP" and prof is not None:
                prof_out = prof.stop()
                prof = None
            elif line.startswith("{"):
                result = json.loads(line)
            if time.monotonic() > deadline:
                proc.kill()
                break
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = proc.stderr.read() if proc.stderr else ""
        if result is None:
            tail = err.strip().splitlines()[-1:] if err.strip() else ["no output"]
            return {"error": tail[0][:300]}
        if prof_out is not None:
            result["profile"] = prof_out
        return result
    finally:
        if server is not None:
            server.stop()


def _cpu_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def measure(all_rows: list[Row], runs: int, systems: list[str] | None,
            timeout: float) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    cells: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    load: list[dict[str, Any]] = []
    for r in range(runs):
        b0, t0 = _cpu_busy()
        w0 = time.monotonic()
        la0 = os.getloadavg()[0]
        for row in all_rows:
            for col in row.systems:
                if systems and SYSTEMS[col][1] not in systems:
                    continue
                res = run_cell(row, col, timeout)
                cells[f"{row.id}.{col}"].append(res)
                shown = (f"{res['value']:,.3f} ms p50" if row.kind == "latency"
                         else f"{res['value']:,.0f} msgs/s") if "value" in res else res
                print(f"run {r + 1}/{runs}  {row.id:<24} {col:<16} {shown}", flush=True)
        b1, t1 = _cpu_busy()
        load.append({"run": r + 1, "seconds": round(time.monotonic() - w0),
                     "loadavg_1m_start": round(la0, 2),
                     "loadavg_1m_end": round(os.getloadavg()[0], 2),
                     "machine_cpu_busy_pct": round(100 * (b1 - b0) / max(1, t1 - t0), 1)})
    return cells, load


def summarise(all_rows: list[Row], cells: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    figs: dict[str, Any] = {}
    for row in all_rows:
        for col in row.systems:
            key = f"{row.id}.{col}"
            got = [c for c in cells.get(key, []) if "value" in c]
            errors = [c["error"] for c in cells.get(key, []) if "error" in c]
            if not got:
                if errors:
                    figs[key] = {"error": errors[0], "runs": 0}
                continue
            fig: dict[str, Any] = {"unit": "ms" if row.kind == "latency" else "msgs/s",
                                   "runs": len(got)}
            fields = ["p50", "p99", "p999"] if row.kind == "latency" else ["value"]
            for f in fields:
                vals = [c[f] for c in got]
                fig[f] = {"median": _round(statistics.median(vals)), "min": _round(min(vals)),
                          "max": _round(max(vals)), "all": [_round(v) for v in vals]}
            fig["n"] = got[0]["n"]
            fig["client_cpu_s_per_M"] = _round(statistics.median(
                [1e6 * c["client_cpu"] / c["n"] for c in got if c["n"]]), 2)
            srv = [1e6 * c["server_cpu"] / c["n"] for c in got
                   if c.get("server_cpu") is not None and c["n"]]
            fig["server_cpu_s_per_M"] = _round(statistics.median(srv), 2) if srv else None
            if row.kind == "latency":
                fig["missing"] = max(c.get("missing", 0) for c in got)
                # cores the client process needs at the offered rate: > 1 means it cannot
                # keep up in one Python process, and the latency grows with the backlog
                fig["client_cores_at_rate"] = _round(
                    fig["client_cpu_s_per_M"] * row.work["rate"] / 1e6, 2)
            if errors:
                fig["errors"] = errors
            figs[key] = fig
    return figs


def _round(v: float, nd: int | None = None) -> float:
    if nd is not None:
        return round(v, nd)
    if abs(v) >= 1000:
        return float(round(v))
    return round(v, 3) if abs(v) < 100 else round(v, 1)


def _median(figs: dict[str, Any], key: str, field: str = "value") -> float | None:
    f = figs.get(key)
    if not f or field not in f:
        return None
    return float(f[field]["median"])


def verdicts(figs: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        v: dict[str, Any] = {"id": t["id"], "text": t["text"], "op": t["op"], "goal": t["goal"]}
        if "ratio" in t:
            ours_key, peers = t["ratio"]
            ours = _median(figs, ours_key)
            theirs = [(p, _median(figs, p)) for p in peers]
            theirs = [(p, x) for p, x in theirs if x]
            if ours and theirs:
                best = max(theirs, key=lambda px: px[1])
                v["measured"] = round(ours / best[1], 2)
                v["against"] = best[0]
        else:
            m = _median(figs, t["figure"], t.get("field", "value"))
            if m is not None:
                v["measured"] = m
                if "peer" in t:
                    pm = _median(figs, t["peer"], t["field"])
                    v["peer"] = pm
        if "measured" in v:
            ok = v["measured"] >= t["goal"] if t["op"] == ">=" else v["measured"] <= t["goal"]
            if "peer" in v and v["peer"] is not None:
                ok = ok and v["measured"] <= v["peer"]
            v["met"] = bool(ok)
        out.append(v)
    return out


def profile_phase(scale: float, timeout: float) -> dict[str, Any]:
    """The TideMQ paths of issue 11 under py-spy (server and client); figures not counted."""
    def n(base: int) -> int:  # ~3-6 s of measuring each at scale 1
        return max(20_000, int(base * min(1.0, scale)) // 1000 * 1000)

    plan = [("publish one at a time (`publish`, 1,000 unconfirmed), `interval`",
             Row("p", "", "publish", [], {"size": 100, "n": n(1_000_000), "window": 1000}),
             "tidemq-interval"),
            ("`publish_batch` of 1,000, `interval`",
             Row("b", "", "batch", [], {"size": 100, "n": n(4_000_000)}), "tidemq-interval"),
            ("consume + ack each, `interval`",
             Row("c", "", "consume_each", [], {"size": 100, "n": n(800_000)}),
             "tidemq-interval"),
            ("`always`, 16 producers × 100 unconfirmed",
             Row("a", "", "publish_multi", [], {"size": 100, "n": n(200_000), "window": 100,
                                                "producers": 16}), "tidemq-always"),
            ("e2e latency at 5,000 msgs/s offered, `interval`",
             Row("l", "", "latency", [], kind="latency",
                 work={"size": 100, "rate": 5000, "seconds": max(1.0, 6.0 * min(1.0, scale))}),
             "tidemq-interval"),
            ("embedded publish one at a time",
             Row("e", "", "publish", [], {"size": 100, "n": n(400_000)}), "embedded"),
            ("embedded receive + ack each",
             Row("f", "", "consume_each", [], {"size": 100, "n": n(600_000)}), "embedded")]
    out: dict[str, Any] = {}
    for title, row, col in plan:
        res = run_cell(row, col, timeout, profile=True)
        out[title] = {"figure": _round(res["value"]) if "value" in res else None,
                      "unit": "ms p50" if row.kind == "latency" else "msgs/s",
                      **res.get("profile", {"error": res.get("error", "no profile")})}
        print(f"profile {title}: {out[title].get('figure')}", flush=True)
    return out


def _versions() -> dict[str, str]:
    v: dict[str, str] = {"python": platform.python_version()}
    for mod in ("pika", "nats", "redis"):
        try:
            from importlib.metadata import version

            v[mod] = version({"nats": "nats-py"}.get(mod, mod))
        except Exception:  # noqa: BLE001
            v[mod] = "?"
    for cmd, key in ((["redis-server", "--version"], "redis-server"),
                     (["nats-server", "--version"], "nats-server")):
        try:
            v[key] = subprocess.run(cmd, capture_output=True, text=True,
                                    timeout=10).stdout.split()[2 if key == "redis-server"
                                                               else 1].removeprefix("v=")
        except Exception:  # noqa: BLE001
            v[key] = "?"
    try:
        import pika

        c = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest")))
        ver = c._impl.server_properties.get("version", "?")
        v["rabbitmq"] = ver.decode() if isinstance(ver, bytes) else str(ver)
        c.close()
    except Exception:  # noqa: BLE001
        v["rabbitmq"] = "?"
    try:
        v["git_head"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "src"],
                               capture_output=True, text=True).stdout.splitlines()
        v["src_uncommitted_files"] = str(len(dirty))
    except Exception:  # noqa: BLE001
        pass
    return v


# --- the page ------------------------------------------------------------------------------


def fmt_num(v: float | None) -> str:
    """The one number format of the page (the doc test formats JSON numbers the same way)."""
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _span(f: dict[str, Any]) -> str:
    return f"**{fmt_num(f['median'])}** ({fmt_num(f['min'])}–{fmt_num(f['max'])})"


def _cell(row: dict[str, Any], col: str, figs: dict[str, Any]) -> list[str]:
    """Lines of one table cell (several for latency: p50/p99/p99.9)."""
    if col in row["cannot"] and col not in row["systems"]:
        return [row["cannot"][col]]
    if col not in row["systems"]:
        return [""]
    f = figs.get(f"{row['id']}.{col}")
    if not f:
        return ["not run"]
    if "error" in f and f.get("runs", 0) == 0:
        return [f"failed: `{f['error']}`"]
    cpu = (f"CPU s/M msgs: client {fmt_num(f['client_cpu_s_per_M'])}"
           + (f", server {fmt_num(f['server_cpu_s_per_M'])}"
              if f.get("server_cpu_s_per_M") is not None else ""))
    if row["kind"] == "latency":
        cores = f.get("client_cores_at_rate")
        lag = (f"<br>client needs {fmt_num(cores)} cores at this rate" if cores is not None
               and cores > 0.8 else "")
        return [f"p50 {_span(f['p50'])}<br>p99 {_span(f['p99'])}<br>"
                f"p99.9 {_span(f['p999'])}<br>{cpu}{lag}"]
    return [f"{_span(f['value'])}<br>{cpu}"]


def _bottleneck(p: dict[str, Any]) -> str:
    """One generated sentence: which process was busier, and its hottest function."""
    busy = {w: p[w]["busy_pct"] for w in ("server", "client")
            if isinstance(p.get(w), dict) and p[w].get("busy_pct") is not None}
    if not busy:
        return "No samples."
    who = max(busy, key=lambda w: busy[w])
    top = p[who]["top_functions"][0][0] if p[who].get("top_functions") else "?"
    if len(busy) == 1:
        return f"One process (in-process client): hottest function `{top}`."
    other = "server" if who == "client" else "client"
    if p.get("unit") == "ms p50":  # a fixed offered rate: neither process is saturated
        return (f"At a fixed rate the **{who}** is the busier process; its hottest function "
                f"is `{top}`.")
    return (f"Bound by the **{who}** (the busier process; the {other} is idle part of the "
            f"time); the {who}'s hottest function is `{top}`.")


def write_page(data: dict[str, Any], plotted: bool) -> str:
    meta, figs, rows_ = data["meta"], data["figures"], data["rows"]
    v = meta["versions"]
    runs = meta["runs"]
    load = meta["load"]
    L = ["# Benchmarks", "",
         "<!-- Generated by benchmarks/compare.py from docs/benchmarks.json: do not edit. -->",
         "",
         f"Measured {meta['date']} by `{meta['command']}` on this project's development "
         f"machine: {meta['cores']} cores shared with other engineers' builds and tests "
         "(see *Load* below), client and server on the same host over 127.0.0.1. Every "
         f"figure is the **median of {runs} runs (min–max)**; each run measures every row "
         "for every system in the same order. Beside each throughput: CPU seconds per "
         "million messages of the client process and of the server process(es) over the "
         "measured interval. Absolute figures on a shared 2-core machine move between runs; "
         "the comparisons within a run are what this page is for.", "",
         "Systems and clients (each in its idiomatic fast mode through its best Python "
         "client; every server but RabbitMQ is a private process started for the cell on an "
         "empty folder):", ""]
    for sysname, text in CLIENTS.items():
        L.append(f"- **{sysname}**: " + text.format(**v))
    L += [f"- Servers: TideMQ (this tree), RabbitMQ {v['rabbitmq']} (the machine's shared "
          "broker; its server CPU is `beam.smp`'s, which includes anything else it serves), "
          f"Redis {v['redis-server']} (`redis-server --appendonly yes --appendfsync "
          "always|everysec --save ''`), "
          f"NATS {v['nats-server']} (`nats-server -js -sd <temp>`, JetStream defaults). "
          f"Python {v['python']}. TideMQ is this tree at commit {v.get('git_head', '?')} "
          f"with {v.get('src_uncommitted_files', '?')} uncommitted files under `src/` while "
          "it ran (other engineers work in the same tree).",
          "- Same work everywhere: the same body sizes, message counts and producer/in-flight "
          "counts; one partition / queue / stream; publish clocks stop when every confirm has "
          "arrived, consume clocks when every ack has been answered; latency is from the "
          "publish call's *scheduled* time (a fixed offered rate; coordinated-omission aware) "
          "to the consumer having the message, consumer acking in batches.",
          "- JetStream durability: the 2.9.10 server here refuses `sync_interval` in its "
          "`jetstream {}` block (`unknown field`), so it cannot fsync before acking a publish; "
          "it appears only in the page-cache class (its default flushes every 2 minutes). "
          "Later NATS releases document `sync_interval` (including `always`) in their "
          "JetStream server settings.", ""]
    for title, note, cols, pick in TABLES:
        trows = [r for r in rows_ if pick(r["id"])]
        if not trows:
            continue
        L += [f"## {title}", "", note, "",
              "| figure | " + " | ".join(SYSTEMS[c][0] for c in cols) + " |",
              "| --- | " + " | ".join("---" for _ in cols) + " |"]
        for r in trows:
            cells = [_cell(r, c, figs)[0] for c in cols]
            L.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        L.append("")
    # targets
    L += ["## Targets of issue 11 (TideMQ, tidemq:// unless noted, 100 B, medians)", "",
          "| target | goal | measured | same-run peer | met |", "| --- | --- | --- | --- | --- |"]
    for t in data["verdicts"]:
        goal = f"{t['op']} {fmt_num(t['goal'])}"
        meas = fmt_num(t.get("measured"))
        if "against" in t:
            meas += f" (vs `{t['against']}`)"
        peer = (f"Redis everysec {fmt_num(t['peer'])}; must be ≤" if t.get("peer") is not None
                else "")
        met = {True: "met", False: "**not met**", None: "not measured"}[t.get("met")]
        L.append(f"| {t['text']} | {goal} | {meas} | {peer} | {met} |")
    L.append("")
    if plotted:
        L += ["![benchmarks](benchmarks.png)", ""]
    # profile
    prof = data.get("profile") or {}
    L += ["## Where the time goes", ""]
    if not prof:
        L += ["Not profiled in this run (`--no-profile`).", ""]
    else:
        L += ["py-spy (`record --rate 200 --nonblocking`) on the TideMQ server process and on "
              "the client process during the measured interval of separate, larger runs of "
              "each path (not counted in the tables). *Busy* is samples ÷ (rate × seconds): the "
              "share of one core the process's Python threads were running. Shares are of that "
              "process's samples, by the innermost Python function (self time; time in C code "
              "called from it counts to it).", "",
              "How to read the frames: `Runner.run (runners.py)` in the server is time inside "
              "uvloop's own C code (socket reads and writes, callback dispatch) with no Python "
              "frame above it; `_worker (thread.py)` and `FileOps.fsync` are the storage "
              "thread's `fdatasync` calls (a thread waiting in the syscall counts as busy, so "
              "*busy* can include disk waits). `_cells.py` frames are the harness's own loop "
              "(the same loop shape every system gets).", ""]
        for title, p in prof.items():
            L.append(f"### {title}")
            L.append("")
            L += [_bottleneck(p), ""]
            L += ["| process | figure while profiled | busy % | top files (self %) | "
                  "top functions (self %) |", "| --- | --- | --- | --- | --- |"]
            for who in ("server", "client"):
                q = p.get(who)
                if not q:
                    continue
                rate = f"{fmt_num(p.get('figure'))} {p.get('unit', '')}"
                if "error" in q:
                    L.append(f"| {who} | {rate} | — | {q['error']} | |")
                    continue
                files = "<br>".join(f"`{k}` {fmt_num(s)}" for k, s in q["top_files"])
                fns = "<br>".join(f"`{k}` {fmt_num(s)}" for k, s in q["top_functions"])
                L.append(f"| {who} | {rate} | {fmt_num(q['busy_pct'])} | {files} | {fns} |")
            L.append("")
    L += ["## Load", "", "The machine was shared while this ran; per run:", "",
          "| run | seconds | load average (1 min) at start | at end | whole-machine CPU busy % |",
          "| --- | --- | --- | --- | --- |"]
    for x in load:
        L.append(f"| {x['run']} | {fmt_num(x['seconds'])} | {fmt_num(x['loadavg_1m_start'])} | "
                 f"{fmt_num(x['loadavg_1m_end'])} | {fmt_num(x['machine_cpu_busy_pct'])} |")
    L += ["", "The harness itself (client and server) is part of that busy share; on 2 cores "
          "a figure whose client and server CPU per message add up to more than one core's "
          "worth competes with itself.", "",
          "Other benchmark scripts: `benchmarks/storage_bench.py` (storage engine), "
          "`benchmarks/embedded_bench.py`, `benchmarks/server_bench.py`, "
          "`benchmarks/broker_bench.py`, `benchmarks/group_bench.py`, "
          "`benchmarks/format_bench.py`, `benchmarks/protocol_bench.py`.", ""]
    return "\n".join(L)


def plot(data: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figs, rows_ = data["figures"], data["rows"]
    colours = {"tidemq-always": "tab:blue", "tidemq-interval": "tab:cyan",
               "rabbitmq-quorum": "tab:orange", "redis-always": "tab:red",
               "redis-everysec": "salmon", "nats-js": "tab:green", "embedded": "tab:purple"}
    panels = [("fsync before confirm (msgs/s)", lambda r: r["id"].startswith("publish_fsync")),
              ("page cache / consume (msgs/s)",
               lambda r: r["id"].startswith(("publish_cache", "consume"))),
              ("e2e latency p99 (ms, lower is better)", lambda r: r["kind"] == "latency")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))
    for ax, (title, pick) in zip(axes, panels, strict=True):
        prs = [r for r in rows_ if pick(r)]
        cols = [c for c in SYSTEMS if any(c in r["systems"] for r in prs)]
        width = 0.8 / max(1, len(cols))
        for i, c in enumerate(cols):
            xs, ys, lo, hi = [], [], [], []
            for j, r in enumerate(prs):
                f = figs.get(f"{r['id']}.{c}")
                fld = "p99" if r["kind"] == "latency" else "value"
                if f and fld in f:
                    xs.append(j + (i - (len(cols) - 1) / 2) * width)
                    ys.append(f[fld]["median"])
                    lo.append(f[fld]["median"] - f[fld]["min"])
                    hi.append(f[fld]["max"] - f[fld]["median"])
            ax.bar(xs, ys, width, yerr=[lo, hi], label=SYSTEMS[c][0].replace("`", ""),
                   color=colours[c], capsize=2)
        ax.set_xticks(range(len(prs)), [r.get("short") or r["id"] for r in prs], fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"{data['meta']['date']}, median of {data['meta']['runs']} runs (bars: "
                 "min–max), shared 2-core machine", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    ap.add_argument("--only", nargs="*", help="row ids")
    ap.add_argument("--systems", nargs="*", help="tidemq rabbitmq nats redis embedded")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--from-json", metavar="FILE", help="re-render docs from saved figures")
    ap.add_argument("--cell-timeout", type=float, default=150.0)
    ap.add_argument("--profile-only", action="store_true",
                    help="re-run only the py-spy phase into the saved docs/benchmarks.json")
    args = ap.parse_args()
    if args.profile_only:
        path = os.path.join(DOCS, "benchmarks.json")
        with open(path) as f:
            data = json.load(f)
        data["profile"] = profile_phase(args.scale, args.cell_timeout)
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        args.from_json = path
    elif args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
    else:
        all_rows = [r for r in rows(args.scale) if not args.only or r.id in args.only]
        cmd = "python benchmarks/compare.py " + " ".join(sys.argv[1:])
        t0 = time.time()
        cells, load = measure(all_rows, args.runs, args.systems, args.cell_timeout)
        figs = summarise(all_rows, cells)
        data = {
            "meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
                     "command": cmd.strip(), "runs": args.runs, "scale": args.scale,
                     "cores": os.cpu_count(), "platform": platform.platform(),
                     "versions": _versions(), "load": load},
            "rows": [{"id": r.id, "label": r.label, "short": r.short, "case": r.case,
                      "kind": r.kind,
                      "systems": r.systems, "work": r.work, "cannot": r.cannot}
                     for r in all_rows],
            "systems": {k: {"label": v[0], "system": v[1], "setting": v[2]}
                        for k, v in SYSTEMS.items()},
            "figures": figs,
            "targets": TARGETS,
        }
        data["verdicts"] = verdicts(figs)
        data["profile"] = (None if args.no_profile
                           else profile_phase(args.scale, args.cell_timeout))
        data["meta"]["wall_seconds"] = round(time.time() - t0)
    if not args.no_write:
        if not args.from_json:
            with open(os.path.join(DOCS, "benchmarks.json"), "w") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
        plotted = plot(data, os.path.join(DOCS, "benchmarks.png"))
        with open(os.path.join(DOCS, "benchmarks.md"), "w") as f:
            f.write(write_page(data, plotted))
    for t in data["verdicts"]:
        print(json.dumps(t))


if __name__ == "__main__":
    main()
