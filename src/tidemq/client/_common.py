"""Argument handling shared by `Client` and `AsyncClient`: one place that turns what a user
passes into the broker's value types, and rejects bad input with a typed error before anything
is sent or stored."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

from ..broker._limits import check_extend, check_nack_delay, check_prefetch, check_reason
from ..broker._names import validate_group_name
from ..broker._types import Backoff, GroupSettings, TopicConfig
from ..errors import InvalidArgument, Unsupported
from ..storage import Record
from ._security import SECURITY_OPTIONS as _SECURITY_OPTIONS

__all__ = [
    "Endpoint",
    "parse_url",
    "make_record",
    "bare_record",
    "make_records",
    "topic_config",
    "group_settings",
    "merge_settings",
    "nack_delay",
    "extend_seconds",
    "prefetch",
    "reject_reason",
    "group_name",
    "ids",
    "receive_args",
    "consume_args",
    "lease_refresh",
]

_US = 1_000_000


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a URL points: ``kind`` is ``memory``, ``file``, ``tidemq``, or a backend of
    another engine (``nats``, ``amqp``: ``url`` is then the whole URL, for
    :func:`tidemq.backends.connect`)."""

    kind: str
    path: str | None = None
    host: str = "127.0.0.1"
    port: int = 7600
    tls: bool = False
    username: str | None = None  # from tidemq://USER:PASSWORD@host (percent-decoded)
    password: str | None = None
    url: str | None = None  # the URL as given, for the backends of other engines

    def tcp_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``TcpTransport.connect``: ``options`` plus what the URL
        says (TLS, credentials). Credentials in both places are refused, not merged."""
        out = dict(options)
        for name, value in (("username", self.username), ("password", self.password)):
            if value is None:
                continue
            if out.get(name) is not None:
                raise InvalidArgument(f"{name} is in the URL and given as an argument: give it "
                                      "once")
            out[name] = value
        out["tls"] = self.tls
        return out

    def embedded_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` for an embedded broker, which has no users and no TLS: security
        options are refused (``Unsupported``) rather than ignored."""
        given = sorted(k for k in _SECURITY_OPTIONS if options.get(k) is not None)
        if given:
            raise Unsupported(f"{', '.join(given)}: an embedded broker ({self.kind}) has no "
                              "authentication or TLS; they apply to tidemq:// and tidemqs:// "
                              "URLs")
        return {k: v for k, v in options.items() if k not in _SECURITY_OPTIONS}



