"""Process helpers shared by the benchmark scripts that start their own ``tidemq serve``."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

__all__ = ["free_port", "tidemq_command", "cpu_ticks"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tidemq_command() -> list[str]:
    """``tidemq`` of this virtualenv (next to sys.executable), else on PATH, else the module."""
    here = Path(sys.executable).parent / "tidemq"
    if here.exists():
        return [str(here)]
    found = shutil.which("tidemq")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys, tidemq.cli; sys.exit(tidemq.cli.main())"]


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (every thread, living or exited), in clock ticks."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
