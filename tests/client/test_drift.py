"""The blocking and the asyncio client must not drift apart (STYLE: one client source).

``tidemq.Client`` is a thin face over ``tidemq.AsyncClient``; this test fails when a public
method exists on one face only, when the parameters of a method differ (names, kinds,
defaults), or when one face refuses an argument that the other accepts (or refuses it
differently). Differences that belong to one face are listed in ``DOCUMENTED`` with why.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

import tidemq
from tidemq import errors

PAIRS = [
    (tidemq.Client, tidemq.AsyncClient),
    (tidemq.Subscription, tidemq.AsyncSubscription),
    (tidemq.Message, tidemq.AsyncMessage),
]

# (class name, member) -> why the faces differ there. A member listed here is skipped by the
# signature comparison; one present on one face only must be listed too.
DOCUMENTED: dict[tuple[str, str], str] = {
    ("Client", "__init__"): "loop=, spin_us=: the event loop the blocking client runs over "
                            "network URLs, and how its callers wait on it",
    ("Client", "publish"): "wait=False: the blocking client's non-waiting producer (a "
                           "concurrent.futures.Future); the async publish returns an awaitable "
                           "and never blocks",
    ("Client", "consume"): "callback workers are threads (a Consumer) in the blocking face, "
                           "tasks in the async one; the callback is awaited there",
    ("AsyncClient", "connect"): "the async client connects in 'async with' or connect(); the "
                                "blocking one in its constructor",
    ("AsyncSubscription", "join"): "the async subscription joins on first use; the blocking "
                                   "one joins in subscribe()",
    ("AsyncSubscription", "__await__"): "await mq.subscribe(...) joins now",
    ("AsyncSubscription", "__aiter__"): "iteration: async for / for",
    ("Subscription", "__iter__"): "iteration: async for / for",
    ("Subscription", "__init__"): "made by Client.subscribe, not by users; the blocking one "
                                  "wraps an AsyncSubscription",
}


def _public(cls: type) -> dict[str, Any]:
    names = {n for n in dir(cls) if not n.startswith("_")}
    names |= {"__init__", "__iter__", "__aiter__", "__await__"} & set(vars(cls))
    return {n: inspect.getattr_static(cls, n) for n in names}


def _params(member: Any) -> list[tuple[str, Any, Any]] | None:
    fn = member.fget if isinstance(member, property) else member
    if not callable(fn):
        return None
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize(("blocking", "async_"), PAIRS, ids=lambda c: c.__name__)
def test_same_methods_and_parameters(blocking: type, async_: type) -> None:
    b, a = _public(blocking), _public(async_)
    problems = []
    for name in sorted(set(b) | set(a)):
        listed = ((blocking.__name__, name) in DOCUMENTED
                  or (async_.__name__, name) in DOCUMENTED)
        if name not in a or name not in b:
            if not listed:
                where = blocking.__name__ if name in b else async_.__name__
                problems.append(f"{name} exists on {where} only")
            continue
        if listed:
            continue
        if _params(b[name]) != _params(a[name]):
            problems.append(f"{name}: {blocking.__name__}{inspect.signature(b[name])} != "
                            f"{async_.__name__}{inspect.signature(a[name])}")
    assert not problems, "the clients drifted:\n" + "\n".join(problems)


def test_documented_differences_exist() -> None:
    """A stale entry in DOCUMENTED hides nothing: each names a real member."""
    classes = {c.__name__: c for pair in PAIRS for c in pair}
    for cls, name in DOCUMENTED:
        assert hasattr(classes[cls], name), (cls, name)


def test_the_documented_publish_difference_is_only_wait() -> None:
    b = inspect.signature(tidemq.Client.publish).parameters
    a = inspect.signature(tidemq.AsyncClient.publish).parameters
    assert [n for n in b if n != "wait"] == list(a)


# --- the same refusals ------------------------------------------------------------------------

T = "drift.topic"
NAN = float("nan")

# (what, call(client, sub, msg-id)) - each must raise the same error on both faces.
BAD: list[tuple[str, Callable[[Any, Any, str], Any]]] = [
    ("body int", lambda c, s, i: c.publish(T, 123)),
    ("priority 10", lambda c, s, i: c.publish(T, b"x", priority=10)),
    ("priority bool", lambda c, s, i: c.publish(T, b"x", priority=True)),
    ("header value int", lambda c, s, i: c.publish(T, b"x", headers={"a": 1})),
    ("reserved header", lambda c, s, i: c.publish(T, b"x", headers={"x-tidemq-id": "1"})),
    ("delay -1", lambda c, s, i: c.publish(T, b"x", delay=-1)),
    ("delay nan", lambda c, s, i: c.publish(T, b"x", delay=NAN)),
    ("delay and deliver_at", lambda c, s, i: c.publish(T, b"x", delay=1, deliver_at=5.0)),
    ("ttl 0", lambda c, s, i: c.publish(T, b"x", ttl=0)),
    ("key int", lambda c, s, i: c.publish(T, b"x", key=5)),
    ("dedup_id empty", lambda c, s, i: c.publish(T, b"x", dedup_id="")),
    ("too large", lambda c, s, i: c.publish(T, b"x" * 2_000_000)),
    ("empty batch", lambda c, s, i: c.publish_batch(T, [])),
    ("batch item int", lambda c, s, i: c.publish_batch(T, [5])),
    ("batch unknown field", lambda c, s, i: c.publish_batch(T, [{"body": b"x", "colour": 1}])),
    ("topic name", lambda c, s, i: c.create_topic("a..b")),
    ("partitions 0", lambda c, s, i: c.create_topic("drift.p0", partitions=0)),
    ("unknown topic option", lambda c, s, i: c.create_topic("drift.o", colour="blue")),
    ("durability", lambda c, s, i: c.create_topic("drift.d", durability="sometimes")),
    ("group name empty", lambda c, s, i: c.subscribe(T, "")),
    ("group name control", lambda c, s, i: c.subscribe(T, "a\x00b")),
    ("prefetch 0", lambda c, s, i: c.subscribe(T, "g2", prefetch=0)),
    ("mode", lambda c, s, i: c.subscribe(T, "g3", mode="fanout")),
    ("ack_timeout inf", lambda c, s, i: c.subscribe(T, "g4", ack_timeout=float("inf"))),
    ("backoff shape", lambda c, s, i: c.subscribe(T, "g5", backoff="fast")),
    ("settings mismatch", lambda c, s, i: c.subscribe(T, "g", mode="ordered")),
    ("create_group mode", lambda c, s, i: c.create_group(T, "g6", mode="fanout")),
    ("max_messages 0", lambda c, s, i: s.receive(max_messages=0)),
    ("max_messages bool", lambda c, s, i: s.receive(max_messages=True)),
    ("timeout -1", lambda c, s, i: s.receive(timeout=-1)),
    ("timeout nan", lambda c, s, i: s.receive(timeout=NAN)),
    ("ack int", lambda c, s, i: s.ack(5)),
    ("ack list of int", lambda c, s, i: s.ack([5])),
    ("ack unknown id", lambda c, s, i: s.ack("not-an-id")),
    ("nack delay -5", lambda c, s, i: s.nack(i, delay=-5)),
    ("nack delay huge", lambda c, s, i: s.nack(i, delay=1e12)),
    ("extend 0", lambda c, s, i: s.extend(i, 0)),
    ("extend nan", lambda c, s, i: s.extend(i, NAN)),
    ("reject reason int", lambda c, s, i: s.reject(i, 5)),
    ("reject reason long", lambda c, s, i: s.reject(i, "x" * 2000)),
    ("consume callback", lambda c, s, i: c.consume(T, "g7", None)),
    ("consume workers 0", lambda c, s, i: c.consume(T, "g8", lambda m: None, workers=0)),
    ("consume workers bool", lambda c, s, i: c.consume(T, "g9", lambda m: None, workers=True)),
    ("redrive unknown group", lambda c, s, i: c.redrive(T, "nobody")),
]


class _AsyncRunner:
    """The async client with each call awaited at once (on a private loop, in this thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: Any) -> None:
        self._loop = loop
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)

        def call(*args: Any, **kw: Any) -> Any:
            async def go() -> Any:
                out = method(*args, **kw)
                return await out if inspect.isawaitable(out) else out

            return self._loop.run_until_complete(go())

        return call


