"""pika BlockingConnection against the AMQP front: confirms, consume, ack / nack / reject, get,
qos, mandatory returns, x-arguments, errors with RabbitMQ's reply codes."""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest

from tidemq.amqp import _delivering

from .conftest import InProcess, unique


@pytest.fixture
def channel(amqp_server: InProcess):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_server.port))
    try:
        yield conn.channel()
    finally:
        if conn.is_open:
            conn.close()


@pytest.fixture
def pair(amqp_server: InProcess):
    """Two connections (two clients of one queue)."""
    params = pika.ConnectionParameters("127.0.0.1", amqp_server.port)
    conns = (pika.BlockingConnection(params), pika.BlockingConnection(params))
    try:
        yield conns
    finally:
        for c in conns:
            if c.is_open:
                c.close()


def _get(ch, queue: str, tries: int = 50):
    for _ in range(tries):
        m, p, b = ch.basic_get(queue)
        if m is not None:
            return m, p, b
        time.sleep(0.02)
    return None, None, None


def test_server_properties_name_tidemq(amqp_server: InProcess) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_server.port))
    try:
        props = conn._impl.server_properties
        assert props["product"] == b"TideMQ" or props["product"] == "TideMQ"
        assert props["capabilities"]["publisher_confirms"]
    finally:
        conn.close()


def test_publish_with_confirms_then_get(channel) -> None:
    q = unique("q")
    channel.queue_declare(q, durable=True)
    channel.confirm_delivery()
    props = pika.BasicProperties(content_type="text/plain", headers={"n": 1, "s": "x"},
                                 message_id="m1", correlation_id="c1", reply_to="r1",
                                 priority=3, delivery_mode=2)
    channel.basic_publish("", q, b"one", props)
    m, p, b = _get(channel, q)
    assert b == b"one" and not m.redelivered and m.exchange == "" and m.routing_key == q
    assert (p.content_type, p.message_id, p.correlation_id, p.reply_to, p.priority,
            p.delivery_mode) == ("text/plain", "m1", "c1", "r1", 3, 2)
    assert p.headers == {"n": 1, "s": "x"}
    channel.basic_ack(m.delivery_tag)
    assert channel.basic_get(q) == (None, None, None)  # get-empty


def test_nack_requeue_comes_back_redelivered(channel) -> None:
    q = unique("q")
    channel.queue_declare(q)
    channel.basic_publish("", q, b"x")
    m, _, _ = _get(channel, q)
    channel.basic_nack(m.delivery_tag, requeue=True)
    m2, _, b = _get(channel, q)
    assert b == b"x" and m2.redelivered
    channel.basic_reject(m2.delivery_tag, requeue=True)
    m3, _, _ = _get(channel, q)
    channel.basic_ack(m3.delivery_tag)


def test_reject_goes_to_dead_letter_exchange(channel) -> None:
    dlx, dlq, q = unique("dlx"), unique("dlq"), unique("q")
    channel.exchange_declare(dlx, "fanout")
    channel.queue_declare(dlq)
    channel.queue_bind(dlq, dlx)
    channel.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    channel.basic_publish("", q, b"poison")
    m, _, _ = _get(channel, q)
    channel.basic_reject(m.delivery_tag, requeue=False)
    m, p, b = _get(channel, dlq)
    assert b == b"poison"
    channel.basic_ack(m.delivery_tag)


def test_delivery_limit_dead_letters(channel) -> None:
    dlx, dlq, q = unique("dlx"), unique("dlq"), unique("q")
    channel.exchange_declare(dlx, "fanout")
    channel.queue_declare(dlq)
    channel.queue_bind(dlq, dlx)
    channel.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, "x-delivery-limit": 1,
                                        "x-queue-type": "quorum"})
    channel.basic_publish("", q, b"twice")
    for _ in range(2):
        m, _, _ = _get(channel, q)
        channel.basic_nack(m.delivery_tag, requeue=True)
    m, _, b = _get(channel, dlq)
    assert b == b"twice"


