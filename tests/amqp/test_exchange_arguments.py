"""Exchange arguments on the AMQP front: ``alternate-exchange`` and the delayed-message
exchange (type ``x-delayed-message`` with ``x-delayed-type``, messages with ``x-delay``), as
RabbitMQ and its rabbitmq-delayed-message-exchange plugin do; anything else refused."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pika
import pika.exceptions
import pytest

from .conftest import AmqpProcess, InProcess, unique


@pytest.fixture
def conn(amqp_server: InProcess):
    c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_server.port))
    try:
        yield c
    finally:
        if c.is_open:
            c.close()


def _consume(ch, queue: str, n: int, timeout: float = 10.0) -> list[tuple[float, bytes]]:
    """(arrival time, body) of the first ``n`` messages of ``queue``."""
    got: list[tuple[float, bytes]] = []
    tag = ch.basic_consume(queue, lambda c, m, p, body: got.append((time.monotonic(), body)),
                           auto_ack=True)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    return got


def _delayed(x_delay: object) -> pika.BasicProperties:
    return pika.BasicProperties(headers={"x-delay": x_delay})


# --- delayed-message exchange --------------------------------------------------------------


def test_a_delayed_message_waits_its_x_delay_and_routes_as_x_delayed_type(conn) -> None:
    ch = conn.channel()
    ex, q, other = unique("delayed"), unique("q"), unique("q")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare(q)
    ch.queue_declare(other)
    ch.queue_bind(q, ex, "jobs")
    ch.queue_bind(other, ex, "else")  # direct: a different key gets nothing
    ch.confirm_delivery()
    t0 = time.monotonic()
    ch.basic_publish(ex, "jobs", b"later", _delayed(700))
    ch.basic_publish(ex, "jobs", b"now")  # no x-delay: routed at once
    ch.basic_publish(ex, "jobs", b"negative", _delayed(-5))  # the plugin: at once
    got = _consume(ch, q, 3)
    assert [b for _, b in got] == [b"now", b"negative", b"later"]
    assert got[2][0] - t0 >= 0.65  # not before its delay (the clock starts before publish)
    assert _consume(ch, other, 1, timeout=0.3) == []


def test_a_queue_bound_during_the_delay_gets_the_message(conn) -> None:
    # The plugin routes when the delay ends; so do TideMQ's delays (appended when due).
    ch = conn.channel()
    ex, q = unique("delayed"), unique("q")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "topic"})
    ch.confirm_delivery()
    ch.basic_publish(ex, "order.created", b"held", _delayed(600))  # no queue bound yet
    ch.queue_declare(q)
    ch.queue_bind(q, ex, "order.*")
    assert [b for _, b in _consume(ch, q, 1)] == [b"held"]


def test_a_delayed_message_is_delivered_with_its_properties(conn) -> None:
    ch = conn.channel()
    ex, q = unique("delayed"), unique("q")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    ch.queue_declare(q)
    ch.queue_bind(q, ex)
    ch.basic_publish(ex, "", b"x", pika.BasicProperties(
        headers={"x-delay": "300", "trace": "t-1"}, correlation_id="c-9", priority=3))
    props: list[pika.BasicProperties] = []
    tag = ch.basic_consume(q, lambda c, m, p, body: props.append(p), auto_ack=True)
    deadline = time.monotonic() + 10
    while not props and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    assert props and props[0].correlation_id == "c-9" and props[0].priority == 3
    assert props[0].headers == {"x-delay": "300", "trace": "t-1"}


def test_a_queues_ttl_counts_from_the_end_of_the_delay(conn) -> None:
    ch = conn.channel()
    ex, q = unique("delayed"), unique("q")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    ch.queue_declare(q, arguments={"x-message-ttl": 400})
    ch.queue_bind(q, ex)
    ch.confirm_delivery()
    ch.basic_publish(ex, "", b"fresh", _delayed(800))  # longer than the TTL
    assert [b for _, b in _consume(ch, q, 1)] == [b"fresh"]


@pytest.mark.parametrize("value", ["soon", Decimal("1.5"), 2**32, True])
def test_a_bad_x_delay_is_refused(conn, value: object) -> None:
    ch = conn.channel()
    ex = unique("delayed")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.basic_publish(ex, "k", b"x", _delayed(value))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.queue_declare(unique("q"))  # the next call sees the channel's close
    assert err.value.reply_code == 406 and "x-delay" in err.value.reply_text


def test_x_delay_on_another_exchange_type_is_only_a_header(conn) -> None:
    ch = conn.channel()
    q = unique("q")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"plain", _delayed(60_000))
    got = _consume(ch, q, 1, timeout=5)
    assert [b for _, b in got] == [b"plain"]  # as RabbitMQ: no plugin exchange, no delay


@pytest.mark.parametrize("kind, args", [
    ("x-delayed-message", {}),  # how it routes is not said
    ("x-delayed-message", {"x-delayed-type": "x-delayed-message"}),
    ("direct", {"x-delayed-type": "direct"}),  # only for the delayed type
    ("topic", {"x-unknown": "1"}),  # unknown arguments are not ignored
    ("topic", {"alternate-exchange": 5}),
])
def test_bad_exchange_arguments_are_406(conn, kind: str, args: dict[str, object]) -> None:
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.exchange_declare(unique("x"), kind, arguments=args)
    assert err.value.reply_code == 406


def test_redeclaring_with_other_arguments_is_406(conn) -> None:
    ch = conn.channel()
    ex = unique("x")
    ch.exchange_declare(ex, "direct", arguments={"alternate-exchange": "a"})
    ch.exchange_declare(ex, "direct", arguments={"alternate-exchange": "a"})  # same: fine
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.exchange_declare(ex, "direct", arguments={"alternate-exchange": "b"})
    assert err.value.reply_code == 406


# --- alternate exchanges -------------------------------------------------------------------


def test_what_routes_nowhere_goes_to_the_alternate_exchange(conn) -> None:
    ch = conn.channel()
    main, alt, q, lost = unique("main"), unique("alt"), unique("q"), unique("lost")
    ch.exchange_declare(alt, "fanout")
    ch.queue_declare(lost)
    ch.queue_bind(lost, alt)
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": alt})
    ch.queue_declare(q)
    ch.queue_bind(q, main, "a")
    ch.confirm_delivery()
    ch.basic_publish(main, "a", b"routed", mandatory=True)
    ch.basic_publish(main, "b", b"unrouted", mandatory=True)  # the AE takes it: no return
    assert [b for _, b in _consume(ch, q, 1)] == [b"routed"]
    assert [b for _, b in _consume(ch, lost, 1)] == [b"unrouted"]
    assert _consume(ch, q, 1, timeout=0.3) == []  # the AE's copy only


def test_alternate_exchanges_are_followed_as_a_chain_and_a_loop_ends(conn) -> None:
    ch = conn.channel()
    a, b, c, q = unique("a"), unique("b"), unique("c"), unique("q")
    ch.exchange_declare(c, "topic")
    ch.exchange_declare(b, "direct", arguments={"alternate-exchange": c})
    ch.exchange_declare(a, "direct", arguments={"alternate-exchange": b})
    ch.queue_declare(q)
    ch.queue_bind(q, c, "#")
    ch.confirm_delivery()
    ch.basic_publish(a, "x.y", b"via-c", mandatory=True)
    assert [m for _, m in _consume(ch, q, 1)] == [b"via-c"]
    # A loop (d -> e -> d) with nothing bound: unroutable, returned to a mandatory publish.
    d, e = unique("d"), unique("e")
    ch.exchange_declare(d, "direct", arguments={"alternate-exchange": e})
    ch.exchange_declare(e, "direct", arguments={"alternate-exchange": d})
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(d, "k", b"nowhere", mandatory=True)
    # An alternate exchange that does not exist: as if there were none.
    f = unique("f")
    ch.exchange_declare(f, "direct", arguments={"alternate-exchange": unique("missing")})
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(f, "k", b"nowhere", mandatory=True)


def test_exchange_arguments_and_held_delays_outlive_a_restart(tmp_path: Path) -> None:
    proc = AmqpProcess(tmp_path / "data").start()
    try:
        params = pika.ConnectionParameters("127.0.0.1", proc.port)
        main, alt, q, lost = unique("main"), unique("alt"), unique("q"), unique("lost")
        c = pika.BlockingConnection(params)
        ch = c.channel()
        ch.exchange_declare(alt, "fanout", durable=True)
        ch.queue_declare(lost, durable=True)
        ch.queue_bind(lost, alt)
        ch.exchange_declare(main, "x-delayed-message", durable=True,
                            arguments={"x-delayed-type": "direct", "alternate-exchange": alt})
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, main, "k")
        ch.confirm_delivery()
        ch.basic_publish(main, "k", b"held", _delayed(1500))  # confirmed: in the delay store
        c.close()
        proc.terminate()
        proc.start()
        c = pika.BlockingConnection(params)
        ch = c.channel()
        ch.exchange_declare(main, "x-delayed-message", durable=True,  # equivalent: no 406
                            arguments={"x-delayed-type": "direct", "alternate-exchange": alt})
        ch.confirm_delivery()
        ch.basic_publish(main, "other", b"to-alt", mandatory=True)
        assert [b for _, b in _consume(ch, lost, 1)] == [b"to-alt"]
        assert [b for _, b in _consume(ch, q, 1)] == [b"held"]
        c.close()
    finally:
        proc.terminate()
