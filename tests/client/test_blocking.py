"""The blocking client over ``tidemq://``: the loop run in the callers' threads (``_runner``),
``publish(..., wait=False)`` (``_nowait``), and what the pump does while user code runs."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tidemq
from tidemq import errors
from tidemq.client._runner import LoopRunner

from ..conformance.conftest import unique


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.server.conftest import running_server

    # Short heartbeats: a client that answered no ping for 0.6 s would be dropped.
    with running_server(tmp_path_factory.mktemp("blocking"), "--heartbeat-interval", "0.2",
                        "--heartbeat-timeout", "0.6") as url:
        yield url


@pytest.fixture(params=["asyncio", "uvloop"])
def mq(request: pytest.FixtureRequest, server: str) -> Iterator[tidemq.Client]:
    with tidemq.Client(server, loop=request.param) as client:
        yield client


def test_round_trip_on_both_loops(mq: tidemq.Client) -> None:
    t = unique("rt")
    mq.create_topic(t)
    ids = [mq.publish(t, b"%d" % i) for i in range(50)]
    sub = mq.subscribe(t, "g")
    got: list[tidemq.Message] = []
    while len(got) < 50:
        batch = sub.receive(100, timeout=2)
        assert batch
        for m in batch:
            m.ack()
        got += batch
    sub.flush()
    assert [m.id for m in got] == ids
    assert mq.describe_group(t, "g").lag == 0


def test_nowait_publish_returns_futures_and_flush_waits_for_all(mq: tidemq.Client) -> None:
    t = unique("nowait")
    mq.create_topic(t, partitions=3)
    called: list[str] = []
    futs = [mq.publish(t, b"%d" % i, wait=False) for i in range(2000)]
    futs[0].add_done_callback(lambda f: called.append(f.result()))
    assert all(isinstance(f, cf.Future) for f in futs)
    assert not futs[0].cancel()  # handed over: cannot be taken back
    mq.flush()
    assert all(f.done() for f in futs)
    ids = [f.result() for f in futs]
    assert len(set(ids)) == 2000 and called == [ids[0]]
    done, pending = cf.wait(futs, timeout=1)
    assert len(done) == 2000 and not pending
    more = [mq.publish(t, b"k", key="k", wait=False) for _ in range(10)]
    assert {f.result(timeout=5) for f in cf.as_completed(more, timeout=5)} == {
        f.result() for f in more}
    assert sum(p.end_offset for p in mq.describe_topic(t).partitions) == 2010
    sub = mq.subscribe(t, "check", prefetch=3000)
    bodies: dict[str, bytes] = {}
    while len(bodies) < 2010:
        batch = sub.receive(3000, timeout=5)
        assert batch
        bodies.update((m.id, m.body) for m in batch)
        sub.ack(batch)
    assert [bodies[i] for i in ids] == [b"%d" % i for i in range(2000)]  # plain batches intact
    assert {bodies[f.result()] for f in more} == {b"k"}


def test_nowait_futures_resolve_without_flush(mq: tidemq.Client) -> None:
    """The pump's linger timer sends a batch while the caller does nothing."""
    t = unique("linger")
    mq.create_topic(t)
    fut = mq.publish(t, b"x", wait=False)
    assert fut.result(timeout=5).startswith(t)


def test_nowait_failures_are_set_on_the_futures(mq: tidemq.Client) -> None:
    t = unique("refused")
    mq.create_topic(t, max_message_bytes=1000)
    ok = mq.publish(t, b"x", wait=False)
    with pytest.raises(errors.InvalidArgument):
        mq.publish(t, b"x", priority=11, wait=False)  # bad arguments raise at once
    big = mq.publish(t, b"x" * 5000, wait=False)
    mq.flush()
    assert ok.exception() is None or isinstance(ok.exception(), errors.MessageTooLarge)
    assert isinstance(big.exception(timeout=5), errors.MessageTooLarge)


