"""A real kill -9: every append the child reported as synced under ``always`` survives."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.storage.helpers import all_bodies, bodies
from tidemq.storage import FileLog, LogConfig

CONFIG = LogConfig(durability="always", segment_bytes=64 * 1024, checkpoint_bytes=32 * 1024)

_CHILD = """
import sys, time
from tidemq.storage import FileLog, LogConfig, encode_bodies

log = FileLog(sys.argv[1], LogConfig(durability="always", segment_bytes=64 * 1024,
                                     checkpoint_bytes=32 * 1024))
n = 0
while True:
    body = [f"{i}-".encode().ljust(20, b"x") for i in range(n, n + 7)]
    result = log.append(encode_bodies(body), time.time_ns() // 1000)
    log.sync(result.position)            # durable: only now may it be confirmed
    print(result.last_offset, flush=True)
    n += 7
"""


def test_kill_9_loses_no_confirmed_append(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    confirmed = -1
    try:
        assert child.stdout is not None
        for line in child.stdout:
            confirmed = int(line)
            if confirmed >= 7 * 400:  # several segments and checkpoints in
                break
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        # Lines the child printed before it died are confirmations too.
        for line in child.stdout:
            if line.strip():
                confirmed = int(line)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert confirmed >= 7 * 400
    log = FileLog(tmp_path, CONFIG)
    try:
        assert log.end_offset >= confirmed + 1
        got = all_bodies(log)
        assert got[: confirmed + 1] == bodies(0, confirmed + 1)
        assert len(got) == log.end_offset  # no hole, no reordering
    finally:
        log.close()
