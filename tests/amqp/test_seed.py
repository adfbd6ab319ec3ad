"""The seed's RabbitMQ producer and consumer (docs: message-queue-system-design.md, "3. RabbitMQ
Integration"), copied as the seed has them apart from the port, against TideMQ's AMQP port."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import List  # noqa: UP035  (as the seed has it)

import pika

from .conftest import InProcess, unique

logger = logging.getLogger(__name__)
PORT = 5672  # set by the test: the seed connects to the default port


class RabbitMQProducer:
    """RabbitMQ message producer"""

    def __init__(self, host: str = 'localhost', exchange: str = 'orders'):
        """
        Args:
            host: RabbitMQ host
            exchange: Exchange name
        """
        self.host = host
        self.exchange = exchange

        # Connect to RabbitMQ
        connection = pika.BlockingConnection(
            pika.ConnectionParameters(host=self.host, port=PORT)
        )
        self.channel = connection.channel()

        # Declare exchange
        self.channel.exchange_declare(
            exchange=self.exchange,
            exchange_type='topic',
            durable=True
        )

    def publish(self, routing_key: str, message: dict):
        """
        Publish message

        Args:
            routing_key: Routing key (e.g., 'order.created')
            message: Message data
        """
        self.channel.basic_publish(
            exchange=self.exchange,
            routing_key=routing_key,
            body=json.dumps(message),
            properties=pika.BasicProperties(
                delivery_mode=2,  # Persistent
                content_type='application/json'
            )
        )
        logger.info(f"Published message to {routing_key}")

    def close(self):
        """Close connection"""
        self.channel.close()


class RabbitMQConsumer:
    """RabbitMQ message consumer"""

    def __init__(
        self,
        host: str = 'localhost',
        exchange: str = 'orders',
        queue: str = 'order_processing',
        routing_keys: List[str] = None  # noqa: UP006, RUF013
    ):
        """
        Args:
            host: RabbitMQ host
            exchange: Exchange name
            queue: Queue name
            routing_keys: Routing keys to bind (e.g., ['order.*'])
        """
        self.host = host
        self.exchange = exchange
        self.queue = queue
        self.routing_keys = routing_keys or ['#']

        # Connect to RabbitMQ
        connection = pika.BlockingConnection(
            pika.ConnectionParameters(host=self.host, port=PORT)
        )
        self.channel = connection.channel()

        # Declare exchange
        self.channel.exchange_declare(
            exchange=self.exchange,
            exchange_type='topic',
            durable=True
        )

        # Declare queue
        self.channel.queue_declare(queue=self.queue, durable=True)

        # Bind queue to exchange
        for routing_key in self.routing_keys:
            self.channel.queue_bind(
                exchange=self.exchange,
                queue=self.queue,
                routing_key=routing_key
            )

        # Set prefetch count (QoS)
        self.channel.basic_qos(prefetch_count=10)

    def consume(self, callback: Callable[[dict], None]):
        """
        Start consuming messages

        Args:
            callback: Function to call for each message
        """
        def on_message(ch, method, properties, body):
            """Handle incoming message"""
            try:
                message = json.loads(body)
                callback(message)

                # Acknowledge message
                ch.basic_ack(delivery_tag=method.delivery_tag)

            except Exception as e:
                logger.error(f"Error processing message: {e}")
                # Reject and requeue
                ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True)

        self.channel.basic_consume(
            queue=self.queue,
            on_message_callback=on_message
        )

        logger.info(f"Started consuming from queue: {self.queue}")
        self.channel.start_consuming()

    def close(self):
        """Close connection"""
        self.channel.close()


def test_seed_producer_and_consumer(amqp_server: InProcess) -> None:
    global PORT
    PORT = amqp_server.port
    exchange, queue = unique("orders"), unique("order_processing")
    consumer = RabbitMQConsumer(host="127.0.0.1", exchange=exchange, queue=queue,
                                routing_keys=["order.*"])
    producer = RabbitMQProducer(host="127.0.0.1", exchange=exchange)
    producer.publish("order.created", {"order_id": 1, "event": "created"})
    producer.publish("invoice.paid", {"invoice_id": 7, "event": "paid"})
    producer.publish("order.shipped", {"order_id": 1, "event": "shipped"})

    seen: list[dict] = []
    failed_once: set[str] = set()
    done = threading.Event()

    def handle(message: dict) -> None:
        seen.append(message)
        if message["event"] == "shipped" and "shipped" not in failed_once:
            failed_once.add("shipped")
            raise RuntimeError("a failing callback: the message must come back")
        if len(seen) == 3:
            consumer.channel.stop_consuming()
            done.set()

    timer = threading.Timer(20, lambda: consumer.channel.connection.add_callback_threadsafe(
        consumer.channel.stop_consuming))
    timer.start()
    try:
        consumer.consume(handle)
    finally:
        timer.cancel()
    assert done.is_set(), seen
    assert [m["event"] for m in seen] == ["created", "shipped", "shipped"]
    assert all("invoice_id" not in m for m in seen)
    # Nothing left: the acks were taken, the requeued message was delivered once more only.
    assert consumer.channel.queue_declare(queue, passive=True).method.message_count == 0
    producer.close()
    consumer.close()
    # The seed's close() leaves the connections open: close them (ResourceWarning otherwise).
    producer.channel.connection.close()
    consumer.channel.connection.close()