def parse_url(url: str) -> Endpoint:
    """``memory://``, ``file://PATH``, a plain path, ``tidemq://[USER:PASSWORD@]host:port``
    or ``tidemqs://...`` (TLS on the same port: the server's --tls-cert); port 7600 unless
    given. ``nats://...`` (NATS JetStream) and ``amqp://`` / ``amqps://...`` (RabbitMQ) are
    the backends of other engines (``tidemq.backends``, ``docs/backends.md``): their URLs are
    kept whole and read by the backend when the client connects."""
    if not isinstance(url, str) or not url:
        raise InvalidArgument("url must be a non-empty string such as 'memory://' or './data'")
    if url == "memory://" or url == "memory:":
        return Endpoint("memory")
    if "://" not in url:
        return Endpoint("file", path=url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = (parts.netloc + parts.path) or "."
        return Endpoint("file", path=path)
    if scheme in ("tidemq", "tidemqs"):
        try:
            port = parts.port or 7600
        except ValueError:
            raise InvalidArgument(f"bad port in {redact(url)!r}") from None
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return Endpoint("tidemq", host=parts.hostname or "127.0.0.1", port=port,
                        tls=scheme == "tidemqs", username=user, password=password)
    if scheme == "nats":
        return Endpoint("nats", url=url)
    if scheme in ("amqp", "amqps"):
        return Endpoint("amqp", url=url)
    raise InvalidArgument(f"unknown URL scheme {scheme!r}: use memory://, a path, "
                          "file://PATH, tidemq://host:port, nats://host:port or "
                          "amqp://user:password@host")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


# The broker's own checks, so a client refuses what the broker would refuse before sending
# (same bounds, same messages; docs/semantics.md, "Limits").
nack_delay = check_nack_delay  # None or seconds in [0, 24 h]
extend_seconds = check_extend  # seconds in (0, 12 h]
prefetch = check_prefetch  # 1 to 10,000
reject_reason = check_reason  # a str of at most 1,024 characters
group_name = validate_group_name  # 1-200 printable characters


def _seconds(name: str, value: Any, *, positive: bool = False) -> float:
    """Seconds the clients take: ``"delay"`` is a nack delay and ``"seconds"`` a lease
    extension, each with the broker's bounds; any other name a finite duration >= 0 (> 0
    with ``positive``)."""
    if name == "delay":
        v = check_nack_delay(value)
        if v is None:
            raise InvalidArgument("delay must be a number of seconds")
        return v
    if name == "seconds":
        return check_extend(value)
    return _duration(name, value, positive=positive)


def _duration(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number of seconds, not {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0 or (positive and v == 0):
        raise InvalidArgument(f"{name} must be {'> 0' if positive else '>= 0'} seconds, got {value!r}")
    return v


def _deliver_at_us(delay: Any, deliver_at: Any, now: float) -> int:
    if delay is not None and deliver_at is not None:
        raise InvalidArgument("give either delay or deliver_at, not both")
    if delay is not None:
        d = _duration("delay", delay)
        return int((now + d) * _US) if d > 0 else 0
    if deliver_at is None:
        return 0
    if isinstance(deliver_at, datetime):
        if deliver_at.tzinfo is None:
            raise InvalidArgument("deliver_at must be an aware datetime (with tzinfo) or epoch seconds")
        ts = deliver_at.timestamp()
    else:
        ts = _duration("deliver_at", deliver_at)
    return int(ts * _US) if ts > now else 0


def _body(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    raise InvalidArgument(f"body must be bytes (or str), not {type(body).__name__}")


def _key(key: Any) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    raise InvalidArgument(f"key must be str or bytes, not {type(key).__name__}")


def _headers(headers: Any) -> dict[str, str] | None:
    if headers is None:
        return None
    if not isinstance(headers, Mapping):
        raise InvalidArgument("headers must be a mapping of str to str")
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgument(f"header {k!r}: names and values must be str")
        if k.startswith("x-tidemq-"):
            raise InvalidArgument(f"header {k!r}: the x-tidemq- prefix is reserved for the broker")
    return dict(headers) if headers else None


def make_record(
    body: Any,
    *,
    key: Any = None,
    routing_key: str | None = None,
    headers: Any = None,
    priority: int = 0,
    delay: Any = None,
    deliver_at: Any = None,
    ttl: Any = None,
    dedup_id: str | None = None,
    now: float | None = None,
) -> Record:
    """Validate one message's fields and build its storage record."""
    bare = bare_record(body, key, routing_key, headers, priority, delay, deliver_at, ttl,
                       dedup_id)
    if bare is not None:
        return bare
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidArgument(f"priority must be an int from 0 to 9, got {priority!r}")
    if routing_key is not None and not isinstance(routing_key, str):
        raise InvalidArgument("routing_key must be a str of dot-separated words")
    if dedup_id is not None and (not isinstance(dedup_id, str) or not dedup_id):
        raise InvalidArgument("dedup_id must be a non-empty str")
    at = 0
    if delay is not None or deliver_at is not None:
        at = _deliver_at_us(delay, deliver_at, time.time() if now is None else now)
    ttl_us = int(_duration("ttl", ttl, positive=True) * _US) if ttl is not None else 0
    return Record(_body(body), _key(key), routing_key, _headers(headers), priority, at, ttl_us,
                  dedup_id)


def bare_record(body: Any, key: Any, routing_key: Any, headers: Any, priority: Any, delay: Any,
                deliver_at: Any, ttl: Any, dedup_id: Any) -> Record | None:
    """The record of a bare body (bytes, every other field left out), else None: nothing to
    check, and its batch can be encoded as plain bodies (the per-message fast path)."""
    if (type(body) is bytes and key is None and routing_key is None and headers is None
            and priority == 0 and type(priority) is int and delay is None and deliver_at is None
            and ttl is None and dedup_id is None):
        return Record(body)
    return None


_FIELDS = ("key", "routing_key", "headers", "priority", "delay", "deliver_at", "ttl", "dedup_id")


class PlainRecords(list[Record]):
    """Records known to be bare bodies (no key, headers, priority ...): what
    :func:`make_records` returns when every item was a ``bytes`` body and no default was set.
    A transport may encode them as bodies only, without checking each record's fields."""

    __slots__ = ()


def make_records(items: Iterable[Any], defaults: dict[str, Any]) -> list[Record]:
    """Records for ``publish_batch``: each item is a body, a dict, or an object with the
    message attributes; fields it leaves out come from ``defaults``. A :class:`PlainRecords`
    when every item is a ``bytes`` body and no default is set."""
    now = time.time()
    plain = all(v is None or (k == "priority" and v == 0) for k, v in defaults.items())
    if plain and type(items) in (list, tuple) and items and all(type(b) is bytes for b in items):
        return PlainRecords(map(Record, items))  # the fast path: bare bodies
    out: list[Record] = []
    append = out.append
    for item in items:
        if isinstance(item, bytes) and plain:
            append(Record(item))  # the fast path: a plain body
            continue
        if isinstance(item, bytes | bytearray | memoryview | str):
            fields = dict(defaults)
            body = item
        elif isinstance(item, Mapping):
            unknown = set(item) - set(_FIELDS) - {"body"}
            if unknown:
                raise InvalidArgument(f"unknown message fields {sorted(unknown)}")
            if "body" not in item:
                raise InvalidArgument("a message dict needs a 'body'")
            fields = {**defaults, **{k: v for k, v in item.items() if k != "body"}}
            body = item["body"]
        elif hasattr(item, "body"):
            fields = {**defaults, **{k: getattr(item, k) for k in _FIELDS if hasattr(item, k)}}
            body = item.body
        else:
            raise InvalidArgument(f"batch items must be bytes, str, dicts or message objects, "
                                  f"not {type(item).__name__}")
        if fields.get("priority") is None:
            fields["priority"] = 0
        append(make_record(body, now=now, **fields))
    if not out:
        raise InvalidArgument("publish_batch needs at least one message")
    return out


def topic_config(partitions: int, options: dict[str, Any]) -> TopicConfig:
    """A validated TopicConfig from keyword options (unknown names are an error)."""
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise InvalidArgument("partitions must be an int >= 1")
    fields = {k: v for k, v in options.items() if v is not None}
    try:
        cfg = msgspec.convert({"partitions": partitions, **fields}, TopicConfig)
    except msgspec.ValidationError as e:
        raise InvalidArgument(f"bad topic option: {e}") from None
    cfg.validate()
    return cfg


def _backoff(value: Any) -> Backoff:
    if isinstance(value, Backoff):
        return value
    if isinstance(value, Mapping):
        try:
            return msgspec.convert(dict(value), Backoff)
        except msgspec.ValidationError as e:
            raise InvalidArgument(f"bad backoff: {e}") from None
    if isinstance(value, tuple | list) and len(value) == 3:
        try:
            return Backoff(float(value[0]), float(value[1]), float(value[2]))
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"bad backoff {value!r}: {e}") from None
    raise InvalidArgument("backoff must be a Backoff, a dict(initial, multiplier, max) or a 3-tuple")


def group_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The settings a call gave explicitly (``None`` means 'left out')."""
    out = {k: v for k, v in options.items() if v is not None}
    if "backoff" in out:
        out["backoff"] = _backoff(out["backoff"])
    return out


def merge_settings(base: GroupSettings | None, explicit: dict[str, Any]) -> GroupSettings:
    """``base`` with the explicitly given settings applied, validated."""
    try:
        if base is None:
            s = GroupSettings(**explicit)
        else:
            s = msgspec.structs.replace(base, **explicit)
    except TypeError as e:
        raise InvalidArgument(f"bad group setting: {e}") from None
    try:
        s = msgspec.convert(msgspec.to_builtins(s), GroupSettings)
    except (msgspec.ValidationError, TypeError, ValueError) as e:
        raise InvalidArgument(f"bad group setting: {e}") from None
    s.validate()
    return s


def ids(items: Any) -> list[str]:
    """Message ids from an id, a delivered message (anything with a str ``id``: ``Message``,
    ``AsyncMessage``), or an iterable of either."""
    if isinstance(items, str):
        return [items]
    mid = getattr(items, "id", None)
    if isinstance(mid, str):
        return [mid]
    try:
        out = [m if isinstance(m, str) else getattr(m, "id", m) for m in items]
    except TypeError:
        raise InvalidArgument("pass a message id, a Message, or a list of them") from None
    if not all(isinstance(i, str) for i in out):
        raise InvalidArgument("message ids are str")
    return out


def receive_args(max_messages: Any, timeout: Any) -> tuple[int, float]:
    """``receive``'s arguments: an int >= 1 and finite seconds >= 0."""
    if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
        raise InvalidArgument("max_messages must be an int >= 1")
    if type(timeout) is not float:
        timeout = _duration("timeout", timeout)
    elif not 0 <= timeout < math.inf:
        raise InvalidArgument(f"timeout must be >= 0 seconds, got {timeout!r}")
    return max_messages, timeout


def consume_args(callback: Any, workers: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``consume``'s callback and worker count; the subscribe options with the default
    prefetch (``2 * workers``: one message running and one waiting per worker)."""
    if not callable(callback):
        raise InvalidArgument("callback must be callable")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024:
        raise InvalidArgument("workers must be an int from 1 to 1024")
    out = dict(options)
    out.setdefault("prefetch", 2 * workers)
    return out


def lease_refresh(ack_timeout: float) -> float:
    """How often a consumer extends the leases of the messages it holds: a third of
    ``ack_timeout``, so two refreshes may fail before a lease runs out."""
    return ack_timeout / 3