def test_consume_with_prefetch_and_multiple_ack(channel) -> None:
    q = unique("q")
    channel.queue_declare(q)
    for i in range(10):
        channel.basic_publish("", q, str(i).encode())
    channel.basic_qos(prefetch_count=3)
    got = []
    for method, _, body in channel.consume(q, inactivity_timeout=2):
        if method is None:
            break
        got.append((method.delivery_tag, body))
        # At most 3 unacked: ack every third with multiple=True.
        if len(got) % 3 == 0 or len(got) == 10:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if len(got) == 10:
            break
    channel.cancel()
    assert [b for _, b in got] == [str(i).encode() for i in range(10)]


def test_a_consumer_waiting_for_more_before_it_acks_still_gets_them(channel) -> None:
    # prefetch 12: credit freed by acks is refilled in batches of 3 (a quarter) or after
    # REFILL_WAIT. A consumer that acked one delivery and waits for one more before it acks
    # the rest holds back 1 credit: the refill must still come (the timer), not never.
    q = unique("q")
    channel.queue_declare(q)
    for i in range(14):
        channel.basic_publish("", q, str(i).encode())
    channel.basic_qos(prefetch_count=12)
    got = []
    for method, _, body in channel.consume(q, inactivity_timeout=3):
        assert method is not None, f"stalled after {len(got)} deliveries"
        got.append(body)
        if len(got) == 12:
            channel.basic_ack(method.delivery_tag - 11)  # one of twelve: 1 credit free
        if len(got) == 13:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if len(got) == 14:
            channel.basic_ack(method.delivery_tag)
            break
    channel.cancel()
    assert got == [str(i).encode() for i in range(14)]


