"""Conformance table: the RabbitMQ tutorials 1-6 (rabbitmq.com/tutorials, Python/pika) run
against TideMQ's AMQP port. Each is the tutorial's code (sender and receiver) with unique
names and the receiver's endless loop bounded."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pika
import pytest

from .conftest import InProcess, unique

Connect = Callable[[], pika.BlockingConnection]


def _consume_until(channel: pika.adapters.blocking_connection.BlockingChannel, n: int,
                   got: list[bytes], timeout: float = 15.0) -> None:
    """Run start_consuming until ``n`` bodies are in ``got`` (or the timeout)."""
    conn = channel.connection
    deadline = threading.Timer(timeout, lambda: conn.add_callback_threadsafe(
        channel.stop_consuming))
    deadline.start()
    try:
        channel.start_consuming()
    finally:
        deadline.cancel()
    assert len(got) >= n, got


def hello_world(connect: Connect) -> None:
    queue = unique("hello")
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue=queue)
    channel.basic_publish(exchange='', routing_key=queue, body='Hello World!')
    connection.close()

    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue=queue)
    got: list[bytes] = []

    def callback(ch, method, properties, body):
        got.append(body)
        ch.stop_consuming()

    channel.basic_consume(queue=queue, on_message_callback=callback, auto_ack=True)
    _consume_until(channel, 1, got)
    assert got == [b'Hello World!']
    connection.close()


def work_queues(connect: Connect) -> None:
    queue = unique("task_queue")
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)
    for i in range(6):
        channel.basic_publish(
            exchange='', routing_key=queue, body=f"task {i}.",
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    connection.close()

    got: dict[int, list[bytes]] = {0: [], 1: []}
    total: list[bytes] = []
    lock = threading.Lock()
    workers = []
    for w in (0, 1):
        connection = connect()
        channel = connection.channel()
        channel.queue_declare(queue=queue, durable=True)
        channel.basic_qos(prefetch_count=1)

        def callback(ch, method, properties, body, w=w):
            with lock:
                got[w].append(body)
                total.append(body)
                done = len(total) >= 6
            ch.basic_ack(delivery_tag=method.delivery_tag)
            if done:
                for c in workers:
                    c.connection.add_callback_threadsafe(c.stop_consuming)

        channel.basic_consume(queue=queue, on_message_callback=callback)
        workers.append(channel)
    threads = [threading.Thread(target=_consume_until, args=(c, 0, [], 15)) for c in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(total) == sorted(f"task {i}.".encode() for i in range(6))
    for c in workers:
        c.connection.close()


def publish_subscribe(connect: Connect) -> None:
    exchange = unique("logs")
    receivers = []
    for _ in range(2):
        connection = connect()
        channel = connection.channel()
        channel.exchange_declare(exchange=exchange, exchange_type='fanout')
        result = channel.queue_declare(queue='', exclusive=True)
        queue_name = result.method.queue
        channel.queue_bind(exchange=exchange, queue=queue_name)
        receivers.append((channel, queue_name))
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare(exchange=exchange, exchange_type='fanout')
    channel.basic_publish(exchange=exchange, routing_key='', body="info: Hello World!")
    connection.close()
    for channel, queue_name in receivers:
        got: list[bytes] = []

        def callback(ch, method, properties, body, got=got):
            got.append(body)
            ch.stop_consuming()

        channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
        _consume_until(channel, 1, got)
        assert got == [b"info: Hello World!"]
        channel.connection.close()


def routing(connect: Connect) -> None:
    exchange = unique("direct_logs")
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare(exchange=exchange, exchange_type='direct')
    result = channel.queue_declare(queue='', exclusive=True)
    queue_name = result.method.queue
    for severity in ("warning", "error"):
        channel.queue_bind(exchange=exchange, queue=queue_name, routing_key=severity)

    sender = connect()
    sch = sender.channel()
    sch.exchange_declare(exchange=exchange, exchange_type='direct')
    for severity in ("info", "warning", "error"):
        sch.basic_publish(exchange=exchange, routing_key=severity, body=f"{severity}: hi")
    sender.close()
    got: list[bytes] = []

    def callback(ch, method, properties, body):
        got.append(body)
        if len(got) == 2:
            ch.stop_consuming()

    channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
    _consume_until(channel, 2, got)
    assert got == [b"warning: hi", b"error: hi"]
    connection.close()


def topics(connect: Connect) -> None:
    exchange = unique("topic_logs")
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare(exchange=exchange, exchange_type='topic')
    result = channel.queue_declare('', exclusive=True)
    queue_name = result.method.queue
    for binding_key in ("kern.*", "*.critical"):
        channel.queue_bind(exchange=exchange, queue=queue_name, routing_key=binding_key)
    sender = connect()
    sch = sender.channel()
    sch.exchange_declare(exchange=exchange, exchange_type='topic')
    for key in ("kern.critical", "anonymous.info", "auth.critical", "kern.info.x",
                "kern.info"):
        sch.basic_publish(exchange=exchange, routing_key=key, body=key)
    sender.close()
    got: list[bytes] = []

    def callback(ch, method, properties, body):
        got.append(body)
        if len(got) == 3:
            ch.stop_consuming()

    channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
    _consume_until(channel, 3, got)
    assert got == [b"kern.critical", b"auth.critical", b"kern.info"]
    connection.close()


def rpc(connect: Connect) -> None:
    rpc_queue = unique("rpc_queue")
    server_conn = connect()
    server = server_conn.channel()
    server.queue_declare(queue=rpc_queue)

    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    def on_request(ch, method, props, body):
        n = int(body)
        response = fib(n)
        ch.basic_publish(exchange='', routing_key=props.reply_to,
                         properties=pika.BasicProperties(correlation_id=props.correlation_id),
                         body=str(response))
        ch.basic_ack(delivery_tag=method.delivery_tag)
        ch.stop_consuming()

    server.basic_qos(prefetch_count=1)
    server.basic_consume(queue=rpc_queue, on_message_callback=on_request)
    t = threading.Thread(target=_consume_until, args=(server, 0, [], 15))
    t.start()

    class FibonacciRpcClient:
        def __init__(self):
            self.connection = connect()
            self.channel = self.connection.channel()
            result = self.channel.queue_declare(queue='', exclusive=True)
            self.callback_queue = result.method.queue
            self.channel.basic_consume(queue=self.callback_queue,
                                       on_message_callback=self.on_response, auto_ack=True)
            self.response = None
            self.corr_id = None

        def on_response(self, ch, method, props, body):
            if self.corr_id == props.correlation_id:
                self.response = body

        def call(self, n):
            self.response = None
            self.corr_id = str(uuid.uuid4())
            self.channel.basic_publish(
                exchange='', routing_key=rpc_queue,
                properties=pika.BasicProperties(reply_to=self.callback_queue,
                                                correlation_id=self.corr_id),
                body=str(n))
            self.connection.process_data_events(time_limit=15)
            return int(self.response)

    client = FibonacciRpcClient()
    assert client.call(10) == 55
    t.join(20)
    client.connection.close()
    server_conn.close()


TUTORIALS = {"1-hello-world": hello_world, "2-work-queues": work_queues,
             "3-publish-subscribe": publish_subscribe, "4-routing": routing,
             "5-topics": topics, "6-rpc": rpc}


@pytest.mark.parametrize("name", list(TUTORIALS))
def test_tutorial(amqp_server: InProcess, name: str) -> None:
    params = pika.ConnectionParameters("127.0.0.1", amqp_server.port)
    TUTORIALS[name](lambda: pika.BlockingConnection(params))