def _outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    try:
        fn()
    except errors.TideMQError as exc:
        return type(exc).__name__, str(exc)
    return "accepted", ""


def test_both_faces_refuse_the_same_arguments_the_same_way() -> None:
    blocking = tidemq.Client("memory://")
    loop = asyncio.new_event_loop()
    ac = tidemq.AsyncClient("memory://")
    try:
        run = _AsyncRunner(loop, ac)
        run.connect()
        faces: list[tuple[Any, Any, str]] = []
        for client, wrap in ((blocking, lambda s: s), (run, lambda s: _AsyncRunner(loop, s))):
            client.create_topic(T, max_message_bytes=1_000_000)
            sub = client.subscribe(T, "g")
            if client is run:
                loop.run_until_complete(sub.join())
            client.publish(T, b"m")
            [msg] = wrap(sub).receive(max_messages=1, timeout=2)
            faces.append((client, wrap(sub), msg.id))
        differ = []
        for what, bad in BAD:
            got = [_outcome(lambda c=c, s=s, i=i, bad=bad: bad(c, s, i)) for c, s, i in faces]
            if got[0][0] == "accepted":
                differ.append(f"{what}: accepted (every row of BAD must be refused)")
            if got[0] != got[1]:
                differ.append(f"{what}: blocking {got[0]} != async {got[1]}")
        assert not differ, "\n".join(differ)
    finally:
        blocking.close()
        loop.run_until_complete(ac.close())
        loop.close()
