"""TideMQ's server figures and its peers', measured in one run, written to docs/benchmarks.md
with a plot (docs/benchmarks.png).

Run: .venv/bin/python benchmarks/compare.py [--quick] [--no-write]
Needs RabbitMQ, NATS JetStream and Redis on their default local ports (benchmarks/peers_bench.py)
and matplotlib for the plot (pip install matplotlib; without it the table is still written).
Ends with the JSON lines of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs")

# (figure, target, TideMQ metric, {peer: metric})
ROWS: list[tuple[str, str, str, dict[str, str]]] = [
    ("publish, one producer, per-message pipelined", ">= 150,000 msgs/s",
     "server.publish_single_pipelined",
     {"RabbitMQ quorum": "rabbitmq.quorum_publish_confirms_pipelined",
      "NATS JetStream": "nats.jetstream_file_publish_async",
      "Redis Streams": "redis.streams_xadd_pipelined"}),
    ("publish_batch of plain bodies", ">= 1,000,000 msgs/s", "server.publish_batch_1000", {}),
    ("consume + ack each, one consumer", ">= 150,000 msgs/s", "server.consume_ack_each",
     {"RabbitMQ quorum": "rabbitmq.quorum_consume_ack_each",
      "NATS JetStream": "nats.jetstream_consume_ack_each",
      "Redis Streams": "redis.streams_consume_ack_each"}),
    ("consume + batch ack, one consumer", ">= 400,000 msgs/s", "server.consume_batch_ack", {}),
    ("e2e latency p50 at 5,000 msgs/s", "<= 0.5 ms", "server.e2e_latency_p50",
     {"NATS JetStream": "nats.e2e_latency_p50", "Redis Streams": "redis.e2e_latency_p50"}),
    ("e2e latency p99", "<= 2 ms", "server.e2e_latency_p99",
     {"NATS JetStream": "nats.e2e_latency_p99", "Redis Streams": "redis.e2e_latency_p99"}),
    ("e2e latency p99.9", "<= 5 ms", "server.e2e_latency_p999",
     {"NATS JetStream": "nats.e2e_latency_p999", "Redis Streams": "redis.e2e_latency_p999"}),
    ("durability always, 16 producers x 100 in flight", ">= 100,000 msgs/s",
     "server.publish_always_16x100",
     {"RabbitMQ quorum": "rabbitmq.quorum_publish_confirms_pipelined"}),  # it fsyncs too
]
PEERS = ["RabbitMQ quorum", "NATS JetStream", "Redis Streams"]
COLOURS = {"TideMQ": "tab:blue", "RabbitMQ quorum": "tab:orange", "NATS JetStream": "tab:green",
           "Redis Streams": "tab:red"}


def _run(script: str, quick: bool) -> dict[str, dict[str, Any]]:
    cmd = [sys.executable, os.path.join(HERE, script)] + (["--quick"] if quick else [])
    print("$", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    sys.stdout.write(out.stdout)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-3000:])
    figures: dict[str, dict[str, Any]] = {}
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            figures[r["metric"]] = r
    return figures


def _fmt(r: dict[str, Any] | None) -> str:
    if r is None or r.get("value") is None:
        return "—"
    v = r["value"]
    return f"{v:,.2f} {r['unit']}" if r["unit"] == "ms" else f"{v:,.0f} {r['unit']}"


def _plot(figs: dict[str, dict[str, Any]], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    thr = [r for r in ROWS if "latency" not in r[0]]
    lat = [r for r in ROWS if "latency" in r[0]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    names = ["TideMQ", *PEERS]
    width = 0.2
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, (_, _, ours, peers) in enumerate(thr):
            m = ours if name == "TideMQ" else peers.get(name)
            if m and m in figs and figs[m].get("value") is not None:
                xs.append(j + (i - 1.5) * width)
                ys.append(figs[m]["value"] / 1000)
        a1.bar(xs, ys, width, label=name, color=COLOURS[name])
    a1.set_xticks(range(len(thr)), [r[0].replace(", ", "\n").replace(" of ", "\nof ")
                                    for r in thr], fontsize=7)
    a1.set_ylabel("thousand msgs/s (higher is better)")
    a1.set_title("Throughput, 100-byte messages, 2-core machine")
    a1.legend(fontsize=8)
    for i, name in enumerate(["TideMQ", "NATS JetStream", "Redis Streams"]):
        xs, ys = [], []
        for j, (_, _, ours, peers) in enumerate(lat):
            m = ours if name == "TideMQ" else peers.get(name)
            if m and m in figs and figs[m].get("value") is not None:
                xs.append(j + (i - 1) * 0.25)
                ys.append(figs[m]["value"])
        a2.bar(xs, ys, 0.25, label=name, color=COLOURS[name])
    a2.set_xticks(range(len(lat)), ["p50", "p99", "p99.9"])
    a2.set_ylabel("ms (lower is better)")
    a2.set_title("End-to-end latency at 5,000 msgs/s offered")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _write(figs: dict[str, dict[str, Any]], cmd: str, plotted: bool) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on this project's machine ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}), client and server on the same host, 100-byte "
        "messages, every system with durable settings: TideMQ `interval` unless noted; RabbitMQ "
        "a quorum queue through pika with publisher confirms pipelined; NATS JetStream file "
        "storage through nats-py with async publish; Redis Streams through redis-py, pipelined "
        "(Redis here keeps nothing on disk, so its figures are an upper bound).",
        "",
        f"Reproduce: `{cmd}`. Figures move ±20% between runs on this 2-core machine.",
        "",
        "| figure | target | TideMQ | " + " | ".join(PEERS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in PEERS) + " |",
    ]
    for name, target, ours, peers in ROWS:
        cells = [_fmt(figs.get(peers[p])) if p in peers else "" for p in PEERS]
        lines.append(f"| {name} | {target} | {_fmt(figs.get(ours))} | " + " | ".join(cells) + " |")
    if plotted:
        lines += ["", "![benchmarks](benchmarks.png)"]
    lines += ["", "Other benchmark scripts: `benchmarks/storage_bench.py` (storage engine), "
              "`benchmarks/embedded_bench.py` (in-process client), `benchmarks/broker_bench.py`, "
              "`benchmarks/group_bench.py`, `benchmarks/format_bench.py`, "
              "`benchmarks/protocol_bench.py`.", ""]
    with open(os.path.join(DOCS, "benchmarks.md"), "w") as f:
        f.write("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--from-json", metavar="FILE",
                    help="rewrite the docs from saved figures (docs/benchmarks.json) instead")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            figs = {r["metric"]: r for r in json.load(f)}
    else:
        figs = _run("server_bench.py", args.quick)
        figs.update(_run("peers_bench.py", args.quick))
        if not args.no_write:
            with open(os.path.join(DOCS, "benchmarks.json"), "w") as f:
                json.dump(list(figs.values()), f, indent=1)
    if not args.no_write:
        plotted = _plot(figs, os.path.join(DOCS, "benchmarks.png"))
        _write(figs, "python benchmarks/compare.py" + (" --quick" if args.quick else ""), plotted)
        # (--from-json keeps the text of the run that measured: same command line)
    print()
    for r in figs.values():
        print(json.dumps(r))


if __name__ == "__main__":
    main()
