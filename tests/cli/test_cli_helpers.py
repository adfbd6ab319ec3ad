"""The CLI's pure helpers: option parsers, output rendering, percentiles."""

from __future__ import annotations

import argparse
import io
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemq.cli._bench import percentile
from tidemq.cli._common import header_arg, parse_position, priority_arg
from tidemq.cli._consume import exec_env
from tidemq.cli._output import fmt_bytes, message_json
from tidemq.cli._publish import read_lines


def test_parse_position_forms() -> None:
    assert parse_position("earliest") == "earliest"
    assert parse_position("latest") == "latest"
    assert parse_position("42") == 42
    assert parse_position("0:5,2:7") == {0: 5, 2: 7}
    assert parse_position("@1700000000") == {"timestamp": 1700000000.0}
    assert parse_position("@2023-11-14T22:13:20Z") == {"timestamp": 1700000000.0}
    assert parse_position("@2023-11-14T22:13:20") == {"timestamp": 1700000000.0}  # naive = UTC
    for bad in ("-1", "soon", "0:x", "@tomorrow", "1:-2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_position(bad)


def test_header_and_priority_args() -> None:
    assert header_arg("a=b=c") == ("a", "b=c")
    assert header_arg("empty=") == ("empty", "")
    for bad in ("novalue", "=v"):
        with pytest.raises(argparse.ArgumentTypeError):
            header_arg(bad)
    assert priority_arg("9") == 9
    for bad in ("10", "-1", "high"):
        with pytest.raises(argparse.ArgumentTypeError):
            priority_arg(bad)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary().map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
                min_size=1, max_size=30),
       st.integers(1, 7), st.booleans())
def test_read_lines_round_trips(lines: list[bytes], batch: int, crlf: bool) -> None:
    end = b"\r\n" if crlf else b"\n"
    chunks = list(read_lines(io.BytesIO(end.join(lines) + end), batch))
    assert all(1 <= len(c) <= batch for c in chunks)
    assert [line for c in chunks for line in c] == lines


def test_read_lines_last_line_without_newline() -> None:
    assert list(read_lines(io.BytesIO(b"a\nb"), 10)) == [[b"a", b"b"]]


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([], 0.5) == 0.0


def _msg(**kw: object) -> SimpleNamespace:
    base = dict(id="t@1:0:3", topic="t", partition=0, offset=3, timestamp=1.5, key=b"k",
                routing_key="a.b", headers={"content-type": "json"}, priority=4,
                delivery_count=2, body=b"hi")
    base.update(kw)
    return SimpleNamespace(**base)


def test_message_json_text_and_binary() -> None:
    j = message_json(_msg())
    assert j["body"] == "hi" and j["key"] == "k" and j["delivery_count"] == 2
    j = message_json(_msg(body=b"\xff", key=None))
    assert j["body_base64"] == "/w==" and "body" not in j and j["key"] is None


def test_exec_env_names() -> None:
    env = exec_env(_msg(), "billing")
    assert env["TIDEMQ_ID"] == "t@1:0:3"
    assert env["TIDEMQ_GROUP"] == "billing"
    assert env["TIDEMQ_OFFSET"] == "3"
    assert env["TIDEMQ_HEADER_CONTENT_TYPE"] == "json"
    assert env["TIDEMQ_HEADERS"] == '{"content-type": "json"}'


def test_fmt_bytes_preview() -> None:
    assert fmt_bytes(None) is None
    assert fmt_bytes(b"a\nb") == "a\\nb"
    assert fmt_bytes(b"x" * 100, 10) == "x" * 9 + "…"
    assert fmt_bytes(b"\xff\xfe") == "0xfffe"
