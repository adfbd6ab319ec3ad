"""The JetStream API as the NATS backend uses it: raw JSON requests, every created config read
back, and a small key-value store on a stream.

Why raw requests rather than nats-py's managers: the backend must compare what the server
*answered* with what it asked for, key by key, and nats-py's dataclasses drop keys they do not
know and fill in defaults. nats-server 2.9 silently ignores settings it does not know (a consumer
asked for ``filter_subjects`` is created without any filter), so :meth:`JetStream.create_stream`
and :meth:`JetStream.create_consumer` raise :class:`~tidemq.errors.Unsupported` naming the
feature, the backend and the server version when a setting comes back absent or different.

Errors are translated here: no ``nats`` exception leaves this module except through
:func:`translate` (``ConnectionLost`` for the world's faults, ``Timeout`` for requests that got
no answer).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NatsClient

from ..errors import ConnectionLost, MessageTooLarge, TideMQError, Timeout, Unsupported

__all__ = ["JetStream", "JsError", "Bucket", "PubAck", "translate", "NOT_FOUND_CODES"]

# JetStream error codes (err_code) the backend acts on.
STREAM_NOT_FOUND: Final = 10059
CONSUMER_NOT_FOUND: Final = 10014
NO_MESSAGE_FOUND: Final = 10037
WRONG_LAST_SEQUENCE: Final = 10071
STREAM_NAME_IN_USE: Final = 10058
NOT_FOUND_CODES: Final = frozenset((STREAM_NOT_FOUND, CONSUMER_NOT_FOUND, NO_MESSAGE_FOUND))
_NS: Final = 1_000_000_000


class JsError(TideMQError):
    """The JetStream API answered with an error (``code``: its HTTP-like code, ``err_code``:
    JetStream's own)."""

    def __init__(self, message: str, code: int = 0, err_code: int = 0) -> None:
        super().__init__(message)
        self.status = code
        self.err_code = err_code


class PubAck:
    __slots__ = ("stream", "seq", "duplicate")

    def __init__(self, stream: str, seq: int, duplicate: bool) -> None:
        self.stream = stream
        self.seq = seq
        self.duplicate = duplicate


def translate(exc: BaseException, what: str) -> TideMQError:
    """A TideMQ error for a ``nats`` exception raised while doing ``what``."""
    if isinstance(exc, TideMQError):
        return exc
    if isinstance(exc, nats.errors.MaxPayloadError):
        return MessageTooLarge(f"{what}: the message is larger than the NATS server's "
                               "max_payload; send smaller messages or raise max_payload")
    if isinstance(exc, nats.errors.TimeoutError | TimeoutError):
        return Timeout(f"{what}: the NATS server did not answer in time (a JetStream leader "
                       "election, or an overloaded server); retry")
    if isinstance(exc, nats.errors.NoRespondersError):
        return ConnectionLost(f"{what}: no JetStream responder (JetStream disabled, or the "
                              "stream has no leader yet); retry")
    if isinstance(exc, nats.errors.Error | OSError):
        return ConnectionLost(f"{what}: {exc!r}; the NATS client reconnects, retry")
    raise exc


def _ns(seconds: float) -> int:
    return int(round(seconds * _NS))


def _same(key: str, sent: Any, got: Any) -> bool:
    if sent == got:
        return True
    if key == "opt_start_time" and isinstance(sent, str) and isinstance(got, str):
        try:
            return _parse_time(sent) == _parse_time(got)
        except ValueError:
            return False
    if isinstance(sent, list) and isinstance(got, list):
        return sorted(map(str, sent)) == sorted(map(str, got))
    return False


def _parse_time(text: str) -> dt.datetime:
    # RFC 3339 with up to nanoseconds; Python keeps microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    frac = (frac + "000000")[:6]
    return dt.datetime.fromisoformat(f"{head}.{frac}+00:00")


def rfc3339(epoch_seconds: float) -> str:
    """An RFC 3339 UTC timestamp (microseconds) as JetStream takes it."""
    t = dt.datetime.fromtimestamp(epoch_seconds, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JetStream:
    """JetStream API requests on one NATS connection. ``version`` is the server's version
    string (for messages); ``timeout`` bounds each request."""

    def __init__(self, nc: NatsClient, version: str, timeout: float) -> None:
        self.nc = nc
        self.version = version
        self.timeout = timeout

    def unsupported(self, feature: str, why: str) -> Unsupported:
        return Unsupported(f"{feature} is not supported by the nats:// backend on nats-server "
                           f"{self.version}: {why}")

    async def request(self, api: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One JetStream API request (``api`` after ``$JS.API.``); raises :class:`JsError`."""
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            msg = await self.nc.request(f"$JS.API.{api}", payload, timeout=self.timeout)
        except Exception as exc:
            raise translate(exc, f"JetStream request {api.split('.')[0].lower()}") from exc
        try:
            resp: dict[str, Any] = json.loads(msg.data)
        except ValueError:
            raise JsError(f"JetStream answered {api} with non-JSON data") from None
        err = resp.get("error")
        if err:
            raise JsError(f"JetStream {api}: {err.get('description', err)}",
                          int(err.get("code", 0)), int(err.get("err_code", 0)))
        return resp

    # -- streams ----------------------------------------------------------------------------

    def _confirm(self, what: str, sent: Mapping[str, Any], got: Mapping[str, Any],
                 features: Mapping[str, str]) -> None:
        for key, value in sent.items():
            if key not in got or not _same(key, value, got[key]):
                feature = features.get(key, f"the setting {key!r}")
                raise self.unsupported(
                    feature, f"the server did not confirm {what}'s setting {key}={value!r} "
                    f"(it answered {got.get(key, '<no such setting>')!r}); TideMQ never runs "
                    "on a setting the server did not confirm")

    async def create_stream(self, config: dict[str, Any],
                            features: Mapping[str, str]) -> dict[str, Any]:
        """Create (or find identical) a stream and check every setting in the answer."""
        name = config["name"]
        resp = await self.request(f"STREAM.CREATE.{name}", config)
        self._confirm(f"stream {name}", config, resp.get("config", {}), features)
        return resp

    async def stream_info(self, name: str, subjects_filter: str | None = None) -> dict[str, Any]:
        body = {"subjects_filter": subjects_filter} if subjects_filter else None
        return await self.request(f"STREAM.INFO.{name}", body)

    async def delete_stream(self, name: str) -> bool:
        try:
            await self.request(f"STREAM.DELETE.{name}")
        except JsError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                return False
            raise
        return True

    async def purge(self, stream: str, subject: str) -> None:
        await self.request(f"STREAM.PURGE.{stream}", {"filter": subject})

    async def get_last(self, stream: str, subject: str) -> dict[str, Any] | None:
        """The last message on ``subject`` (``data``/``hdrs`` decoded, ``seq``), or None."""
        return await self._get(stream, {"last_by_subj": subject})

    async def get_seq(self, stream: str, seq: int) -> dict[str, Any] | None:
        return await self._get(stream, {"seq": seq})

    async def _get(self, stream: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            resp = await self.request(f"STREAM.MSG.GET.{stream}", body)
        except JsError as exc:
            if exc.err_code == NO_MESSAGE_FOUND or (
                    exc.status == 404 and exc.err_code != STREAM_NOT_FOUND):
                return None
            raise
        m: dict[str, Any] = resp["message"]
        m["data"] = base64.b64decode(m.get("data") or b"")
        m["headers"] = _headers(base64.b64decode(m["hdrs"])) if m.get("hdrs") else {}
        return m

    # -- consumers --------------------------------------------------------------------------

    async def create_consumer(self, stream: str, config: dict[str, Any],
                              features: Mapping[str, str]) -> dict[str, Any]:
        """Create (or find identical) a durable consumer; check every setting in the answer."""
        name = config["durable_name"]
        resp = await self.request(f"CONSUMER.DURABLE.CREATE.{stream}.{name}",
                                  {"stream_name": stream, "config": config})
        self._confirm(f"consumer {stream}/{name}", config, resp.get("config", {}), features)
        return resp

    async def consumer_info(self, stream: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request(f"CONSUMER.INFO.{stream}.{name}")
        except JsError as exc:
            if exc.err_code in (CONSUMER_NOT_FOUND, STREAM_NOT_FOUND):
                return None
            raise

    async def delete_consumer(self, stream: str, name: str) -> bool:
        try:
            await self.request(f"CONSUMER.DELETE.{stream}.{name}")
        except JsError as exc:
            if exc.err_code in (CONSUMER_NOT_FOUND, STREAM_NOT_FOUND):
                return False
            raise
        return True

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, subject: str, payload: bytes,
                      headers: dict[str, str] | None) -> PubAck:
        """Publish and wait for the stream's acknowledgement."""
        try:
            msg = await self.nc.request(subject, payload, timeout=self.timeout, headers=headers)
        except Exception as exc:
            raise translate(exc, "publish") from exc
        try:
            resp = json.loads(msg.data)
        except ValueError:
            raise JsError(f"publish to {subject}: the answer is not a JetStream ack") from None
        err = resp.get("error")
        if err:
            raise JsError(f"publish: {err.get('description', err)}", int(err.get("code", 0)),
                          int(err.get("err_code", 0)))
        return PubAck(resp["stream"], int(resp["seq"]), bool(resp.get("duplicate", False)))


def _headers(raw: bytes) -> dict[str, str]:
    """Decode a ``NATS/1.0`` header block (as STREAM.MSG.GET returns it)."""
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


_DELETED: Final = "Tidemq-Deleted"


class Bucket:
    """A key-value store on one stream (one message per subject): values with revisions,
    create-if-absent and compare-and-set, as JetStream's KV does, but with its stream config
    read back like every other. A deleted key is a tombstone (or gone after ``ttl``).
    """

    def __init__(self, js: JetStream, stream: str, subject_prefix: str) -> None:
        self.js = js
        self.stream = stream
        self.prefix = subject_prefix

    async def ensure(self, replicas: int, ttl: float | None) -> float | None:
        """Create the bucket's stream, or adopt the existing one (another client made it,
        maybe with another ``ttl``: the first creator's holds). Returns the bucket's TTL."""
        config: dict[str, Any] = {
            "name": self.stream, "subjects": [f"{self.prefix}.>"], "retention": "limits",
            "storage": "file", "num_replicas": replicas, "max_msgs_per_subject": 1,
            "discard": "old", "max_age": _ns(ttl) if ttl else 0,
        }
        features = {"max_msgs_per_subject": "metadata store"}
        try:
            resp = await self.js.create_stream(config, features)
        except JsError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            resp = await self.js.stream_info(self.stream)
            have = resp.get("config", {})
            essential = {k: config[k] for k in ("subjects", "max_msgs_per_subject")}
            self.js._confirm(f"stream {self.stream}", essential, have, features)
            if bool(have.get("max_age")) != bool(ttl):
                raise JsError(f"stream {self.stream} exists with max_age "
                              f"{have.get('max_age')}; it is not this backend's bucket, or "
                              "another prefix must be used") from None
        age = int(resp.get("config", {}).get("max_age", 0))
        return age / _NS if age else None

    def subject(self, key: str) -> str:
        return f"{self.prefix}.{key}"

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, revision), or None if absent or deleted."""
        m = await self.js.get_last(self.stream, self.subject(key))
        if m is None or m["headers"].get(_DELETED):
            return None
        return m["data"], int(m["seq"])

    async def _last_rev(self, key: str) -> tuple[int, bool]:
        m = await self.js.get_last(self.stream, self.subject(key))
        if m is None:
            return 0, True
        return int(m["seq"]), bool(m["headers"].get(_DELETED))

    async def put(self, key: str, value: bytes, *, last: int | None = None) -> int | None:
        """Store ``value``; with ``last`` only if the key's revision is still ``last`` (0:
        absent). Returns the new revision, or None when the condition failed."""
        headers = None if last is None else {"Nats-Expected-Last-Subject-Sequence": str(last)}
        try:
            ack = await self.js.publish(self.subject(key), value, headers)
        except JsError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE or "wrong last sequence" in exc.message:
                return None
            raise
        return ack.seq

    async def create(self, key: str, value: bytes) -> int | None:
        """Store ``value`` if the key is absent (or deleted); None if it exists."""
        rev, deleted = await self._last_rev(key)
        if rev and not deleted:
            return None
        return await self.put(key, value, last=rev)

    async def delete(self, key: str, *, last: int | None = None) -> bool:
        """Tombstone the key (only at revision ``last`` if given)."""
        headers = {_DELETED: "1"}
        if last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
        try:
            await self.js.publish(self.subject(key), b"", headers)
        except JsError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE or "wrong last sequence" in exc.message:
                return False
            raise
        return True

    async def forget(self, key: str) -> None:
        """Remove the key and its tombstone."""
        await self.js.purge(self.stream, self.subject(key))

    async def keys(self, under: str) -> list[str]:
        """Live keys below ``under`` (``under.*`` and deeper), read from the stream's subject
        index and checked one by one for tombstones."""
        info = await self.js.stream_info(self.stream, f"{self.subject(under)}.>")
        subjects = (info.get("state") or {}).get("subjects") or {}
        cut = len(self.prefix) + 1
        out = []
        for subject in sorted(subjects):
            key = subject[cut:]
            if await self.get(key) is not None:
                out.append(key)
        return out