def test_refills_after_acks_are_batched(amqp_server: InProcess, channel,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # One basic.ack at a time must not cost one broker fetch each (a quarter of the prefetch
    # at a time): count the fetches of a 200-message consume at prefetch 40. The timer's
    # refill (REFILL_WAIT) is put off here: this consumer acks as it goes, but on a busy
    # machine ten acks can take longer than 1 ms, and the timer's small refills are right then.
    monkeypatch.setattr(_delivering, "REFILL_WAIT", 5.0)
    broker = amqp_server.server.broker  # type: ignore[union-attr]
    q = unique("q")
    channel.queue_declare(q)
    for i in range(200):
        channel.basic_publish("", q, str(i).encode())
    calls = []
    fetch = broker.fetch

    def counting(*args, **kw):
        out = fetch(*args, **kw)
        calls.append(len(out))
        return out

    channel.basic_qos(prefetch_count=40)
    broker.fetch = counting
    try:
        got = []
        for method, _, body in channel.consume(q, inactivity_timeout=3):
            assert method is not None, f"stalled after {len(got)} deliveries"
            got.append(body)
            channel.basic_ack(method.delivery_tag)
            if len(got) == 200:
                break
        channel.cancel()
    finally:
        del broker.fetch
    assert got == [str(i).encode() for i in range(200)]
    fetched = [n for n in calls if n]
    assert sum(fetched) == 200
    assert len(fetched) <= 200 // 10 + 2, fetched  # one per read of acks: ~50


def test_queue_declared_after_publish_sees_only_later(channel) -> None:
    ex, q = unique("ex"), unique("q")
    channel.exchange_declare(ex, "topic")
    channel.queue_declare(unique("early"))  # a first queue so the exchange has a topic
    channel.basic_publish(ex, "a.b", b"before")
    channel.queue_declare(q)
    channel.queue_bind(q, ex, "a.#")
    channel.basic_publish(ex, "a.b", b"after")
    m, _, b = _get(channel, q)
    assert b == b"after"
    channel.basic_ack(m.delivery_tag)
    assert channel.basic_get(q) == (None, None, None)


def test_headers_exchange(channel) -> None:
    ex, q = unique("hx"), unique("q")
    channel.exchange_declare(ex, "headers")
    channel.queue_declare(q)
    channel.queue_bind(q, ex, arguments={"x-match": "all", "region": "eu"})
    channel.basic_publish(ex, "", b"us", pika.BasicProperties(headers={"region": "us"}))
    channel.basic_publish(ex, "", b"eu", pika.BasicProperties(headers={"region": "eu"}))
    m, _, b = _get(channel, q)
    assert b == b"eu"


def test_mandatory_unroutable_is_returned(channel) -> None:
    ex = unique("ex")
    channel.exchange_declare(ex, "direct")
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(ex, "nowhere", b"lost", mandatory=True)


def test_purge_delete_and_counts(channel) -> None:
    q = unique("q")
    channel.queue_declare(q)
    channel.confirm_delivery()
    for _ in range(4):
        channel.basic_publish("", q, b"x")
    assert channel.queue_declare(q, passive=True).method.message_count == 4
    assert channel.queue_purge(q).method.message_count == 4
    assert channel.queue_declare(q, passive=True).method.message_count == 0
    channel.basic_publish("", q, b"x")
    assert channel.queue_delete(q).method.message_count == 1
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        channel.queue_declare(q, passive=True)
    assert err.value.reply_code == 404


def test_recover_redelivers_unacked(channel) -> None:
    q = unique("q")
    channel.queue_declare(q)
    channel.basic_publish("", q, b"x")
    m, _, _ = _get(channel, q)
    channel.basic_recover(requeue=True)
    m2, _, b = _get(channel, q)
    assert b == b"x" and m2.redelivered


def test_unknown_x_argument_is_406(channel) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        channel.queue_declare(unique("q"), arguments={"x-overflow": "reject-publish"})
    assert err.value.reply_code == 406


@pytest.mark.parametrize(("args", "code"), [
    ({"x-dead-letter-routing-key": "k"}, 406),  # no DLX: RabbitMQ's 406 too
    ({"x-dead-letter-exchange": ""}, 540),  # by each message's own key: not one place
    ({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "SELF"}, 406),  # itself
])
def test_dead_letter_arguments_that_cannot_be_honoured_are_refused(channel, args, code) -> None:
    # DLX "" alone once meant "no DLX" here: dead letters went to <topic>.dlq, not where
    # RabbitMQ routes them.
    q = unique("q")
    args = {k: q if v == "SELF" else v for k, v in args.items()}
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        channel.queue_declare(q, arguments=args)
    assert err.value.reply_code == code


@pytest.mark.parametrize(("args", "code"), [
    ({"x-queue-mode": "weird"}, 406), ({"x-queue-mode": 1}, 406),
    ({"x-queue-type": "stream"}, 540), ({"x-queue-type": "weird"}, 406),
    ({"x-max-priority": 256}, 406),
])
def test_queue_argument_values_are_checked(channel, args, code) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        channel.queue_declare(unique("q"), arguments=args)
    assert err.value.reply_code == code


def test_lazy_and_quorum_queues_are_queues(channel) -> None:
    q = unique("lazy")
    channel.queue_declare(q, durable=True, arguments={"x-queue-mode": "lazy",
                                                      "x-queue-type": "quorum"})
    channel.basic_publish("", q, b"kept")
    assert _get(channel, q)[2] == b"kept"


def test_unknown_exchange_is_404(channel) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        channel.queue_bind(unique("none"), unique("nope"))
    assert err.value.reply_code == 404


def test_exclusive_queue_is_locked_and_goes_with_its_connection(amqp_server: InProcess) -> None:
    params = pika.ConnectionParameters("127.0.0.1", amqp_server.port)
    owner = pika.BlockingConnection(params)
    other = pika.BlockingConnection(params)
    try:
        q = owner.channel().queue_declare("", exclusive=True).method.queue
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            other.channel().basic_consume(q, lambda *a: None)
        assert err.value.reply_code == 405
        owner.close()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            other.channel().queue_declare(q, passive=True)
        assert err.value.reply_code == 404
    finally:
        for c in (owner, other):
            if c.is_open:
                c.close()


def test_unacked_go_back_when_the_connection_closes(amqp_server: InProcess) -> None:
    params = pika.ConnectionParameters("127.0.0.1", amqp_server.port)
    q = unique("q")
    a = pika.BlockingConnection(params)
    ch = a.channel()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    m, _, _ = _get(ch, q)
    assert m is not None
    a.close()
    b = pika.BlockingConnection(params)
    try:
        m, _, body = _get(b.channel(), q)
        assert body == b"x" and m.redelivered
    finally:
        b.close()


def test_bad_login_is_refused(amqp_server: InProcess) -> None:
    creds = pika.PlainCredentials("guest", "wrong")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_server.port,
                                                          credentials=creds))


