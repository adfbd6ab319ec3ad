"""The ``tidemq`` CLI driven in-process through ``main([...])`` on a data folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tidemq.cli import main
from tidemq.client import Client

from .conftest import Run


def _json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tidemq: error: ")
    assert "Traceback" not in err
    return lines[0]


# -- topics -----------------------------------------------------------------------------------


def test_topic_create_list_describe_delete(run: Run) -> None:
    r = run("topic", "create", "orders", "--partitions", "3", "--durability", "always",
            "--retention", "60")
    assert r.code == 0, r.err
    assert "orders" in r.out and "3 partition" in r.out

    r = run("topic", "list")
    assert r.code == 0
    header, row = r.lines()
    assert header.split() == ["TOPIC", "PARTITIONS", "MESSAGES", "GROUPS", "DURABILITY"]
    assert row.split() == ["orders", "3", "0", "0", "always"]

    r = run("topic", "describe", "orders", "--json")
    info = json.loads(r.out)
    assert info["name"] == "orders"
    assert len(info["partitions"]) == 3
    assert info["config"]["retention"] == 60.0

    r = run("topic", "describe", "orders")
    assert "durability:   always" in r.out and "retention:    60 s" in r.out

    assert run("topic", "delete", "orders").code == 0
    r = run("topic", "describe", "orders")
    assert r.code == 1
    assert "orders" in _one_error_line(r.err)


def test_topic_create_existing_is_error_unless_exist_ok(run: Run) -> None:
    assert run("topic", "create", "t").code == 0
    r = run("topic", "create", "t")
    assert r.code == 1
    assert "already exists" in _one_error_line(r.err)
    assert run("topic", "create", "t", "--exist-ok").code == 0


def test_bad_topic_name_is_one_line_tidemq_error(run: Run) -> None:
    r = run("topic", "create", "bad..name")
    assert r.code == 1
    assert "bad..name" in _one_error_line(r.err)
    assert r.out == ""


# -- publish ----------------------------------------------------------------------------------


def test_publish_args_prints_ids_and_sets_fields(run: Run) -> None:
    r = run("publish", "orders", "hello", "--key", "user-1", "--routing-key", "order.created",
            "--header", "region=eu", "--header", "expr=a=b", "--priority", "7")
    assert r.code == 0, r.err
    (mid,) = r.lines()
    r = run("consume", "orders", "--group", "g", "--count", "1", "--format", "json")
    (msg,) = _json_lines(r.out)
    assert msg["id"] == mid
    assert msg["body"] == "hello"
    assert msg["key"] == "user-1"
    assert msg["routing_key"] == "order.created"
    assert msg["headers"] == {"region": "eu", "expr": "a=b"}
    assert msg["priority"] == 7
    assert msg["delivery_count"] == 1


def test_publish_several_bodies_in_order(run: Run) -> None:
    r = run("publish", "t", "a", "b", "c")
    assert r.code == 0
    assert len(set(r.lines())) == 3
    r = run("consume", "t", "-g", "g", "--count", "3")
    assert r.lines() == ["a", "b", "c"]


def test_publish_stdin_lines_in_batches(run: Run) -> None:
    r = run("publish", "t", "--quiet", "--batch", "2", stdin=b"one\ntwo\r\n\nfour\nfive")
    assert r.code == 0, r.err
    assert r.out.strip() == "5"
    r = run("consume", "t", "-g", "g", "--timeout", "0.5")
    assert r.lines() == ["one", "two", "", "four", "five"]


def test_publish_delay_holds_message(run: Run) -> None:
    assert run("publish", "t", "later", "--delay", "3600").code == 0
    r = run("consume", "t", "-g", "g", "--timeout", "0.3")
    assert r.code == 0 and r.out == ""


def test_publish_dedup_id(run: Run) -> None:
    first = run("publish", "t", "x", "--dedup-id", "d1").out
    second = run("publish", "t", "x", "--dedup-id", "d1").out
    assert first == second
    r = run("publish", "t", "x", "y", "--dedup-id", "d1")
    assert r.code == 2
    assert "--dedup-id" in _one_error_line(r.err)


# -- consume ----------------------------------------------------------------------------------


def test_consume_acks_so_second_consume_gets_nothing(run: Run) -> None:
    run("publish", "t", "a", "b", "c")
    r = run("consume", "t", "-g", "g", "--count", "2")
    assert r.lines() == ["a", "b"]
    r = run("consume", "t", "-g", "g", "--timeout", "0.3")
    assert r.lines() == ["c"]
    r = run("consume", "t", "-g", "g", "--timeout", "0.3")
    assert r.code == 0 and r.out == ""
    # another group still gets everything (fan-out)
    assert run("consume", "t", "-g", "other", "--timeout", "0.3").lines() == ["a", "b", "c"]


def test_consume_binary_body_as_base64_json(url: str, run: Run) -> None:
    with Client(url) as mq:
        mq.publish("t", b"\xff\x00\xfe", key=b"\x80")
    (msg,) = _json_lines(run("consume", "t", "-g", "g", "--count", "1", "--format", "json").out)
    assert msg["body_base64"] == "/wD+"
    assert msg["key_base64"] == "gA=="
    assert "body" not in msg


def test_consume_filter_on_routing_key(run: Run) -> None:
    run("publish", "t", "created", "--routing-key", "order.created")
    run("publish", "t", "paid", "--routing-key", "payment.done")
    r = run("consume", "t", "-g", "orders-only", "--filter", "order.*", "--timeout", "0.3")
    assert r.lines() == ["created"]


def test_consume_unknown_topic_is_error_and_not_created(run: Run) -> None:
    r = run("consume", "nope", "-g", "g", "--timeout", "0.1")
    assert r.code == 1
    assert "nope" in _one_error_line(r.err)
    assert "nope" not in run("topic", "list").out


def test_exec_success_acks_and_sets_env(run: Run, tmp_path: Path) -> None:
    run("publish", "t", "payload", "--header", "x-region=eu", "--key", "k")
    out = tmp_path / "seen"
    cmd = (f'printf "%s|%s|%s|%s|" "$TIDEMQ_TOPIC" "$TIDEMQ_GROUP" "$TIDEMQ_KEY" '
           f'"$TIDEMQ_HEADER_X_REGION" > {out}; cat >> {out}')
    r = run("consume", "t", "-g", "g", "--exec", cmd, "--count", "1")
    assert r.code == 0, r.err
    assert out.read_text() == "t|g|k|eu|payload"
    assert run("consume", "t", "-g", "g", "--timeout", "0.3").out == ""


def test_exec_failure_nacks_for_redelivery(run: Run) -> None:
    run("publish", "t", "job")
    r = run("consume", "t", "-g", "g", "--exec", "cat >/dev/null; exit 3", "--count", "1",
            "--nack-delay", "0")
    assert r.code == 0
    assert "status 3" in r.err and "nacked" in r.err
    (msg,) = _json_lines(run("consume", "t", "-g", "g", "--count", "1", "--format", "json",
                             "--timeout", "2").out)
    assert msg["body"] == "job"
    assert msg["delivery_count"] == 2


# -- groups -----------------------------------------------------------------------------------


def test_group_list_describe(run: Run) -> None:
    run("topic", "create", "t", "--partitions", "2")
    run("publish", "t", "a", "b", "c", "d")
    run("consume", "t", "-g", "g", "--count", "1")
    r = run("group", "list", "t")
    header, row = r.lines()
    assert header.split()[:4] == ["GROUP", "MODE", "MEMBERS", "LAG"]
    assert row.split()[:4] == ["g", "shared", "0", "3"]
    info = json.loads(run("group", "describe", "t", "g", "--json").out)
    assert info["name"] == "g" and info["lag"] == 3
    assert "mode:            shared" in run("group", "describe", "t", "g").out
    r = run("group", "describe", "t", "missing")
    assert r.code == 1
    _one_error_line(r.err)


def test_group_reset_replays(run: Run) -> None:
    run("publish", "t", "a", "b", "c")
    assert run("consume", "t", "-g", "g", "--timeout", "0.3").lines() == ["a", "b", "c"]
    assert run("group", "reset", "t", "g", "--to", "earliest").code == 0
    assert run("consume", "t", "-g", "g", "--timeout", "0.3").lines() == ["a", "b", "c"]
    assert run("group", "reset", "t", "g", "--to", "1").code == 0
    assert run("consume", "t", "-g", "g", "--timeout", "0.3").lines() == ["b", "c"]
    assert run("group", "reset", "t", "g", "--to", "0:2").code == 0
    assert run("consume", "t", "-g", "g", "--timeout", "0.3").lines() == ["c"]
    assert run("group", "reset", "t", "g", "--to", f"@{time.time() - 3600:.0f}").code == 0
    assert run("consume", "t", "-g", "g", "--timeout", "0.3").lines() == ["a", "b", "c"]
    assert run("group", "reset", "t", "g", "--to", "latest").code == 0
    run("publish", "t", "d")
    assert run("consume", "t", "-g", "g", "--timeout", "0.3").lines() == ["d"]


def test_group_reset_bad_position_is_usage_error(run: Run) -> None:
    r = run("group", "reset", "t", "g", "--to", "yesterday")
    assert r.code == 2
    assert "position" in _one_error_line(r.err)


# -- dead letters -----------------------------------------------------------------------------


def _dead_letter(url: str, body: bytes, group: str = "g") -> None:
    """Publish ``body`` and make ``group`` dead-letter it (one delivery allowed, nacked)."""
    with Client(url) as mq:
        mq.publish("t", body)
        with mq.subscribe("t", group, max_deliveries=1) as sub:
            (msg,) = sub.receive(1, 2.0)
            sub.nack(msg, delay=0)


def test_dlq_list_shows_reason_without_consuming(url: str, run: Run) -> None:
    _dead_letter(url, b"poison")
    for _ in range(2):  # listing twice shows the same: nothing was consumed
        r = run("dlq", "list", "t")
        assert r.code == 0, r.err
        header, row = r.lines()
        assert header.split() == ["ID", "GROUP", "REASON", "DELIVERIES", "ORIGIN", "BODY"]
        assert row.split()[1:] == ["g", "max_deliveries", "1", "0:0", "poison"]
    (msg,) = _json_lines(run("dlq", "list", "t", "--format", "json").out)
    assert msg["headers"]["x-tidemq-origin-reason"] == "max_deliveries"
    # the throwaway peek group is gone
    assert len(run("group", "list", "t.dlq").lines()) == 1


def test_dlq_list_of_topic_without_dead_letters(run: Run) -> None:
    run("topic", "create", "t")
    r = run("dlq", "list", "t")
    assert r.code == 0 and len(r.lines()) == 1
    assert run("dlq", "list", "nope").code == 1


def test_dlq_redrive_hands_back_to_group(url: str, run: Run) -> None:
    _dead_letter(url, b"retry-me")
    assert run("consume", "t", "-g", "other", "--timeout", "0.3").lines() == ["retry-me"]
    r = run("dlq", "redrive", "t", "g")
    assert r.code == 0
    assert "redrove 1 " in r.out
    assert run("consume", "t", "-g", "g", "--timeout", "0.5").lines() == ["retry-me"]
    # other groups do not see it again, and nothing is redriven twice
    assert run("consume", "t", "-g", "other", "--timeout", "0.3").out == ""
    assert "redrove 0 " in run("dlq", "redrive", "t", "g").out


# -- usage, errors, exit codes ----------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["nonsense"],
    [],
    ["publish", "t", "x", "--header", "novalue"],
    ["publish", "t", "x", "--priority", "12"],
    ["consume", "t"],
    ["consume", "t", "-g", "g", "--timeout", "-1"],
    ["topic", "create", "t", "--partitions", "0"],
    ["consume", "t", "-g", "g", "--nack-delay", "1"],
])
def test_usage_errors_exit_2_with_one_line(run: Run, argv: list[str]) -> None:
    r = run(*argv)
    assert r.code == 2
    line = _one_error_line(r.err)
    assert "--help" in line
    assert r.out == ""


def test_help_exits_0_with_examples(run: Run) -> None:
    for argv in (["--help"], ["consume", "--help"], ["topic", "create", "--help"]):
        r = run(*argv)
        assert r.code == 0
        assert "examples:" in r.out


def test_cannot_connect_exits_3(run: Run, unused_port: int) -> None:
    r = run("--url", f"tidemq://127.0.0.1:{unused_port}", "topic", "list", use_url=False)
    assert r.code == 3
    assert str(unused_port) in _one_error_line(r.err)


def test_locked_data_folder_exits_3(url: str, run: Run) -> None:
    with Client(url):
        r = run("topic", "list")
    assert r.code == 3
    assert "tidemq://" in _one_error_line(r.err)


def test_url_from_environment_and_after_subcommand(url: str, run: Run,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEMQ_URL", url)
    assert run("topic", "create", "envtopic", use_url=False).code == 0
    monkeypatch.delenv("TIDEMQ_URL")
    assert "envtopic" in run("topic", "list", "--url", url, use_url=False).out


def test_keyboard_interrupt_exits_130(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from tidemq.cli import _topic

    def boom(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_topic, "_list", boom)
    assert run("topic", "list").code == 130


def test_main_returns_int_for_default_argv(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["tidemq", "--version"])
    assert main() == 0
    assert "tidemq" in capsys.readouterr().out


# -- bench ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["publish", "consume", "latency"])
def test_bench_ends_with_json_metric_lines(run: Run, kind: str) -> None:
    r = run("bench", kind, "--count", "300", "--batch", "100", "--rate", "5000")
    assert r.code == 0, r.err
    tail = [line for line in r.lines() if line.startswith("{")]
    assert tail and r.lines()[-len(tail):] == tail
    metrics = {m["metric"]: m for m in map(json.loads, tail)}
    assert all(set(m) == {"metric", "value", "unit"} for m in metrics.values())
    assert any(m["unit"] in ("msgs/s", "ms") and m["value"] > 0 for m in metrics.values())
    assert run("topic", "list").lines()[1:] == []  # the bench topic was deleted
