"""``nats://``: the TideMQ client API on NATS JetStream (an ``AsyncTransport``).

Layout (``_nats_names``): a topic is one stream per partition, a group one durable pull consumer
per partition stream, topic and group records live in the ``<prefix>_meta`` stream (a small
key-value store, ``_nats_js.Bucket``), group members and partition owners in ``<prefix>_owners``
(entries expire after ``owner_ttl``). Creation order makes the record the commit point: a topic
record is created first (its revision is the topic's incarnation, so two clients racing to create
a topic agree on the winner), then its streams, then the record is marked complete; a reader that
finds an incomplete record completes it. A group's consumers are created before its record.

Every stream and consumer config is read back (``_nats_js``): what the server does not confirm
raises ``Unsupported``. Features JetStream lacks are emulated in the member (``_nats_member``) or
refused; ``capabilities()`` lists which (``_capabilities``, ``docs/backends.md``).

Thread safety: none; every method runs on the event loop that called :func:`connect_nats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

import msgspec
import xxhash
from nats.aio.client import Client as NatsClient

from ..broker._hashing import partition_for_key
from ..broker._ids import make_id
from ..broker._limits import check_prefetch, check_records
from ..broker._names import (
    topic_key,
    validate_group_name,
    validate_topic_name,
)
from ..broker._types import (
    MAX_PARTITIONS,
    Delivery,
    GroupInfo,
    GroupSettings,
    PartitionInfo,
    StartPosition,
    TopicConfig,
    TopicInfo,
)
from ..errors import (
    Closed,
    ConnectionLost,
    InvalidArgument,
    InvalidPartitionCount,
    MessageTooLarge,
    TideMQError,
    Timeout,
    TopicExists,
    UnknownTopic,
    Unsupported,
)
from ..storage import Record
from . import _nats_groups as G
from ._capabilities import MIN_VERSION, Capability, capabilities, parse_version
from ._nats_codec import META, MSG_ID, encode_meta
from ._nats_js import Bucket, JetStream, JsError, PubAck
from ._nats_member import Member
from ._nats_names import END, check_prefix, routing_tokens, topic_token
from ._reads import heap_reads

__all__ = ["NatsTransport", "connect_nats", "TopicMeta"]

log = logging.getLogger("tidemq.nats")

_NS: Final = 1_000_000_000
_META_TTL: Final = 5.0  # seconds a topic record is trusted before it is read again
_HEADER_ROOM: Final = 32 * 1024  # stream max_msg_size above the body limit: headers
_DEFAULT_DUP_WINDOW: Final = 120.0  # idempotent retries when the topic's dedup window is 0
_STREAM_FEATURES: Final = {
    "duplicate_window": "dedup (duplicate_window)",
    "max_age": "retention by age (max_age)",
    "max_bytes": "retention by size (max_bytes)",
    "max_msg_size": "max_message_bytes (max_msg_size)",
    "num_replicas": "replicas",
    "subjects": "partition subjects",
}
_OPTIONS: Final = frozenset({
    "prefix", "replicas", "request_timeout", "publish_timeout", "pull_wait", "owner_ttl",
    "auto_create_topics", "ignore_priority", "idempotent", "server_filters", "max_ack_pending",
    "connect_timeout", "name", "user", "password", "token", "tls", "max_reconnect_attempts",
    "reconnect_time_wait",
})


def _ns(seconds: float) -> int:
    return int(round(seconds * _NS))


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class TopicMeta(msgspec.Struct, frozen=True):
    """A topic as its record says."""

    name: str
    incarnation: int
    partitions: int
    config: TopicConfig
    token: str
    base: str  # subject prefix: <prefix>.<token>.<incarnation>

    def stream(self, prefix: str, p: int) -> str:
        return f"{prefix.upper()}_{self.token}_{self.incarnation}_{p}"


async def connect_nats(url: str = "nats://127.0.0.1:4222", **options: Any) -> NatsTransport:
    """Connect to NATS with JetStream and return the ``nats://`` transport.

    ``url``: ``nats://[user:password@]host:port`` (several servers: comma-separated
    ``host:port`` pairs after ``nats://``). Options (all keyword):

    - ``prefix`` (``"tidemq"``): names of everything this backend creates (streams
      ``TIDEMQ_...``, subjects ``tidemq....``); deployments sharing a server use different ones.
    - ``replicas`` (1): JetStream replicas of every stream (3 on a cluster for availability).
    - ``request_timeout`` (5 s): each JetStream API request; ``publish_timeout`` (30 s): how long
      a publish is retried (same ``Nats-Msg-Id``) through leader elections and reconnects.
    - ``pull_wait`` (1 s): how long one pull request waits on the server.
    - ``owner_ttl`` (6 s): how long a member's registration and partition claims live without
      a refresh (ordered groups: how soon a crashed owner's partitions move).
    - ``auto_create_topics`` (True), ``ignore_priority`` (False: priority > 0 is Unsupported),
      ``idempotent`` (True: every message gets a Nats-Msg-Id for safe retries),
      ``server_filters`` (False: several routing patterns filter client-side; True asks the
      server for ``filter_subjects``, which needs nats-server 2.10), ``max_ack_pending``
      (100000: per group and partition, shared groups).
    - NATS connection: ``connect_timeout`` (5 s), ``name``, ``user``, ``password``, ``token``,
      ``tls`` (an ``ssl.SSLContext``), ``max_reconnect_attempts`` (-1: forever),
      ``reconnect_time_wait`` (0.25 s).

    Raises ``ConnectionLost`` if no server answers, ``Unsupported`` if the server is older than
    2.9 or has no JetStream, ``InvalidArgument`` for an unknown option.
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise InvalidArgument(f"unknown nats:// option(s) {sorted(unknown)}; known: "
                              f"{sorted(_OPTIONS)}")
    servers, creds = _servers(url)
    nc_opts: dict[str, Any] = {
        "servers": servers, "connect_timeout": options.pop("connect_timeout", 5.0),
        "max_reconnect_attempts": options.pop("max_reconnect_attempts", -1),
        "reconnect_time_wait": options.pop("reconnect_time_wait", 0.25),
        "allow_reconnect": True,
    }
    for key in ("name", "user", "password", "token", "tls"):
        if options.get(key) is not None:
            nc_opts[key] = options.pop(key)
        else:
            options.pop(key, None)
    for key, value in creds.items():
        nc_opts.setdefault(key, value)

    async def quiet(_exc: Exception) -> None:  # nats-py logs through these; we report ours
        return None

    # nats-py retries a first connection forever when reconnects are unlimited: a wrong URL
    # would hang. The first connection gets connect_timeout per server (one more round).
    first = float(nc_opts["connect_timeout"]) * (len(servers) + 1)
    nc = NatsClient()

    async def reconnected() -> None:
        _heap_reads(nc)

    try:
        await asyncio.wait_for(nc.connect(**nc_opts, error_cb=quiet, disconnected_cb=_noop,
                                          reconnected_cb=reconnected), first)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        why = f"no answer within {first:g} s" if isinstance(exc, TimeoutError) else repr(exc)
        raise ConnectionLost(f"cannot connect to NATS at {_redact(url)}: {why}; is "
                             "nats-server running (with -js)?") from exc
    _heap_reads(nc)
    transport = NatsTransport(nc, **options)
    try:
        await transport._start()
    except BaseException:
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    return transport


async def _noop() -> None:
    return None


def _heap_reads(nc: NatsClient) -> None:
    """nats-py's socket (its plain one: under TLS, reads go through the SSL protocol's own
    buffer) reads at most READ_SIZE at a time (``_reads``: why)."""
    writer = getattr(getattr(nc, "_transport", None), "_bare_io_writer", None)
    heap_reads(getattr(writer, "transport", None))


def _servers(url: str) -> tuple[list[str], dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("nats", "tls"):
        raise InvalidArgument(f"a nats:// URL is expected, not {_redact(url)!r}")
    creds: dict[str, str] = {}
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        if password:
            creds["user"], creds["password"] = unquote(user), unquote(password)
        else:
            creds["token"] = unquote(user)
    hosts = [h for h in netloc.split(",") if h] or ["127.0.0.1:4222"]
    return [f"{parts.scheme}://{h}" for h in hosts], creds


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


class NatsTransport:
    """An ``AsyncTransport`` on NATS JetStream. See the module docstring and
    :func:`connect_nats` for the options."""

    def __init__(self, nc: NatsClient, *, prefix: str = "tidemq", replicas: int = 1,
                 request_timeout: float = 5.0, publish_timeout: float = 30.0,
                 pull_wait: float = 1.0, owner_ttl: float = 6.0,
                 auto_create_topics: bool = True, ignore_priority: bool = False,
                 idempotent: bool = True, server_filters: bool = False,
                 max_ack_pending: int = 100_000) -> None:
        try:
            check_prefix(prefix)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        for name, value in (("request_timeout", request_timeout),
                            ("publish_timeout", publish_timeout), ("pull_wait", pull_wait),
                            ("owner_ttl", owner_ttl)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidArgument(f"{name} must be a number of seconds > 0, got {value!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise InvalidArgument(f"replicas must be an int from 1 to 5, got {replicas!r}")
        self.nc = nc
        # The loop everything runs on. The blocking Client calls the plain methods
        # (ack_start ...) from its caller's thread with the loop held but not running, so
        # tasks are made on this loop explicitly, never on "the current" one.
        self.loop = asyncio.get_running_loop()
        v = nc.connected_server_version
        self.server_version = f"{v.major}.{v.minor}.{v.patch}"
        self.js = JetStream(nc, self.server_version, float(request_timeout))
        self.prefix = prefix
        self.replicas = replicas
        self.publish_timeout = float(publish_timeout)
        self.pull_wait = float(pull_wait)
        self.owner_ttl = float(owner_ttl)
        self.auto_create = auto_create_topics
        self.ignore_priority = ignore_priority
        self.idempotent = idempotent
        self.server_filters = server_filters
        self.max_ack_pending = max_ack_pending
        self.meta = Bucket(self.js, f"{prefix.upper()}_meta", f"{prefix}.meta")
        self.owners = Bucket(self.js, f"{prefix.upper()}_owners", f"{prefix}.own")
        self.client_id = f"{random.getrandbits(64):016x}"
        self._msg_seq = itertools.count(1)
        self._member_seq = itertools.count(1)
        self._rr = 0
        self._topics: dict[str, tuple[TopicMeta, float]] = {}
        self._members: dict[str, Member] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def _start(self) -> None:
        if parse_version(self.server_version) < MIN_VERSION:
            raise Unsupported(f"the nats:// backend needs nats-server 2.9 or newer; this "
                              f"server is {self.server_version}")
        try:
            await self.js.request("INFO")
        except JsError as exc:
            raise Unsupported(f"JetStream is not enabled on nats-server {self.server_version} "
                              f"({exc.message}); start it with -js") from None
        await self.meta.ensure(self.replicas, None)
        ttl = await self.owners.ensure(self.replicas, self.owner_ttl)
        if ttl is not None and ttl != self.owner_ttl:
            log.info("owners bucket %s has owner_ttl %.3g s (set by its creator); using it",
                     self.owners.stream, ttl)
            self.owner_ttl = ttl

    def capabilities(self) -> dict[str, Capability]:
        """This backend's capability table for the connected server."""
        return capabilities(self.server_version)

    def unsupported(self, feature: str, why: str) -> Unsupported:
        return self.js.unsupported(feature, why)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro, loop=self.loop)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this nats:// client is closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for member in list(self._members.values()):
            with contextlib.suppress(TideMQError, Exception):
                await member.close()
        self._members.clear()
        if self.background:
            await asyncio.wait(list(self.background), timeout=self.pull_wait + 2.0)
        for task in list(self.background):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        with contextlib.suppress(Exception):
            await self.nc.close()

    # -- topic records ----------------------------------------------------------------------

    def _topic_config_check(self, config: TopicConfig) -> None:
        if config.durability == "always":
            raise self.unsupported(
                "durability 'always'", "nats-server has no per-stream fsync before the ack; "
                "use durability 'interval' (JetStream's own) with replicas=3")
        if config.backlog_limit is not None:
            raise self.unsupported(
                "backlog_limit", "JetStream limits count stored messages, not messages a group "
                "has yet to receive")
        if (config.retention is not None or config.retention_bytes is not None) \
                and not config.log_retention:
            raise self.unsupported(
                "retention with group veto (log_retention=False)", "a JetStream limits stream "
                "drops old messages whether or not groups have read them; pass "
                "log_retention=True for Kafka-style retention")

    def _stream_config(self, tm: TopicMeta, p: int) -> dict[str, Any]:
        c = tm.config
        max_age = _ns(c.retention) if c.retention else 0
        window = c.dedup_window if c.dedup_window > 0 else _DEFAULT_DUP_WINDOW
        dup = _ns(window)
        if max_age:
            dup = min(dup, max_age)
        return {
            "name": tm.stream(self.prefix, p),
            "subjects": [f"{tm.base}.{p}.>"],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.replicas,
            "discard": "old",
            "duplicate_window": dup,
            "max_age": max_age,
            "max_bytes": c.retention_bytes if c.retention_bytes is not None else -1,
            "max_msg_size": min(c.max_message_bytes + _HEADER_ROOM, self.nc.max_payload),
        }

    def _meta_of(self, raw: bytes, rev: int) -> tuple[TopicMeta, bool]:
        """(topic, complete) from a record; an incomplete one's incarnation is its revision."""
        d = json.loads(raw)
        inc = d.get("incarnation")
        config = msgspec.convert(d["config"], TopicConfig)
        token = topic_token(d["name"])
        incarnation = int(inc) if inc is not None else rev
        tm = TopicMeta(d["name"], incarnation, int(d["partitions"]), config, token,
                       f"{self.prefix}.{token}.{incarnation}")
        return tm, inc is not None

    def _record(self, tm: TopicMeta) -> bytes:
        return _json({"name": tm.name, "incarnation": tm.incarnation,
                      "partitions": tm.partitions, "config": msgspec.to_builtins(tm.config)})

    async def _read_topic(self, name: str) -> TopicMeta | None:
        validate_topic_name(name, derived=True)
        key = f"t.{topic_token(name)}"
        got = await self.meta.get(key)
        if got is None:
            self._topics.pop(topic_key(name), None)
            return None
        tm, complete = self._meta_of(*got)
        if not complete:
            tm = await self._complete(tm, got[1])
        self._topics[topic_key(name)] = (tm, time.monotonic())
        return tm

    async def _complete(self, tm: TopicMeta, rev: int) -> TopicMeta:
        """Create a topic's streams (idempotent) and mark its record complete."""
        for p in range(tm.partitions):
            await self.js.create_stream(self._stream_config(tm, p), _STREAM_FEATURES)
        await self.meta.put(f"t.{tm.token}", self._record(tm), last=rev)
        return tm

    async def topic(self, name: str, *, create: bool = False, fresh: bool = False) -> TopicMeta:
        """The topic's record (cached for a few seconds unless ``fresh``); with ``create``, an
        unknown topic is created with the default config (auto-creation)."""
        self._check_open()
        hit = self._topics.get(topic_key(name)) if isinstance(name, str) else None
        if hit is not None and not fresh and time.monotonic() - hit[1] < _META_TTL:
            return hit[0]
        try:
            tm = await self._read_topic(name)
        except (Timeout, ConnectionLost):
            if hit is None:
                raise
            # The metadata stream is electing a leader (or the client reconnecting): the
            # record we have is a few seconds old, which is what the cache allows anyway.
            return hit[0]
        if tm is None:
            if not create:
                raise UnknownTopic(f"topic {name!r} does not exist; create it first")
            validate_topic_name(name)
            with contextlib.suppress(TopicExists):
                await self._create(name, TopicConfig())
            tm = await self._read_topic(name)
            if tm is None:
                raise UnknownTopic(f"topic {name!r} was deleted while being created; retry")
        return tm

    async def _create(self, name: str, config: TopicConfig) -> TopicMeta:
        token = topic_token(name)
        draft = {"name": name, "incarnation": None, "partitions": config.partitions,
                 "config": msgspec.to_builtins(config)}
        rev = await self.meta.create(f"t.{token}", _json(draft))
        if rev is None:
            raise TopicExists(f"topic {name!r} already exists")
        tm = TopicMeta(name, rev, config.partitions, config, token,
                       f"{self.prefix}.{token}.{rev}")
        try:
            await self._complete(tm, rev)
        except Unsupported:
            # A setting the server did not confirm: the topic must not exist half made.
            await self._drop(tm)
            raise
        self._topics[topic_key(name)] = (tm, time.monotonic())
        return tm

    async def _drop(self, tm: TopicMeta) -> None:
        await self.meta.forget(f"t.{tm.token}")
        self._topics.pop(topic_key(tm.name), None)
        for p in range(tm.partitions):
            await self.js.delete_stream(tm.stream(self.prefix, p))

    # -- topics -----------------------------------------------------------------------------

    async def create_topic(self, name: str, config: TopicConfig, exist_ok: bool) -> TopicInfo:
        self._check_open()
        validate_topic_name(name)
        config.validate()
        self._topic_config_check(config)
        try:
            await self._create(name, config)
        except TopicExists:
            if not exist_ok:
                tm = await self._read_topic(name)
                raise TopicExists(f"topic {tm.name if tm else name!r} already exists") from None
        return await self.describe_topic(name)

    async def delete_topic(self, name: str) -> None:
        tm = await self.topic(name, fresh=True)
        for g in await self.meta.keys(f"g.{tm.token}"):
            await self.meta.forget(g)
        for k in await self.meta.keys(f"r.{tm.token}"):
            await self.meta.forget(k)
        await self._drop(tm)

    async def list_topics(self) -> list[TopicInfo]:
        out = []
        for key in await self.meta.keys("t"):
            got = await self.meta.get(key)
            if got is None:
                continue
            tm, _ = self._meta_of(*got)
            with contextlib.suppress(UnknownTopic):
                out.append(await self.describe_topic(tm.name))
        return sorted(out, key=lambda t: topic_key(t.name))

    async def describe_topic(self, name: str) -> TopicInfo:
        tm = await self.topic(name, fresh=True)
        parts = []
        for p in range(tm.partitions):
            try:
                info = await self.js.stream_info(tm.stream(self.prefix, p))
            except JsError as exc:
                raise UnknownTopic(f"topic {tm.name!r}: partition {p} is missing "
                                   f"({exc.message}); delete and create the topic") from None
            st = info.get("state", {})
            last = int(st.get("last_seq", 0))
            first = int(st.get("first_seq", 0))
            start = first - 1 if int(st.get("messages", 0)) else last
            parts.append(PartitionInfo(p, max(start, 0), last))
        groups = []
        for key in await self.meta.keys(f"g.{tm.token}"):
            got = await self.meta.get(key)
            if got is not None:
                groups.append(json.loads(got[0])["group"])
        return TopicInfo(tm.name, tm.incarnation, tm.config, parts, sorted(groups))

    async def set_partitions(self, name: str, partitions: int) -> TopicInfo:
        tm = await self.topic(name, fresh=True)
        if isinstance(partitions, bool) or not isinstance(partitions, int) \
                or partitions < tm.partitions:
            raise InvalidPartitionCount(f"topic {tm.name!r} has {tm.partitions} partitions; the "
                                        f"count may only grow (asked {partitions})")
        if partitions > MAX_PARTITIONS:
            raise InvalidPartitionCount(f"at most {MAX_PARTITIONS} partitions "
                                        f"(asked {partitions})")
        if partitions != tm.partitions:
            got = await self.meta.get(f"t.{tm.token}")
            if got is None:
                raise UnknownTopic(f"topic {name!r} was deleted")
            grown = msgspec.structs.replace(
                tm, partitions=partitions,
                config=msgspec.structs.replace(tm.config, partitions=partitions))
            for p in range(tm.partitions, partitions):
                await self.js.create_stream(self._stream_config(grown, p), _STREAM_FEATURES)
            for gkey in await self.meta.keys(f"g.{tm.token}"):
                graw = await self.meta.get(gkey)
                if graw is None:
                    continue
                g = json.loads(graw[0])
                s = msgspec.convert(g["settings"], GroupSettings)
                for p in range(tm.partitions, partitions):
                    await G.ensure_consumer(self, grown, g["group"], s, p, new_partition=True)
            if await self.meta.put(f"t.{tm.token}", self._record(grown), last=got[1]) is None:
                raise TideMQError(f"topic {name!r} changed while adding partitions; retry")
            self._topics[topic_key(name)] = (grown, time.monotonic())
        return await self.describe_topic(name)

    # -- publishing -------------------------------------------------------------------------

    def _msg_id(self, rec: Record, tm: TopicMeta) -> str | None:
        if rec.dedup_id is not None and tm.config.dedup_window > 0:
            d = rec.dedup_id
            if d.isascii() and d.isprintable() and len(d) <= 200:
                return "d:" + d
            return "h:" + xxhash.xxh3_128_hexdigest(d.encode("utf-8", "surrogatepass"))
        if self.idempotent:
            return f"{self.client_id}:{next(self._msg_seq)}"
        return None

    async def publish(self, topic: str, records: Sequence[Record]) -> list[str]:
        tm = await self.topic(topic, create=self.auto_create)
        return await self._publish(tm, records)

    def publish_one(self, topic: str, record: Record) -> Awaitable[str] | None:
        """The per-message path: for a topic whose record is cached, one coroutine that sends
        and returns the id (no batch machinery); else None, and the client takes
        :meth:`publish`."""
        hit = self._topics.get(topic_key(topic)) if isinstance(topic, str) else None
        if hit is None or self._closed or time.monotonic() - hit[1] >= _META_TTL:
            return None
        return self._publish_one(hit[0], record)

    async def _publish_one(self, tm: TopicMeta, r: Record) -> str:
        p = self._rr % tm.partitions
        self._rr += 1
        if (r.key is None and r.routing_key is None and r.headers is None and not r.priority
                and not r.deliver_at_us and not r.ttl_us and r.dedup_id is None
                and type(r.body) is bytes):  # a bare body: only its size to check
            if len(r.body) > tm.config.max_message_bytes:
                check_records((r,), tm.config.max_message_bytes)  # raises MessageTooLarge
            mid = self._msg_id(r, tm)
            subject = f"{tm.base}.{p}.{END}"
            headers: dict[str, str] | None = {MSG_ID: mid} if mid is not None else None
        else:
            check_records((r,), tm.config.max_message_bytes)
            if r.priority and not self.ignore_priority:
                raise self._no_priority()
            p = self._partition(r, tm.partitions, p)
            subject, headers = self._route(tm, r, p, self._msg_id(r, tm))
        ack = await self._send(tm, subject, r.body, headers)
        return make_id(tm.name, tm.incarnation, p, ack.seq - 1)

    def _no_priority(self) -> Unsupported:
        return self.unsupported("priority", "JetStream delivers in stream order; publish "
                                "with priority 0, or connect with ignore_priority=True to "
                                "store priorities without ordering by them")

    def _route(self, tm: TopicMeta, r: Record, p: int,
               mid: str | None) -> tuple[str, dict[str, str] | None]:
        """The subject and headers of ``r`` in partition ``p`` (``mid``: its Nats-Msg-Id)."""
        headers: dict[str, str] = {}
        meta = encode_meta(r)
        if meta is not None:
            headers[META] = meta
        if mid is not None:
            headers[MSG_ID] = mid
        return f"{tm.base}.{p}.{routing_tokens(r.routing_key)}", headers or None

    @staticmethod
    def _partition(r: Record, n: int, sticky: int) -> int:
        """A user's record's partition: by key, else by dedup id, else ``sticky``."""
        if r.key is not None:
            return partition_for_key(r.key, n)
        if r.dedup_id is not None:
            return partition_for_key(r.dedup_id, n)
        return sticky

    async def flush_all(self) -> None:
        """Publishes are confirmed when they return; wait for the members' acks."""
        for member in list(self._members.values()):
            await member.flush()

    async def _publish(self, tm: TopicMeta, records: Sequence[Record],
                       msg_ids: Sequence[str | None] | None = None,
                       partitions: Sequence[int] | None = None) -> list[str]:
        if partitions is None:  # a user's publish (internal ones carry broker headers)
            check_records(records, tm.config.max_message_bytes)
        if not self.ignore_priority and any(r.priority for r in records):
            raise self._no_priority()
        n = tm.partitions
        sticky = self._rr % n
        self._rr += 1
        sends = []
        parts = []
        for i, r in enumerate(records):
            p = partitions[i] if partitions is not None else self._partition(r, n, sticky)
            mid = msg_ids[i] if msg_ids is not None else self._msg_id(r, tm)
            subject, headers = self._route(tm, r, p, mid)
            parts.append(p)
            sends.append(self._send(tm, subject, r.body, headers))
        results = await asyncio.gather(*sends, return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res
        acks: list[PubAck] = results  # type: ignore[assignment]
        return [make_id(tm.name, tm.incarnation, p, ack.seq - 1)
                for p, ack in zip(parts, acks, strict=True)]

    async def _send(self, tm: TopicMeta, subject: str, body: bytes,
                    headers: dict[str, str] | None) -> PubAck:
        """Publish one message; retried with the same Nats-Msg-Id (so stored once) while the
        server does not answer, up to ``publish_timeout``."""
        deadline = time.monotonic() + self.publish_timeout
        delay = 0.05
        retriable = headers is not None and MSG_ID in headers
        checked = False
        while True:
            try:
                return await self.js.publish(subject, body, headers)
            except JsError as exc:
                if "maximum" in exc.message and "size" in exc.message:
                    raise MessageTooLarge(f"topic {tm.name!r}: {exc.message}") from None
                if exc.status != 503 or not retriable:
                    raise
                err: TideMQError = exc
            except (Timeout, ConnectionLost) as exc:
                if not retriable:
                    raise
                err = exc
            if not checked and isinstance(err, ConnectionLost):
                checked = True  # no responders: a deleted topic, or no leader yet
                try:
                    now = await self._read_topic(tm.name)
                except TideMQError:
                    now = tm
                if now is None or now.incarnation != tm.incarnation:
                    raise UnknownTopic(f"topic {tm.name!r} was deleted") from None
            if time.monotonic() + delay > deadline:
                raise err
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def publish_dead_letter(self, dlq: str, origin: TopicMeta, rec: Record,
                                  msg_id: str) -> str:
        """Append a dead letter to ``dlq`` (created like the broker does: the origin's config
        with one partition); idempotent on ``msg_id`` within the duplicate window."""
        try:
            tm = await self.topic(dlq)
        except UnknownTopic:
            config = msgspec.structs.replace(origin.config, partitions=1, backlog_limit=None)
            with contextlib.suppress(TopicExists):
                await self._create(dlq, config)
            tm = await self.topic(dlq, fresh=True)
        return (await self._publish(tm, [rec], [msg_id], [0]))[0]

    # -- groups (``_nats_groups``) ---------------------------------------------------------

    async def create_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        return await G.create_group(self, topic, group, settings)

    async def update_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        return await G.update_group(self, topic, group, settings)

    async def delete_group(self, topic: str, group: str) -> None:
        await G.delete_group(self, topic, group)

    async def list_groups(self, topic: str) -> list[GroupInfo]:
        return await G.list_groups(self, topic)

    async def describe_group(self, topic: str, group: str) -> GroupInfo:
        return await G.describe_group(self, topic, group)

    async def reset_group(self, topic: str, group: str, start: StartPosition) -> None:
        await G.reset_group(self, topic, group, start)

    async def redrive(self, topic: str, group: str, limit: int | None) -> int:
        return await G.redrive(self, topic, group, limit)

    # -- consuming --------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, settings: GroupSettings | None,
                        prefetch: int) -> str:
        check_prefetch(prefetch)
        validate_group_name(group)
        if settings is not None:
            settings.validate()
        tm = await self.topic(topic, create=self.auto_create)
        s = await G.ensure_group(self, tm, group, settings)
        for p in range(tm.partitions):
            await G.ensure_consumer(self, tm, group, s, p)
        mid = f"{group}#{self.client_id}-{next(self._member_seq)}"
        member = Member(self, tm, group, s, prefetch, mid)
        self._members[mid] = member
        try:
            await member.start()
        except BaseException:
            self._members.pop(mid, None)
            await member.close()
            raise
        return mid

    def _member(self, member: str) -> Member:
        m = self._members.get(member)
        if m is None:
            self._check_open()
            raise Closed(f"member {member!r} is not subscribed (unsubscribed or closed)")
        return m

    async def receive(self, member: str, max_messages: int,
                      timeout: float) -> list[Delivery]:
        return await self._member(member).receive(max_messages, timeout)

    def receive_nowait(self, member: str, max_messages: int) -> list[Delivery] | None:
        return None  # every delivery passes through checks that may await: use receive

    async def ack(self, member: str, ids: Sequence[str]) -> None:
        """Send the acks; :meth:`flush` waits for their confirmation."""
        self._member(member).ack(ids)

    def ack_start(self, member: str, ids: Sequence[str]) -> Awaitable[None] | None:
        """Send the acks (UnknownMessage at once for an id not held) and return None: like
        an ack over ``tidemq://``, it leaves with the next write and :meth:`flush` waits for
        the server's confirmation (double ack) and raises a failure. Returning the
        confirmation instead made every ``await sub.ack(...)`` a round trip to the server
        before the consumer could receive again: e2e latency."""
        self._member(member).ack(ids)
        return None

    async def flush(self, member: str) -> None:
        await self._member(member).flush()

    async def nack(self, member: str, ids: Sequence[str], delay: float | None) -> None:
        await self._member(member).nack(ids, delay)

    async def extend(self, member: str, ids: Sequence[str], seconds: float) -> None:
        await self._member(member).extend(ids, seconds)

    async def reject(self, member: str, ids: Sequence[str], reason: str) -> None:
        await self._member(member).reject(ids, reason)

    async def unsubscribe(self, member: str) -> None:
        m = self._members.pop(member, None)
        if m is not None:
            await m.close()



if TYPE_CHECKING:
    from ..client._transport import AsyncTransport

    def _conforms(t: NatsTransport) -> AsyncTransport:  # mypy checks the protocol here
        return t
