"""AMQP 0-9-1 front of the server: pika, aio-pika, kombu/Celery talk to TideMQ (docs/amqp.md).

``tidemq serve --amqp-port 5673`` starts it on the server's loop, over the server's broker,
users and limits. The session (:mod:`._session`) is fed bytes and writes bytes; the asyncio
protocol (:mod:`._front`) only carries them. Frames are encoded and decoded by pamqp.
"""

from __future__ import annotations

from ._front import AmqpFront

__all__ = ["AmqpFront"]
