"""Hostile peers against a live ``tidemq serve``: every resource bounded, every error typed.

Each test runs one attack from raw sockets — pathological-but-valid frames, slow-loris bytes
before the Hello, pipelining without reading, huge ack ranges, large messages, connection
floods (also past the process's file-descriptor limit), half-open connections, garbage — and
checks, meanwhile, that an innocent client is still served (a ``Ping`` and a describe answer
within ``SERVED_WITHIN`` s), that the server's resident memory grew by at most
``RSS_GROWTH_MAX`` (read from ``/proc/<pid>/status``), and that messages it confirmed under
durability ``always`` come back exactly once.

Attackers connect from 127.0.0.2 / 127.0.0.3 (all of 127/8 is loopback on Linux), so the
per-address connection limit never hits the innocent client on 127.0.0.1. Every socket and
process is closed by the ``stack`` fixture; each test takes a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tidemq
from tidemq import errors
from tidemq import protocol as P
from tidemq.broker import Delivery
from tidemq.server import Server, ServerConfig
from tidemq.server._push import DELIVER_OVERHEAD, deliver_frames
from tidemq.storage import encode_bodies

from .conftest import ServerProcess

SERVED_WITHIN = 1.0  # seconds: the innocent client's ping and describe must answer in this
RSS_GROWTH_MAX = 64 * 1024 * 1024  # bytes the server may grow by during one attack
HEADER = struct.Struct("<IBBHI")
ATTACKER = "127.0.0.2"
ATTACKER2 = "127.0.0.3"

# Short timeouts so the limits act within a test's few seconds.
FAST_ARGS = ("--handshake-timeout", "1", "--write-timeout", "1.5",
             "--heartbeat-interval", "0.5", "--heartbeat-timeout", "1.5")


# --- helpers -----------------------------------------------------------------------------------


def rss(proc: ServerProcess) -> int:
    """The server's resident set size in bytes."""
    assert proc.proc is not None
    with open(f"/proc/{proc.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Raw:
    """A blocking raw-protocol session (or just a socket, ``hello=False``)."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", hello: bool = True,
                 timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.dec = P.Decoder(1 << 24)
        self.rid = 100
        if hello:
            self.send(P.Hello(request_id=1, versions=[1], client_id="raw",
                              max_frame_size=1 << 24))
            assert isinstance(self.expect(P.HelloOk), P.HelloOk)

    def send(self, *frames: Any) -> None:
        self.sock.sendall(b"".join(P.encode(f, max_frame_size=1 << 24) for f in frames))

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    def frame(self, timeout: float = 5.0) -> Any:
        """The next frame; ``None`` at EOF or a reset."""
        deadline = time.monotonic() + timeout
        while (f := self.dec.next_frame()) is P.NEED_DATA:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not data:
                return None
            self.dec.feed(data)
        return f

    def expect(self, kind: type, timeout: float = 5.0) -> Any:
        """The next frame of ``kind`` (answering pings, skipping deliveries), or an Error."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.frame(max(0.0, deadline - time.monotonic()))
            if f is None or isinstance(f, kind | P.Error):
                return f
            if isinstance(f, P.Ping):
                self.send(P.Pong(request_id=f.request_id))

    def ping(self) -> float:
        """Round trip of one Ping, seconds."""
        rid = self.next_rid()
        t0 = time.perf_counter()
        self.send(P.Ping(request_id=rid))
        f = self.expect(P.Pong, SERVED_WITHIN)
        assert isinstance(f, P.Pong) and f.request_id == rid, f
        return time.perf_counter() - t0

    def closed_by_server(self, timeout: float) -> bool:
        """Read (and drop) until the server closes; False if it did not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(1 << 20):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


def raw(stack: contextlib.ExitStack, port: int, **kw: Any) -> Raw:
    r = Raw(port, **kw)
    stack.callback(r.close)
    return r


def assert_served(mq: tidemq.Client, port: int, topic: str) -> None:
    """The innocent client: a fresh connection pings, and describe answers, in time."""
    probe = Raw(port)
    try:
        assert probe.ping() < SERVED_WITHIN
    finally:
        probe.close()
    t0 = time.monotonic()
    mq.describe_topic(topic)
    assert time.monotonic() - t0 < SERVED_WITHIN


def publish_confirmed(mq: tidemq.Client, topic: str, n: int, tag: str) -> set[bytes]:
    bodies = [f"{tag}-{i}".encode() for i in range(n)]
    for i in range(0, n, 50):
        mq.publish_batch(topic, bodies[i:i + 50])  # returns once fsynced (durability always)
    return set(bodies)


def consume_exactly(mq: tidemq.Client, topic: str, group: str, want: set[bytes],
                    timeout: float = 10.0) -> None:
    """Every message of ``want`` arrives, none twice, nothing else."""
    sub = mq.subscribe(topic, group, start="earliest")
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(want) and time.monotonic() < deadline:
        batch = sub.receive(max_messages=500, timeout=0.2)
        sub.ack(batch)
        got += [m.body for m in batch]
    sub.close()
    assert len(got) == len(set(got)), "duplicates"
    assert set(got) == want


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("hostile")) / "data",
                         args=FAST_ARGS).start()
    try:
        yield proc
    finally:
        proc.close()


@pytest.fixture
def mq(live: ServerProcess) -> Iterator[tidemq.Client]:
    with tidemq.Client(live.url, request_timeout=10) as client:
        yield client


_n = iter(range(1_000_000))


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_n)}"


# --- large messages ----------------------------------------------------------------------------


def test_512_kib_messages_are_delivered_with_the_default_prefetch(
        live: ServerProcess, mq: tidemq.Client) -> None:
    topic = unique("big")
    mq.create_topic(topic)
    bodies = [bytes([i]) * (512 * 1024) for i in range(40)]
    for body in bodies:
        mq.publish(topic, body)
    before = rss(live)
    sub = mq.subscribe(topic, "g")  # prefetch 100: all 40 (20 MiB) are ready at once
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < 40 and time.monotonic() < deadline:
        batch = sub.receive(max_messages=10, timeout=0.5)
        sub.ack(batch)
        got += [m.body for m in batch]
    assert sorted(got) == sorted(bodies)
    assert rss(live) - before < RSS_GROWTH_MAX
    with pytest.raises(errors.UnknownTopic):
        mq.describe_topic(topic + ".dlq")  # nothing was dead-lettered


def _delivery(i: int, body: bytes, *, key: bytes | None = None, rk: str | None = None,
              headers: dict[str, str] | None = None) -> Delivery:
    return Delivery(f"t@1:0:{i}", "t", 0, i, 0, body, key, rk, headers or {}, 0, 1)


@pytest.mark.parametrize("limit", [P.MIN_MAX_FRAME_SIZE, 1 << 20, 3 << 20])
def test_deliver_frames_fit_the_session_limit(limit: int) -> None:
    rnd = random.Random(limit)
    ds = []
    for i in range(300):
        size = rnd.choice([0, 10, 1000, 60_000, 400_000, 1 << 20])
        extra = rnd.random() < 0.3
        ds.append(_delivery(
            i, b"b" * size, key=b"k" * 4096 if extra else None,
            rk="é" * 255 if extra else None,
            headers={f"h{j}-" + "ü" * 60: "ö" * 60 for j in range(64)} if extra else None))
    frames, too_large = deliver_frames(7, ds, limit)
    for f in frames:
        assert len(P.encode(f, max_frame_size=limit)) <= limit  # raises FrameTooLarge if not
    sent = [i for f in frames for i in f.ids]
    assert sent == [d.id for d in ds if d not in too_large]  # all, in order, once
    # Anything up to max_message_bytes fits once the limit leaves DELIVER_OVERHEAD for the rest.
    assert all(len(d.body) + DELIVER_OVERHEAD > limit for d in too_large)


# --- before the Hello --------------------------------------------------------------------------


def test_slow_loris_before_hello(live: ServerProcess, mq: tidemq.Client,
                                 stack: contextlib.ExitStack) -> None:
    topic = unique("loris")
    mq.create_topic(topic, durability="always")
    before = rss(live)
    # (a) A declared 16 MiB frame before the Hello: refused from its 4-byte length.
    a = raw(stack, live.port, source=ATTACKER, hello=False)
    a.sock.sendall(struct.pack("<I", 16 << 20))
    err = a.frame()
    assert isinstance(err, P.Error) and err.fatal and err.code == errors.FrameTooLarge.code
    # (b) A Hello of 60 KiB dribbled: refused once 16 KiB wait undecoded.
    b = raw(stack, live.port, source=ATTACKER, hello=False)
    b.sock.sendall(HEADER.pack(60 * 1024, int(P.FrameType.HELLO), 0, 0, 1))
    with contextlib.suppress(OSError):  # the server may cut us off before the 20th KiB
        for _ in range(20):
            b.sock.sendall(b"\x90" * 1024)
    err = b.frame()
    assert isinstance(err, P.Error) and err.fatal and err.code == errors.FrameTooLarge.code
    # (c) 200 connections dribbling a valid Hello a byte at a time, and (d) silent ones: all
    # are closed with a Timeout once handshake_timeout (1 s here) has passed.
    hello = P.encode(P.Hello(request_id=1, versions=[1], client_id="loris",
                               max_frame_size=1 << 20))
    lorises = [raw(stack, live.port, source=ATTACKER, hello=False) for _ in range(200)]
    t0 = time.monotonic()
    for step in range(6):
        for r in lorises[:100]:
            with contextlib.suppress(OSError):
                r.sock.send(hello[step:step + 1])
        assert_served(mq, live.port, topic)
        time.sleep(0.1)
    want = publish_confirmed(mq, topic, 200, "loris")
    for r in lorises:
        f = r.frame(timeout=3)
        assert isinstance(f, P.Error) and f.fatal and f.code == errors.Timeout.code, f
        assert r.closed_by_server(1.0)
    assert time.monotonic() - t0 < 3.5
    assert rss(live) - before < RSS_GROWTH_MAX
    consume_exactly(mq, topic, "g", want)


# --- connection limits -------------------------------------------------------------------------


def test_connection_limits_refuse_with_a_typed_error(tmp_path: Path,
                                                     stack: contextlib.ExitStack) -> None:
    proc = ServerProcess(tmp_path / "data", args=(
        "--max-connections", "60", "--max-connections-per-ip", "30", *FAST_ARGS)).start()
    stack.callback(proc.close)
    mq = stack.enter_context(tidemq.Client(proc.url))  # the innocent: 1 connection
    mq.create_topic("t", durability="always")
    before = rss(proc)
    flood = [raw(stack, proc.port, source=ATTACKER) for _ in range(30)]
    refused = raw(stack, proc.port, source=ATTACKER, hello=False)
    err = refused.frame()
    assert isinstance(err, P.Error) and err.fatal and err.code == errors.ConnectionLost.code
    assert "max_connections_per_ip" in err.message
    assert_served(mq, proc.port, "t")  # another address is not affected
    flood += [raw(stack, proc.port, source=ATTACKER2) for _ in range(29)]  # 1 + 30 + 29 = 60
    refused = raw(stack, proc.port, source="127.0.0.4", hello=False)
    err = refused.frame()
    assert isinstance(err, P.Error) and err.code == errors.ConnectionLost.code
    assert "max_connections" in err.message
    for r in flood:  # the admitted ones are all served
        assert r.ping() < SERVED_WITHIN
    want = publish_confirmed(mq, "t", 100, "limits")
    for r in flood:
        r.close()
    time.sleep(0.2)
    ok = raw(stack, proc.port, source=ATTACKER)  # room again
    assert ok.ping() < SERVED_WITHIN
    assert rss(proc) - before < RSS_GROWTH_MAX
    consume_exactly(mq, "t", "g", want)


class _LimitedServer(ServerProcess):
    """A server whose open-file limit is ``nofile`` (set in the child before exec)."""

    def __init__(self, data_dir: Path, nofile: int, args: tuple[str, ...]) -> None:
        super().__init__(data_dir, args=args)
        self.nofile = nofile

    def start(self, timeout: float = 20.0) -> ServerProcess:
        nofile = self.nofile

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        cmd = [sys.executable, "-m", "tidemq.server", "--data", str(self.data_dir),
               "--port", "0", "--log-level", "WARNING", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                     preexec_fn=limit)
        port = self._wait_listening(time.monotonic() + timeout)
        assert port is not None, "server exited"
        self.port = port
        return self

    def stderr(self) -> str:
        """What the server logged (after it exited)."""
        assert self.proc is not None and self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def close(self) -> None:
        super().close()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_out_of_file_descriptors_keeps_serving(tmp_path: Path, loop: str,
                                               stack: contextlib.ExitStack) -> None:
    pytest.importorskip(loop)
    proc = _LimitedServer(tmp_path / "data", 64, ("--loop", loop, *FAST_ARGS)).start()
    stack.callback(proc.close)
    mq = stack.enter_context(tidemq.Client(proc.url, request_timeout=10))
    mq.create_topic("t", durability="always")
    keeper = raw(stack, proc.port)  # an existing connection: must stay served
    flood: list[socket.socket] = []
    for _ in range(150):  # far past the 64 descriptors: accept() fails with EMFILE
        try:
            s = socket.socket()
            stack.callback(s.close)
            s.bind((ATTACKER, 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", proc.port))
            flood.append(s)
        except OSError:
            break
    time.sleep(0.5)
    assert proc.proc is not None and proc.proc.poll() is None  # alive
    for _ in range(5):
        assert keeper.ping() < SERVED_WITHIN
        mq.describe_topic("t")  # the innocent's old connection too
        time.sleep(0.1)
    want = publish_confirmed(mq, "t", 100, "emfile")
    for s in flood:
        s.close()
    # After the flood new connections are accepted again (retried every 0.1 s).
    deadline = time.monotonic() + 5
    while True:
        try:
            fresh = Raw(proc.port, timeout=1)
            break
        except (OSError, TimeoutError, AssertionError):
            assert time.monotonic() < deadline, "no new connection after the flood"
            time.sleep(0.2)
    stack.callback(fresh.close)
    assert fresh.ping() < SERVED_WITHIN
    consume_exactly(mq, "t", "g", want)
    fresh.close()
    keeper.close()
    mq.close()
    proc.terminate()
    log = proc.stderr()
    # Logged once, not once per failed accept (at most once a minute).
    assert log.count("cannot accept connections") == 1, log[-2000:]


# --- output amplification ----------------------------------------------------------------------


def _big_filter() -> dict[str, Any]:
    """A group filter of about 60 KiB (under the broker's 64 KiB limit)."""
    return {"headers": {f"h{i}": {"any_of": [f"v{i}-{j}-" + "x" * 40 for j in range(20)]}
                        for i in range(60)}}


def test_pipelined_requests_never_read(live: ServerProcess, mq: tidemq.Client,
                                       stack: contextlib.ExitStack) -> None:
    topic = unique("amp")
    mq.create_topic(topic, durability="always")
    mq.create_group(topic, "wide", filter=_big_filter())
    before = rss(live)
    attackers = [raw(stack, live.port, source=ATTACKER) for _ in range(3)]
    one = P.encode(P.GroupDescribe(request_id=7, topic=topic, group="wide"))
    for a in attackers:  # 3 x 2,000 x ~60 KiB = ~360 MB of answers if nothing stopped them
        a.sock.setblocking(False)
        data = memoryview(one * 2000)
        with contextlib.suppress(BlockingIOError):
            while data:
                data = data[a.sock.send(data):]
        a.sock.setblocking(True)
    peak = 0
    for _ in range(5):
        assert_served(mq, live.port, topic)
        peak = max(peak, rss(live) - before)
        time.sleep(0.1)
    want = publish_confirmed(mq, topic, 200, "amp")
    assert peak < RSS_GROWTH_MAX, peak
    # Never draining below the high-water mark: dropped after write_timeout (1.5 s here).
    for a in attackers:
        assert _eventually_closed(a, 4.0)
    consume_exactly(mq, topic, "g", want)


def _eventually_closed(r: Raw, timeout: float) -> bool:
    """True once the server has closed ``r`` (data it had sent before is drained)."""
    deadline = time.monotonic() + timeout
    time.sleep(1.6)  # past write_timeout: from now on the server may close it
    while time.monotonic() < deadline:
        if r.closed_by_server(0.2):
            return True
    return False


def test_slow_consumer_is_dropped_and_its_leases_released(
        live: ServerProcess, mq: tidemq.Client, stack: contextlib.ExitStack) -> None:
    topic = unique("slow")
    mq.create_topic(topic)
    mq.publish_batch(topic, [b"s" * 200_000 for _ in range(40)])
    slow = raw(stack, live.port, source=ATTACKER)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    slow.send(P.Subscribe(request_id=2, topic=topic, group="g", prefetch=100))
    assert isinstance(slow.expect(P.SubscribeOk), P.SubscribeOk)
    time.sleep(0.3)  # the server pushes until this reader's buffers are full, then stalls
    sub = mq.subscribe(topic, "g", prefetch=100)
    got = 0
    deadline = time.monotonic() + 8
    while got < 40 and time.monotonic() < deadline:
        batch = sub.receive(max_messages=40, timeout=0.3)
        sub.ack(batch)
        got += len(batch)
    assert got == 40  # the stuck member was dropped after write_timeout; its leases came back
    assert slow.closed_by_server(2.0)


# --- huge requests -----------------------------------------------------------------------------


def test_huge_ack_ranges_are_bounded(live: ServerProcess, mq: tidemq.Client,
                                     stack: contextlib.ExitStack) -> None:
    topic, safe = unique("acks"), unique("acks-safe")
    mq.create_topic(topic)
    mq.create_topic(safe, durability="always")
    for _ in range(20):
        mq.publish_batch(topic, [b"a"] * 1000)
    a = raw(stack, live.port, source=ATTACKER)
    a.send(P.Subscribe(request_id=2, topic=topic, group="g", prefetch=1000))
    ok = a.expect(P.SubscribeOk)
    assert isinstance(ok, P.SubscribeOk)
    sid = ok.subscription_id
    # A 32-byte frame naming 2**40 messages: refused at once, typed, the connection goes on.
    a.send(P.Ack(request_id=3, subscription_id=sid, ranges=[(0, 0, 2**40)]))
    err = a.expect(P.AckOk)
    assert isinstance(err, P.Error) and err.code == errors.InvalidArgument.code
    assert not err.fatal
    # 60 pipelined acks of 10,000 messages (the most for prefetch 1,000) each: applied 2,000
    # ids per loop iteration, the innocent client answered in between.
    before = rss(live)
    a.send(*[P.Ack(request_id=10 + i, subscription_id=sid,
                   ranges=[(0, (i % 2) * 10_000, (i % 2) * 10_000 + 9_999)]) for i in range(60)])
    for _ in range(5):
        assert_served(mq, live.port, topic)
    want = publish_confirmed(mq, safe, 100, "acks")
    answers = [a.expect(P.AckOk, timeout=30) for _ in range(60)]
    assert all(isinstance(x, P.AckOk) and x.settled == 10_000 for x in answers), answers[:3]
    assert [x.request_id for x in answers] == [10 + i for i in range(60)]  # in order
    assert rss(live) - before < RSS_GROWTH_MAX
    consume_exactly(mq, safe, "g", want)


def test_non_finite_numbers_are_invalid_arguments(live: ServerProcess, mq: tidemq.Client,
                                                  stack: contextlib.ExitStack) -> None:
    topic = unique("nan")
    mq.create_topic(topic)
    mq.publish_batch(topic, [b"n"] * 3)
    a = raw(stack, live.port, source=ATTACKER)
    a.send(P.Subscribe(request_id=2, topic=topic, group="g", prefetch=10))
    ok = a.expect(P.SubscribeOk)
    sid = ok.subscription_id
    deliver = a.expect(P.Deliver)
    ids = list(deliver.ids)
    inf, nan = float("inf"), float("nan")
    requests = [
        P.Extend(request_id=3, subscription_id=sid, ids=ids, seconds=inf),
        P.Nack(request_id=4, subscription_id=sid, ids=ids, delay=inf),
        P.Subscribe(request_id=5, topic=topic, group="g2", settings={"ack_timeout": nan}),
        P.Subscribe(request_id=6, topic=topic, group="g3", settings={"backoff": {"initial": inf}}),
        P.CreateTopic(request_id=7, name=unique("nan"), config={"sync_interval": nan}),
        P.GroupReset(request_id=8, topic=topic, group="g", start=inf),
        P.Call(request_id=9, method="create_group",
               args={"topic": topic, "group": "g4", "settings": {"ack_timeout": -inf}}),
        P.Call(request_id=10, method="create_group", args={"topic": 5, "group": "g5"}),
    ]
    for r in requests:
        a.send(r)
        err = a.expect(P.Result | P.AckOk | P.SubscribeOk)
        assert isinstance(err, P.Error) and not err.fatal, (r, err)
        assert err.code != errors.InternalError.code and err.code in errors.CATALOGUE, (r, err)
        assert isinstance(err.to_exception(), errors.InvalidArgument), (r, err)
    assert a.ping() < SERVED_WITHIN


@pytest.mark.parametrize("frame_type", [P.FrameType.ACK, P.FrameType.NACK, P.FrameType.DELIVER,
                                        P.FrameType.CREATE_TOPIC])
def test_large_control_frames_are_refused_from_their_header(
        live: ServerProcess, stack: contextlib.ExitStack, frame_type: int) -> None:
    # Decoding cost grows with the items of a frame: any frame but Publish is capped at
    # max_request_bytes (1 MiB), judged before its payload is buffered.
    a = raw(stack, live.port, source=ATTACKER)
    a.sock.sendall(HEADER.pack(2 << 20, int(frame_type), 0, 0, 5))
    err = a.frame()
    assert isinstance(err, P.Error) and err.fatal and err.code == errors.FrameTooLarge.code
    assert a.closed_by_server(1.0)
    b = raw(stack, live.port, source=ATTACKER)  # a Publish of 2 MiB is fine
    b.send(P.Publish(request_id=6, topic=unique("bulk"), partition=0,
                     batch=encode_bodies([b"x" * (2 << 20)])))
    f = b.expect(P.PublishOk)
    assert isinstance(f, P.Error) and f.code == errors.MessageTooLarge.code  # (1 MiB topic limit)


def test_too_many_subscriptions_on_one_connection(tmp_path: Path,
                                                  stack: contextlib.ExitStack) -> None:
    proc = ServerProcess(tmp_path / "data", args=(
        "--max-subscriptions-per-connection", "5", *FAST_ARGS)).start()
    stack.callback(proc.close)
    a = raw(stack, proc.port)
    for i in range(5):
        a.send(P.Subscribe(request_id=10 + i, topic="t", group=f"g{i}"))
        assert isinstance(a.expect(P.SubscribeOk), P.SubscribeOk)
    a.send(P.Subscribe(request_id=20, topic="t", group="g9"))
    err = a.expect(P.SubscribeOk)
    assert isinstance(err, P.Error) and err.code == errors.InvalidArgument.code
    assert "max_subscriptions_per_connection" in err.message
    a.send(P.CloseSubscription(request_id=21, subscription_id=1))
    assert isinstance(a.expect(P.Result), P.Result)
    a.send(P.Subscribe(request_id=22, topic="t", group="g9"))
    assert isinstance(a.expect(P.SubscribeOk), P.SubscribeOk)


# --- dead peers and garbage --------------------------------------------------------------------


def test_half_open_connections_are_dropped_and_leases_released(
        live: ServerProcess, mq: tidemq.Client, stack: contextlib.ExitStack) -> None:
    topic = unique("half")
    mq.create_topic(topic)
    mq.publish_batch(topic, [b"%d" % i for i in range(30)])
    ghosts = []
    for _ in range(3):  # each takes 10 leases, then falls silent without a FIN
        g = raw(stack, live.port, source=ATTACKER)
        g.send(P.Subscribe(request_id=2, topic=topic, group="g", prefetch=10))
        assert isinstance(g.expect(P.SubscribeOk), P.SubscribeOk)
        ghosts.append(g)
    t0 = time.monotonic()
    sub = mq.subscribe(topic, "g")
    got: set[bytes] = set()
    while len(got) < 30 and time.monotonic() - t0 < 6:
        batch = sub.receive(max_messages=30, timeout=0.3)
        sub.ack(batch)
        got |= {m.body for m in batch}
        assert_served(mq, live.port, topic)
    assert len(got) == 30
    assert time.monotonic() - t0 < 4  # heartbeat_timeout 1.5 s + a check interval + slack
    for g in ghosts:
        assert g.closed_by_server(1.0)


def test_garbage_and_truncated_frames(live: ServerProcess, mq: tidemq.Client,
                                      stack: contextlib.ExitStack) -> None:
    topic = unique("junk")
    mq.create_topic(topic, durability="always")
    rnd = random.Random(1234)
    types = [int(t) for t in P.FrameType]
    before = rss(live)
    victims = []
    for i in range(100):
        r = raw(stack, live.port, source=ATTACKER, hello=i % 2 == 0)
        kind = i % 4
        if kind == 0:
            payload = rnd.randbytes(rnd.randint(1, 3000))
        elif kind == 1:  # a valid header over a random (often truncated) payload
            body = rnd.randbytes(rnd.randint(0, 500))
            payload = HEADER.pack(12 + len(body) + rnd.randint(0, 8), rnd.choice(types), 0, 0,
                                  rnd.getrandbits(32)) + body
        elif kind == 2:  # lying headers
            payload = HEADER.pack(rnd.getrandbits(32), rnd.getrandbits(8), rnd.getrandbits(8),
                                  0, 1)
        else:  # a control frame over the request limit (1 MiB) after the handshake
            payload = HEADER.pack(8 << 20, int(P.FrameType.NACK), 0, 0, 1)
        with contextlib.suppress(OSError):
            r.sock.sendall(payload)
        victims.append(r)
    want = publish_confirmed(mq, topic, 100, "junk")
    assert_served(mq, live.port, topic)
    for r in victims:  # each was answered (typed) and/or closed, or waits for more bytes
        with contextlib.suppress(OSError):
            r.sock.shutdown(socket.SHUT_WR)
        while (f := r.frame(timeout=3)) is not None:
            if isinstance(f, P.Error):
                assert f.code in errors.CATALOGUE and f.code != errors.InternalError.code, f
    assert rss(live) - before < RSS_GROWTH_MAX
    consume_exactly(mq, topic, "g", want)
    assert live.proc is not None and live.proc.poll() is None


# --- in-process: bounded steps -----------------------------------------------------------------


def test_redrive_moves_in_batches_and_answers_the_total(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = ServerConfig(data=str(tmp_path), port=0, redrive_batch=7)
        async with Server(cfg) as srv, tidemq.AsyncClient(f"tidemq://127.0.0.1:{srv.port}") as c:
            await c.create_topic("r")
            await c.publish_batch("r", [b"%d" % i for i in range(25)])
            sub = c.subscribe("r", "g", max_deliveries=1, prefetch=100)
            n = 0
            while n < 25:
                batch = await sub.receive(100, 2.0)
                await sub.reject([m.id for m in batch])
                n += len(batch)
            calls: list[int | None] = []
            real = srv.broker.redrive

            def counting(*args: Any, **kw: Any) -> int:
                calls.append(kw.get("limit"))
                moved: int = real(*args, **kw)
                return moved

            srv.broker.redrive = counting  # type: ignore[method-assign]
            assert await c.redrive("r", "g", limit=10) == 10
            assert await c.redrive("r", "g") == 15
            assert len(calls) >= 4  # 7 + 3, then 7 + 7 + 1
            got: list[bytes] = []
            while len(got) < 25:
                batch = await sub.receive(100, 2.0)
                await sub.ack([m.id for m in batch])
                got += [m.body for m in batch]
            assert sorted(got) == sorted(b"%d" % i for i in range(25))

    asyncio.run(main())


def test_inflight_limit_pauses_input_but_answers_everything(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = ServerConfig(data=str(tmp_path), port=0, max_inflight=3)
        async with Server(cfg) as srv, tidemq.AsyncClient(f"tidemq://127.0.0.1:{srv.port}") as c:
            await c.create_topic("d", partitions=4, durability="always")
            ids = await asyncio.gather(*[c.publish("d", b"%d" % i, key=b"%d" % i)
                                         for i in range(300)])
            assert len(set(ids)) == 300

    asyncio.run(main())