def test_message_ttl_expires(channel) -> None:
    q = unique("q")
    channel.queue_declare(q, arguments={"x-message-ttl": 50})
    channel.basic_publish("", q, b"short")
    channel.basic_publish("", q, b"shorter", pika.BasicProperties(expiration="10"))
    time.sleep(0.3)
    assert channel.basic_get(q) == (None, None, None)


def test_a_queues_ttl_is_its_own(channel) -> None:
    # One message to two queues: the one with x-message-ttl loses it, the other keeps it
    # (the TTL was once put in the record, so both lost it: data loss for the queue
    # without a TTL).
    x, short, keep = unique("x"), unique("short"), unique("keep")
    channel.exchange_declare(x, "fanout")
    channel.queue_declare(short, arguments={"x-message-ttl": 50})
    channel.queue_declare(keep)
    channel.queue_bind(short, x)
    channel.queue_bind(keep, x)
    channel.confirm_delivery()
    channel.basic_publish(x, "", b"m")
    time.sleep(0.3)
    assert channel.queue_declare(short, passive=True).method.message_count == 0
    assert channel.basic_get(short) == (None, None, None)
    m, props, body = _get(channel, keep)
    assert body == b"m" and props.expiration is None


def test_a_queues_ttl_reaches_groups_stored_without_it(tmp_path) -> None:
    # A catalogue of an earlier version: the queue's x-message-ttl was in its records, not
    # in its group, and its group told priorities apart without x-max-priority. Loading it
    # gives the groups their message_ttl and max_priority.
    from tidemq.amqp._model import group_name, queue_topic
    from tidemq.broker import GroupSettings

    from .conftest import in_process

    q = unique("old")
    topic, group = queue_topic(q), group_name(q)
    with in_process(tmp_path) as srv:
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", srv.port))
        conn.channel().queue_declare(q, durable=True, arguments={"x-message-ttl": 1500})
        conn.close()
        b = srv.server.broker  # type: ignore[union-attr]
        assert srv.run(lambda: b.describe_group(topic, group).settings.message_ttl) == 1.5

        def downgrade() -> None:
            s = b.describe_group(topic, group).settings
            b.update_group(topic, group, GroupSettings(**{
                f: getattr(s, f) for f in s.__struct_fields__
                if f not in ("message_ttl", "max_priority")}),
                now_us=time.time_ns() // 1000, mono_us=time.monotonic_ns() // 1000)
        srv.run(downgrade)
        assert srv.run(lambda: b.describe_group(topic, group).settings.message_ttl) is None
    with in_process(tmp_path) as srv:
        b = srv.server.broker  # type: ignore[union-attr]
        s = srv.run(lambda: b.describe_group(topic, group).settings)
        assert (s.message_ttl, s.max_priority) == (1.5, 0)  # 0: no x-max-priority, FIFO


def test_large_message_spans_many_frames(channel) -> None:
    q = unique("q")
    channel.queue_declare(q)
    body = bytes(range(256)) * 3000  # 768 000 bytes: several body frames each way
    channel.confirm_delivery()
    channel.basic_publish("", q, body)
    m, _, got = _get(channel, q)
    assert got == body


def test_select_connection(amqp_server: InProcess) -> None:
    """pika's callback-style SelectConnection: declare, confirm, consume, ack, close."""
    q = unique("sel")
    state: dict[str, object] = {"got": None, "confirmed": 0}

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch):
        state["ch"] = ch
        ch.confirm_delivery(lambda frame: state.__setitem__("confirmed", 1))
        ch.queue_declare(q, callback=lambda _: on_declared(ch))

    def on_declared(ch):
        ch.basic_consume(q, on_message)
        ch.basic_publish("", q, b"selected")

    def on_message(ch, method, props, body):
        state["got"] = body
        ch.basic_ack(method.delivery_tag)
        ch.connection.close()

    conn = pika.SelectConnection(pika.ConnectionParameters("127.0.0.1", amqp_server.port),
                                 on_open_callback=on_open,
                                 on_close_callback=lambda *a: conn.ioloop.stop())
    timer = conn.ioloop.call_later(15, conn.ioloop.stop)
    conn.ioloop.start()
    conn.ioloop.remove_timeout(timer)
    conn.ioloop.close()
    assert state["got"] == b"selected" and state["confirmed"] == 1