def test_close_sends_what_is_staged(server: str) -> None:
    t = unique("close")
    with tidemq.Client(server) as mq:
        mq.create_topic(t)
        futs = [mq.publish(t, b"x", wait=False) for _ in range(500)]
    assert all(f.done() and f.exception() is None for f in futs)
    with tidemq.Client(server) as mq:
        assert mq.describe_topic(t).partitions[0].end_offset == 500
    with pytest.raises(errors.Closed):
        mq.publish(t, b"x", wait=False)


def test_threads_share_one_client(mq: tidemq.Client) -> None:
    """Callers in several threads: one leads the loop, the others post to it and wait."""
    t = unique("threads")
    mq.create_topic(t)
    sub = mq.subscribe(t, "g", prefetch=1000)
    ids: list[str] = []
    received: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def produce() -> None:
        for i in range(150):
            mid = mq.publish(t, b"%d" % i) if i % 2 else mq.publish(t, b"x", wait=False).result()
            with lock:
                ids.append(mid)

    def consume() -> None:
        while not stop.is_set():
            batch = sub.receive(50, timeout=0.1)
            for m in batch:
                m.ack()
            with lock:
                received.extend(m.id for m in batch)

    consumers = [threading.Thread(target=consume) for _ in range(2)]
    producers = [threading.Thread(target=produce) for _ in range(6)]
    for th in (*consumers, *producers):
        th.start()
    for th in producers:
        th.join(60)
    deadline = time.monotonic() + 20
    while len(received) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for th in consumers:
        th.join(10)
    sub.flush()
    assert len(ids) == 900 == len(set(ids))
    assert sorted(received) == sorted(ids)


def test_the_pump_answers_heartbeats_while_user_code_runs(server: str) -> None:
    """No client call for 2 s (3x the server's heartbeat timeout): the pump keeps the
    session alive, so the lease is still ours and the ack is accepted."""
    with tidemq.Client(server) as mq:
        t = unique("busy")
        mq.create_topic(t)
        mq.publish(t, b"x")
        sub = mq.subscribe(t, "g", ack_timeout=30)
        [m] = sub.receive(1, timeout=5)
        time.sleep(2.0)  # "a callback running for minutes"
        m.ack(wait=True)
        assert mq._ac._t.reconnects == 0  # type: ignore[attr-defined]
        assert mq.describe_group(t, "g").lag == 0


def test_acks_leave_on_the_short_timer(server: str) -> None:
    """An ack without wait, then nothing: the pump sends it within milliseconds."""
    with tidemq.Client(server) as mq, tidemq.Client(server) as other:
        t = unique("acktimer")
        mq.create_topic(t)
        mq.publish_batch(t, [b"a", b"b", b"c"])
        sub = mq.subscribe(t, "g")
        got: list[tidemq.Message] = []
        while len(got) < 3:
            got += sub.receive(3, timeout=2)
        for m in got:
            m.ack()
        deadline = time.monotonic() + 2
        while other.describe_group(t, "g").lag and time.monotonic() < deadline:
            time.sleep(0.01)
        assert other.describe_group(t, "g").lag == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("idle", [0.0, 0.15], ids=["leading", "following"])
