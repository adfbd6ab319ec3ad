"""Fixtures for the CLI tests: a fresh data-folder URL and a runner around ``main``."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tidemq.cli import main


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    out: str
    err: str

    def lines(self) -> list[str]:
        return self.out.splitlines()


Run = Callable[..., Result]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return str(tmp_path / "data")


@pytest.fixture
def run(url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run("topic", "list", stdin=b"...")``: ``main(["--url", url, ...])`` in-process."""

    def _run(*argv: str, stdin: bytes | None = None, use_url: bool = True) -> Result:
        capsys.readouterr()  # drop anything printed before
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = main((["--url", url] if use_url else []) + list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return _run


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