def test_unacked_of_a_consumer_go_back_when_its_channel_closes(amqp_server: InProcess) -> None:
    params = pika.ConnectionParameters("127.0.0.1", amqp_server.port)
    q = unique("q")
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.queue_declare(q)
        ch.basic_publish("", q, b"held")
        for _, _, body in ch.consume(q, inactivity_timeout=5):
            assert body == b"held"
            break
        ch.close()  # no ack: the message goes back to the queue at once
        m, _, body = _get(conn.channel(), q)
        assert body == b"held" and m.redelivered
    finally:
        conn.close()


def test_cancel_with_unacked_keeps_them_ackable(channel) -> None:
    q = unique("q")
    channel.queue_declare(q)
    channel.basic_publish("", q, b"a")
    tag = None
    for method, _, _ in channel.consume(q, inactivity_timeout=5):
        tag = method.delivery_tag
        break
    channel.cancel()
    channel.basic_ack(tag)
    assert channel.queue_declare(q, passive=True).method.message_count == 0
    assert channel.basic_get(q) == (None, None, None)


def test_full_backlog_blocks_the_publisher_until_there_is_room(amqp_server: InProcess) -> None:
    """A topic at its backlog limit with policy block: the publish waits (its connection is
    not read) and goes through, confirmed, once a consumer made room; with policy reject it
    is nacked."""
    import threading

    from tidemq.broker import TopicConfig

    q, r = unique("blocked"), unique("rejecting")
    srv = amqp_server.server
    assert srv is not None
    amqp_server.run(lambda: srv.broker.create_topic(
        f"amqp.q.{q}", TopicConfig(backlog_limit=2, backlog_policy="block"), now_us=srv.now_us()))
    amqp_server.run(lambda: srv.broker.create_topic(
        f"amqp.q.{r}", TopicConfig(backlog_limit=1, backlog_policy="reject"),
        now_us=srv.now_us()))
    params = pika.ConnectionParameters("127.0.0.1", amqp_server.port)
    pub = pika.BlockingConnection(params)
    con = pika.BlockingConnection(params)
    try:
        pch = pub.channel()
        pch.queue_declare(q)
        pch.confirm_delivery()
        pch.basic_publish("", q, b"1")
        pch.basic_publish("", q, b"2")
        done = threading.Event()

        def third() -> None:
            pch.basic_publish("", q, b"3")  # returns once confirmed
            done.set()

        t = threading.Thread(target=third)
        t.start()
        assert not done.wait(0.5)  # held: the backlog is full
        cch = con.channel()
        m, _, body = _get(cch, q)
        cch.basic_ack(m.delivery_tag)
        assert done.wait(10)
        t.join(10)
        bodies = []
        for _ in range(2):
            m, _, body = _get(cch, q)
            bodies.append(body)
            cch.basic_ack(m.delivery_tag)
        assert bodies == [b"2", b"3"]
        pch.queue_declare(r)
        pch.basic_publish("", r, b"fits")
        with pytest.raises(pika.exceptions.NackError):
            pch.basic_publish("", r, b"no room")
    finally:
        pub.close()
        con.close()


