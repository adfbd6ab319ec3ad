"""kombu (py-amqp) Producer / Consumer / SimpleQueue, and a real Celery worker, with TideMQ's
AMQP port as the broker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import kombu
import pytest

from .conftest import InProcess, unique


def test_kombu_producer_consumer(amqp_server: InProcess) -> None:
    exchange = kombu.Exchange(unique("media"), type="direct")
    queue = kombu.Queue(unique("video"), exchange, routing_key="video")
    got: list[tuple[object, dict]] = []
    with kombu.Connection(amqp_server.url) as conn:
        producer = kombu.Producer(conn.channel())
        for i in range(3):
            producer.publish({"n": i}, exchange=exchange, routing_key="video",
                             declare=[queue], serializer="json",
                             headers={"trace": f"t{i}"})

        def on_message(body: object, message: kombu.Message) -> None:
            got.append((body, message.headers))
            message.ack()

        with kombu.Consumer(conn, queues=[queue], callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + 15
            while len(got) < 3 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
    assert [b for b, _ in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert got[0][1]["trace"] == "t0"


def test_kombu_queue_without_a_routing_key_on_a_direct_exchange(amqp_server: InProcess) -> None:
    # kombu binds with routing_key "" when none is given, and publishes with "" by default:
    # a direct binding with the empty key (it was 540 here, as TideMQ patterns cannot name it).
    exchange = kombu.Exchange(unique("plain"), type="direct")
    queue = kombu.Queue(unique("plain-q"), exchange)
    with kombu.Connection(amqp_server.url) as conn:
        kombu.Producer(conn.channel()).publish({"n": 1}, exchange=exchange, declare=[queue],
                                               serializer="json")
        kombu.Producer(conn.channel()).publish({"n": 2}, exchange=exchange, routing_key="x",
                                               serializer="json")  # not "": not for it
        with conn.SimpleQueue(queue) as sq:
            assert sq.get(timeout=5).payload == {"n": 1}
            with pytest.raises(sq.Empty):
                sq.get(timeout=0.5)


def test_kombu_simple_queue(amqp_server: InProcess) -> None:
    name = unique("simple")
    with kombu.Connection(amqp_server.url) as conn:
        q = conn.SimpleQueue(name)
        q.put({"hello": "world"})
        q.put("second")
        m = q.get(block=True, timeout=10)
        assert m.payload == {"hello": "world"}
        m.ack()
        m = q.get_nowait() if q.qsize() else q.get(block=True, timeout=10)
        assert m.payload == "second"
        m.ack()
        with pytest.raises(q.Empty):
            q.get(block=True, timeout=0.5)
        q.close()


_TASKS = """
from celery import Celery

app = Celery("tidemq_tasks", broker={broker!r}, backend="rpc://")
app.conf.update(task_default_queue={queue!r}, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False, worker_send_task_events=False)


@app.task
def add(x, y):
    return x + y
"""


@pytest.mark.parametrize("flags", [("--without-gossip", "--without-mingle"), ()],
                         ids=["plain", "gossip-mingle-events"])
def test_celery_worker_runs_tasks(amqp_server: InProcess, tmp_path: Path,
                                  flags: tuple[str, ...]) -> None:
    pytest.importorskip("celery")
    mod = tmp_path / "tidemq_tasks.py"
    mod.write_text(textwrap.dedent(_TASKS.format(
        broker=f"amqp://guest:guest@127.0.0.1:{amqp_server.port}//",
        queue=unique("celery"))))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONUNBUFFERED="1")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tidemq_tasks", "worker", "--pool=solo",
         "--concurrency=1", *flags, *(() if flags else ("-E",)), "--loglevel=WARNING"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sys.path.insert(0, str(tmp_path))
    try:
        import tidemq_tasks  # type: ignore[import-not-found]

        result = tidemq_tasks.add.delay(2, 3)
        assert result.get(timeout=30) == 5
        results = [tidemq_tasks.add.delay(i, i) for i in range(5)]
        assert [r.get(timeout=30) for r in results] == [0, 2, 4, 6, 8]
        tidemq_tasks.app.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tidemq_tasks", None)
        worker.terminate()
        try:
            out, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate(timeout=10)
    assert b"Traceback" not in out, out.decode(errors="replace")[-3000:]
