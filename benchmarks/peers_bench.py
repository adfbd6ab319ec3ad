"""The peers' figures alone (RabbitMQ, NATS JetStream, Redis), through the one harness.

Run: .venv/bin/python benchmarks/peers_bench.py [--runs 1] [--scale 0.1] [--only ROW ...]

The same cells as ``benchmarks/compare.py`` (which measures TideMQ and the peers in one run and
writes docs/benchmarks.md); this prints only and leaves docs/ alone. Servers, clients and
durability classes: see compare.py and docs/benchmarks.md.
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    argv = sys.argv[1:]
    if "--runs" not in argv:
        argv += ["--runs", "1"]
    cmd = [sys.executable, os.path.join(HERE, "compare.py"), "--systems", "rabbitmq", "nats",
           "redis", "--no-write", "--no-profile", *argv]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