def test_auto_delete_queue_goes_with_its_last_consumer(channel) -> None:
    q = unique("auto")
    channel.queue_declare(q, auto_delete=True)
    tag = channel.basic_consume(q, lambda *a: None)
    channel.basic_cancel(tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        channel.queue_declare(q, passive=True)
    assert err.value.reply_code == 404


def test_x_expires_deletes_an_unused_queue(channel) -> None:
    q = unique("expiring")
    channel.queue_declare(q, arguments={"x-expires": 200})
    channel.connection.sleep(0.8)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        channel.queue_declare(q, passive=True)
    assert err.value.reply_code == 404


def test_channel_flow_pauses_deliveries(channel) -> None:
    q = unique("flow")
    channel.queue_declare(q)
    got: list[bytes] = []
    channel.basic_consume(q, lambda ch, m, p, b: got.append(b), auto_ack=True)
    channel._impl.flow(False, lambda active: None)
    channel.connection.sleep(0.2)
    channel.basic_publish("", q, b"later")
    channel.connection.sleep(0.3)
    assert got == []
    channel._impl.flow(True, lambda active: None)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        channel.connection.sleep(0.05)
    assert got == [b"later"]


def test_message_over_the_topics_limit(channel) -> None:
    """Larger than the topic's max_message_bytes (1 MiB by default): nacked under confirms;
    without confirms the channel is closed with 406, as RabbitMQ does."""
    q = unique("big")
    channel.queue_declare(q)
    channel.confirm_delivery()
    channel.basic_publish("", q, b"small")
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", q, b"x" * (2 << 20))
    assert channel.queue_declare(q, passive=True).method.message_count == 1
    conn = channel.connection
    ch2 = conn.channel()
    ch2.basic_publish("", q, b"x" * (2 << 20))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch2.queue_declare(q, passive=True)
    assert err.value.reply_code == 406


def test_one_queue_bound_to_two_exchanges_while_consuming(channel) -> None:
    """A consumer already open gets messages of an exchange bound after it started; an
    unbind stops them; the queue's own (default-exchange) messages keep coming."""
    a, b, q = unique("xa"), unique("xb"), unique("q")
    channel.exchange_declare(a, "topic")
    channel.exchange_declare(b, "fanout")
    channel.queue_declare(q)
    channel.queue_bind(q, a, "k.#")
    got: list[tuple[str, bytes]] = []
    channel.basic_consume(q, lambda ch, m, p, body: got.append((m.exchange, body)),
                          auto_ack=True)
    channel.basic_publish(a, "k.1", b"from a")
    channel.queue_bind(q, b)  # while consuming
    channel.basic_publish(b, "", b"from b")
    channel.basic_publish("", q, b"direct")

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 5
        while len(got) < n and time.monotonic() < deadline:
            channel.connection.sleep(0.05)

    wait_for(3)
    assert sorted(got) == [("", b"direct"), (a, b"from a"), (b, b"from b")]
    channel.queue_unbind(q, b)
    channel.basic_publish(b, "", b"unbound")
    channel.basic_publish(a, "k.2", b"still a")
    wait_for(4)
    channel.connection.sleep(0.2)
    assert got[3:] == [(a, b"still a")]


def test_queue_names_that_differ_only_in_case_are_refused(amqp_server: InProcess) -> None:
    # TideMQ topics are case-insensitive: "Orders-…" and "orders-…" would be one topic, so
    # a publish to one would reach both and deleting one would delete the other's messages.
    params = pika.ConnectionParameters("127.0.0.1", amqp_server.port)
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        upper = unique("Orders")
        lower = upper.lower()
        ch.queue_declare(upper)
        ch.confirm_delivery()
        ch.basic_publish("", upper, b"kept")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare(lower)
        assert err.value.reply_code == 406
        assert upper in err.value.reply_text
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare(lower, passive=True)  # names are case-sensitive, as RabbitMQ's
        assert err.value.reply_code == 404
        ch = conn.channel()
        assert ch.queue_delete(lower).method.message_count == 0  # not there: nothing deleted
        _, _, body = _get(ch, upper)
        assert body == b"kept"
        ch.queue_delete(upper)
        ch.queue_declare(lower)  # the name is free again
        ch.queue_delete(lower)
    finally:
        conn.close()


def test_exchange_names_that_differ_only_in_case_are_refused(amqp_server: InProcess) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_server.port))
    try:
        ch = conn.channel()
        upper = unique("Events")
        ch.exchange_declare(upper, "fanout")
        q = unique("q")
        ch.queue_declare(q)
        ch.queue_bind(q, upper)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.exchange_declare(upper.lower(), "fanout")
        assert err.value.reply_code == 406
        ch = conn.channel()
        ch.exchange_delete(upper.lower())  # not there: the bound exchange's topic stays
        ch.basic_publish(upper, "", b"routed")
        _, _, body = _get(ch, q)
        assert body == b"routed"
    finally:
        conn.close()


@pytest.mark.parametrize("name", ["amqp.q.orders", "AMQP.x.hdeadbeef"])
def test_exchange_names_in_the_fronts_own_topic_space_are_refused(channel, name: str) -> None:
    # Queues' own topics are amqp.q.<queue>; an exchange there would share a queue's topic.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        channel.exchange_declare(name, "topic")
    assert err.value.reply_code == 403


