"""Where group-commit rounds run (``server/_driver.py``): on the loop when nothing else waits,
else on the worker — and either way a publish under ``always`` is answered only once durable."""

from __future__ import annotations

from pathlib import Path

import pytest

import tidemq
from tidemq.server import _driver

from .test_idle_poll import server_thread


def _publish_one_at_a_time(srv: object, n: int) -> None:
    with tidemq.Client(f"tidemq://127.0.0.1:{srv.port}") as mq:  # type: ignore[attr-defined]
        mq.create_topic("t", durability="always")
        log = srv.broker._topic("t").logs[0]  # type: ignore[attr-defined]
        for k in range(n):
            mq.publish("t", b"m%d" % k)
            # answered only once durable: the fsync covered this message (offset k)
            assert log.synced_position >= k + 1


def test_a_lone_publisher_is_fsynced_on_the_loop(tmp_path: Path) -> None:
    with server_thread(data=str(tmp_path)) as srv:
        _publish_one_at_a_time(srv, 30)
        assert srv.driver is not None
        assert srv.driver.inline_rounds > 0
        assert srv.driver.commits.rounds >= 30


def test_without_the_idle_poll_rounds_stay_on_the_worker(tmp_path: Path) -> None:
    # spin_us=0 watches no socket: the loop cannot tell whether input waits.
    with server_thread(data=str(tmp_path), spin_us=0) as srv:
        _publish_one_at_a_time(srv, 10)
        assert srv.driver is not None
        assert srv.driver.inline_rounds == 0
        assert srv.driver.commits.rounds >= 10


def test_after_a_slow_round_the_next_runs_on_the_worker(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # A round slower than INLINE_ROUND_MAX (a slow disk) must not stall the loop again.
    monkeypatch.setattr(_driver, "INLINE_ROUND_MAX", 0.0)
    with server_thread(data=str(tmp_path)) as srv:
        _publish_one_at_a_time(srv, 10)
        assert srv.driver is not None
        assert srv.driver.inline_rounds == 0


def test_answers_and_deliveries_leave_before_the_idle_poll_spins(tmp_path: Path) -> None:
    # The idle poll spins up to spin_us for the next request: whatever a connection has queued
    # (an answer sent when a commit round ended, deliveries of the push pass) is written first,
    # or the client waits out the spin for it.
    with server_thread(data=str(tmp_path)) as srv:
        queued: list[int] = []
        run = srv.idle.run

        def watched() -> None:
            queued.append(sum(len(c._out) for c in srv.connections))
            run()

        srv.idle.run = watched  # type: ignore[method-assign]
        with tidemq.Client(f"tidemq://127.0.0.1:{srv.port}") as mq:
            mq.create_topic("t", durability="always")
            sub = mq.subscribe("t", "g")
            for k in range(20):
                mq.publish("t", b"m%d" % k)
                [m] = sub.receive(1, 5.0)
                m.ack()
        assert queued and max(queued) == 0, queued


def test_amqp_deliveries_are_pumped_before_the_idle_poll_spins(tmp_path: Path) -> None:
    # The AMQP front pumps deliveries from a callback of its own (call_soon): it must run
    # before the spin, not after it.
    import pika

    with server_thread(data=str(tmp_path), amqp_port=0) as srv:
        front = srv._amqp
        assert front is not None and srv.amqp_port is not None
        pending: list[bool] = []
        run = srv.idle.run

        def watched() -> None:
            pending.append(any(s._pump_scheduled for s in front.sessions))
            run()

        srv.idle.run = watched  # type: ignore[method-assign]
        params = pika.ConnectionParameters("127.0.0.1", srv.amqp_port)
        pub, con = pika.BlockingConnection(params), pika.BlockingConnection(params)
        try:
            pch, cch = pub.channel(), con.channel()
            pch.queue_declare("q")
            pch.confirm_delivery()
            for k in range(20):
                pch.basic_publish("", "q", b"m%d" % k)
                method, _, body = next(cch.consume("q", inactivity_timeout=5))
                assert body == b"m%d" % k
                cch.basic_ack(method.delivery_tag)
            cch.cancel()
        finally:
            pub.close()
            con.close()
        assert pending and not any(pending), pending


@pytest.mark.parametrize("spin_us", [500, 0], ids=["loop", "worker"])
def test_a_round_that_breaks_answers_its_publishes_with_an_error(tmp_path: Path,
                                                                spin_us: int) -> None:
    # A bug inside a round (here: its fsync timer is gone, so it fails before any fsync) must
    # not answer what it did not fsync as durable: not on the loop, not on the worker.
    with server_thread(data=str(tmp_path), spin_us=spin_us) as srv, \
            tidemq.Client(f"tidemq://127.0.0.1:{srv.port}") as mq:
        mq.create_topic("t", durability="always")
        mq.publish("t", b"fine")
        log = srv.broker._topic("t").logs[0]  # type: ignore[attr-defined]
        assert srv.driver is not None
        srv.driver.sync_times = None  # type: ignore[assignment]
        with pytest.raises(tidemq.errors.StorageFailed):
            mq.publish("t", b"not durable")
        assert log.synced_position == 1 < log.end_offset