def test_ctrl_c_during_a_call_leaves_the_client_usable(server: str, loop: str,
                                                       idle: float) -> None:
    """SIGINT while the main thread waits in ``receive``: as the loop's leader, or (after a
    pause, when the pump leads) as a follower whose receive runs on the pump's loop run —
    cancelled there, so it takes no message nobody waits for."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    with tidemq.Client(server, loop=loop) as mq:
        t = unique("sigint")
        mq.create_topic(t)
        sub = mq.subscribe(t, "g")
        for i in range(2):
            time.sleep(idle)
            timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                sub.receive(timeout=5)
            assert time.monotonic() - t0 < 4
            timer.join()
            mid = mq.publish(t, b"after%d" % i)
            got = sub.receive(timeout=5)
            assert [m.id for m in got] == [mid]
            got[0].ack(wait=True)


def test_a_client_inside_a_running_event_loop_still_works(server: str) -> None:
    """Called from a coroutine (bad practice, but it worked before): the pump runs the loop."""
    import asyncio

    with tidemq.Client(server) as mq:
        t = unique("nested")
        mq.create_topic(t)

        async def main() -> str:
            return mq.publish(t, b"x")

        assert asyncio.run(main()).startswith(t)


def test_embedded_nowait_is_already_done(tmp_path: Path) -> None:
    with tidemq.Client(str(tmp_path / "d")) as mq:
        mq.create_topic("e", max_message_bytes=1000)
        fut = mq.publish("e", b"x", wait=False)
        assert fut.done() and fut.result().startswith("e@")
        big = mq.publish("e", b"x" * 5000, wait=False)
        assert isinstance(big.exception(), errors.MessageTooLarge)
        with pytest.raises(errors.InvalidArgument):
            mq.publish("e", b"x", ttl=-1, wait=False)
        mq.flush()


def test_embedded_loop_option_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument):
        tidemq.Client("memory://", loop="uvloop")


def test_embedded_spin_option_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="spin_us"):
        tidemq.Client("memory://", spin_us=100)


def test_spin_us_with_uvloop_is_refused(server: str) -> None:
    """uvloop's selector cannot be polled from Python: asking for a spin there is an error,
    not a silent no-op (its default is no spin)."""
    with pytest.raises(errors.InvalidArgument, match="spin_us needs the asyncio loop"):
        tidemq.Client(server, loop="uvloop", spin_us=100)
    with tidemq.Client(server, loop="uvloop", spin_us=0) as mq:
        mq.publish(unique("uv"), b"x")


@pytest.mark.parametrize("bad", [-1, 10_001, 1.5, "100", True])
def test_spin_us_out_of_range_is_refused(server: str, bad: object) -> None:
    with pytest.raises(errors.InvalidArgument, match="spin_us"):
        tidemq.Client(server, spin_us=bad)  # type: ignore[arg-type]


def test_a_waiting_call_spins_for_its_answer_and_spin_0_never_does(server: str) -> None:
    """A caller polls for its answer before sleeping (the answer of a one-message publish
    under ``interval`` comes in far less than 10 ms); with ``spin_us=0`` it sleeps at once.
    Either way every publish gets its own id, in order."""
    topic = f"spin-{time.monotonic_ns()}"
    for spin, spins in ((10_000, True), (0, False)):
        with tidemq.Client(server, spin_us=spin) as mq:
            mq.create_topic(topic, partitions=1, durability="interval", exist_ok=True)
            ids = [mq.publish(topic, b"m%d" % i) for i in range(50)]
            runner = mq._runner
            assert isinstance(runner, LoopRunner)
            assert (runner.spin.hits > 0) is spins
            if not spins:
                assert runner.spin.misses == 0
        offsets = [int(i.rsplit(":", 1)[1]) for i in ids]
        assert offsets == sorted(offsets) and len(set(ids)) == 50


def test_spinning_backs_off_when_answers_are_slow(server: str) -> None:
    """Answers slower than the budget (a 20 ms fsync stand-in: a subscription's receive that
    waits out its timeout) halve the budget to none, so a slow server soon costs no spins."""
    topic = f"spin-slow-{time.monotonic_ns()}"
    with tidemq.Client(server, spin_us=200) as mq:
        mq.create_topic(topic, partitions=1)
        sub = mq.subscribe(topic, "g")
        for _ in range(6):  # 200, 100, 50, 25, 12 µs, then none
            assert sub.receive(10, timeout=0.02) == []
        runner = mq._runner
        assert isinstance(runner, LoopRunner)
        assert runner.spin.budget_us == 0
        misses = runner.spin.misses
        for _ in range(10):  # fewer than SPIN_PROBE_EVERY: no probe among them
            assert sub.receive(10, timeout=0.02) == []
        assert runner.spin.misses == misses