def test_an_exclusive_consumer_is_the_queues_only_one(pair) -> None:
    a, b = pair
    cha, chb = a.channel(), b.channel()
    q = unique("q")
    cha.queue_declare(q)
    tag = cha.basic_consume(q, lambda *_: None, exclusive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        chb.basic_consume(q, lambda *_: None)  # another connection: refused
    assert err.value.reply_code == 403 and "exclusive use" in err.value.reply_text
    chb = b.channel()
    cha.basic_cancel(tag)
    chb.basic_consume(q, lambda *_: None)  # the exclusive one is gone: allowed
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        cha.basic_consume(q, lambda *_: None, exclusive=True)  # not alone any more
    assert err.value.reply_code == 403


def test_consumer_arguments_that_would_change_deliveries_are_refused(channel) -> None:
    q = unique("q")
    channel.queue_declare(q)
    channel.basic_publish("", q, b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        channel.basic_consume(q, lambda *_: None, arguments={"x-priority": 10})
    assert err.value.reply_code == 406 and "x-priority" in err.value.reply_text
    ch = channel.connection.channel()
    got: list[bytes] = []
    ch.basic_consume(q, lambda c, m, p, body: got.append(body), auto_ack=True,
                     arguments={"x-cancel-on-ha-failover": True})  # no failover here: accepted
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    assert got == [b"x"]


def test_a_prefetch_size_is_not_implemented_as_in_rabbitmq(amqp_server: InProcess) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_server.port))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10, prefetch_size=0)  # 0: no byte limit, fine
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
        ch.basic_qos(prefetch_size=65536)
    assert err.value.reply_code == 540


def _pump(conns, until) -> None:
    """Let the connections' callbacks run until ``until()`` (at most 10 s)."""
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        for c in conns:
            c.process_data_events(time_limit=0.02)


def test_single_active_consumer_gets_everything_until_it_goes(pair) -> None:
    a, b = pair
    cha, chb = a.channel(), b.channel()
    q = unique("sac")
    cha.queue_declare(q, arguments={"x-single-active-consumer": True})
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    cha.basic_qos(prefetch_count=5)
    tag_a = cha.basic_consume(q, lambda c, m, p, body: (got_a.append(body),
                                                        c.basic_ack(m.delivery_tag)))
    chb.basic_consume(q, lambda c, m, p, body: (got_b.append(body),
                                                c.basic_ack(m.delivery_tag)))
    assert chb.queue_declare(q, passive=True).method.consumer_count == 2
    cha.confirm_delivery()
    for i in range(20):
        cha.basic_publish("", q, b"%d" % i)
    _pump(pair, lambda: len(got_a) == 20)
    assert got_a == [b"%d" % i for i in range(20)] and got_b == []  # in order, one only
    cha.basic_cancel(tag_a)  # the active one goes: b takes over
    for i in range(20, 25):
        cha.basic_publish("", q, b"%d" % i)
    _pump(pair, lambda: len(got_b) == 5)
    assert got_b == [b"%d" % i for i in range(20, 25)] and len(got_a) == 20


def test_single_active_consumer_hands_over_what_the_lost_one_held(pair) -> None:
    a, b = pair
    cha, chb = a.channel(), b.channel()
    q = unique("sac")
    cha.queue_declare(q, arguments={"x-single-active-consumer": True})
    held: list[bytes] = []
    cha.basic_consume(q, lambda c, m, p, body: held.append(body))  # never acks
    got_b: list[bytes] = []
    chb.basic_consume(q, lambda c, m, p, body: (got_b.append(body),
                                                c.basic_ack(m.delivery_tag)))
    chb.confirm_delivery()
    for i in range(3):
        chb.basic_publish("", q, b"%d" % i)
    _pump(pair, lambda: len(held) == 3)
    assert held == [b"0", b"1", b"2"] and got_b == []
    a.close()  # unacked: delivered again, to the consumer that takes over
    _pump([b], lambda: len(got_b) == 3)
    assert sorted(got_b) == [b"0", b"1", b"2"]


def test_single_active_consumer_argument_must_be_a_boolean(channel) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        channel.queue_declare(unique("q"), arguments={"x-single-active-consumer": "yes"})
    assert err.value.reply_code == 406
