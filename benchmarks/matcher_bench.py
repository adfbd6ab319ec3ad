#!/usr/bin/env python3
"""Routing-key matching cost on pathological patterns (issue 8 target: a 32-word ``#.#.#…``
pattern against a 255-byte routing key in <= 50 µs per match). Uncached matches: the matcher's
state-set walk, not a group's verdict cache.

Run: .venv/bin/python benchmarks/matcher_bench.py [--runs 5]
Prints one JSON line per pattern: µs per match, median and min-max over the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from tidemq.broker._matcher import Pattern

KEY = ".".join(["ab"] * 85)[:255]
PATTERNS = {
    "hash_x32": ".".join(["#"] * 32),
    "hash_x16_word_hash_x15_nomatch": ".".join(["#"] * 16 + ["zz"] + ["#"] * 15),
    "star_hash_alternating_x32": ".".join(["*", "#"] * 16),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--matches", type=int, default=2000)
    a = ap.parse_args()
    for name, text in PATTERNS.items():
        pat = Pattern(text)
        runs = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            for _ in range(a.matches):
                pat.matches(KEY)
            runs.append((time.perf_counter() - t0) / a.matches * 1e6)
        print(json.dumps({"bench": "matcher", "pattern": name, "key_bytes": len(KEY),
                          "matches": pat.matches(KEY), "us_per_match_median":
                          round(statistics.median(runs), 2), "min": round(min(runs), 2),
                          "max": round(max(runs), 2), "runs": a.runs}))


if __name__ == "__main__":
    main()
