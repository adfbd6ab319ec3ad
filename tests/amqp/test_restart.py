"""A server subprocess: publisher confirms under durability ``always`` survive kill -9; aio-pika's
robust connection comes back after a restart; durable queues and bindings outlive restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import pika

from tidemq.client import Client

from .conftest import AmqpProcess, unique


def test_confirmed_publishes_survive_kill_9(tmp_path: Path) -> None:
    proc = AmqpProcess(tmp_path / "data").start()
    q = unique("durable")
    try:
        with Client(f"tidemq://127.0.0.1:{proc.binary_port}") as admin:
            admin.create_topic(f"amqp.q.{q}", durability="always")
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", proc.port))
        ch = conn.channel()
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        confirmed = []
        for i in range(200):
            ch.basic_publish("", q, f"m{i}".encode(),
                             pika.BasicProperties(delivery_mode=2))  # returns once confirmed
            confirmed.append(f"m{i}".encode())
        proc.kill()  # kill -9 right after the last confirm: no shutdown code runs
        try:
            conn.close()
        except Exception:
            pass
        proc.start()
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", proc.port))
        ch = conn.channel()
        assert ch.queue_declare(q, passive=True).method.message_count == len(confirmed)
        got = []
        while True:
            m, _, body = ch.basic_get(q, auto_ack=True)
            if m is None:
                break
            got.append(body)
        assert got == confirmed  # 0 confirmed lost, in order
        conn.close()
    finally:
        proc.terminate()


def test_durable_queue_and_bindings_outlive_a_restart(amqp_process: AmqpProcess) -> None:
    ex, q = unique("ex"), unique("q")
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_process.port))
    ch = conn.channel()
    ch.exchange_declare(ex, "topic", durable=True)
    ch.queue_declare(q, durable=True)
    ch.queue_bind(q, ex, "a.*")
    temp = ch.queue_declare("", exclusive=True).method.queue
    conn.close()
    amqp_process.terminate()
    amqp_process.start()
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_process.port))
    ch = conn.channel()
    ch.exchange_declare(ex, "topic", passive=True)
    ch.confirm_delivery()
    ch.basic_publish(ex, "a.b", b"routed", mandatory=True)  # UnroutableError if unbound
    m, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"routed"
    try:
        ch.queue_declare(temp, passive=True)
        raise AssertionError("the exclusive queue should be gone after the restart")
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
    conn.close()


def test_aio_pika_robust_connection_reconnects(amqp_process: AmqpProcess) -> None:
    async def main() -> None:
        q_name = unique("robust")
        conn = await aio_pika.connect_robust(amqp_process.url, reconnect_interval=0.3)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            queue = await ch.declare_queue(q_name, durable=True)
            await ch.default_exchange.publish(aio_pika.Message(b"before"), routing_key=q_name)
            msg = await queue.get(timeout=5)
            assert msg is not None and msg.body == b"before"
            await msg.ack()
            reconnected = asyncio.Event()
            conn.reconnect_callbacks.add(lambda *_: reconnected.set())
            await asyncio.get_running_loop().run_in_executor(None, amqp_process.terminate)
            await asyncio.get_running_loop().run_in_executor(None, amqp_process.start)
            await asyncio.wait_for(reconnected.wait(), 20)
            await ch.default_exchange.publish(aio_pika.Message(b"after"), routing_key=q_name)
            got: list[bytes] = []
            async with queue.iterator() as it:
                async for m in it:
                    async with m.process():
                        got.append(m.body)
                    break
            assert got == [b"after"]

    asyncio.run(asyncio.wait_for(main(), 60))
