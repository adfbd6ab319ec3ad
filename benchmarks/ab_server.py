#!/usr/bin/env python3
"""Before/after: ``benchmarks/server_bench.py`` on two git revisions, interleaved, N runs each.

Run: .venv/bin/python benchmarks/ab_server.py BEFORE_REV [AFTER_REV=HEAD] [--runs 3] [--quick]

Each revision is checked out (``git worktree``) into a temporary folder and imported from there
(``PYTHONPATH``), the server subprocess included; runs alternate A, B, A, B ... so both see the
same machine conditions. The bench script is the AFTER revision's, so the work is identical.
Prints one JSON line per figure and revision: median, min, max over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def checkout(rev: str, into: str) -> str:
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", into, rev], check=True,
                   capture_output=True)
    return os.path.join(into, "src")


def run_bench(src: str, bench: str, quick: bool, only: list[str]) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=src)
    args = [sys.executable, bench] + (["--quick"] if quick else []) + (["--only", *only] if only else [])
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, check=True)
    figures = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            m = json.loads(line)
            figures[m["metric"]] = float(m["value"])
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default="HEAD")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", default=[], help="figures to run (server_bench --only)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tidemq-ab-")
    dirs = {"before": os.path.join(tmp, "before"), "after": os.path.join(tmp, "after")}
    try:
        srcs = {"before": checkout(a.before, dirs["before"]), "after": checkout(a.after, dirs["after"])}
        bench = os.path.join(dirs["after"], "benchmarks", "server_bench.py")
        got: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
        for i in range(a.runs):
            for side in ("before", "after"):
                for k, v in run_bench(srcs[side], bench, a.quick, a.only).items():
                    got[side].setdefault(k, []).append(v)
                print(f"# run {i + 1}/{a.runs} {side} done", file=sys.stderr, flush=True)
        for metric in sorted(got["after"]):
            for side, rev in (("before", a.before), ("after", a.after)):
                vals = got[side].get(metric, [])
                if vals:
                    print(json.dumps({"metric": metric, "rev": rev, "runs": len(vals),
                                      "median": statistics.median(vals), "min": min(vals),
                                      "max": max(vals)}))
    finally:
        for d in dirs.values():
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", d],
                           capture_output=True)
        subprocess.run(["git", "-C", ROOT, "worktree", "prune"], capture_output=True)


if __name__ == "__main__":
    main()
