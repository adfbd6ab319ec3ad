"""Every route of the HTTP API, once: the app registers these, the OpenAPI document describes
these, and ``tests/http/test_authz.py`` checks each has a permission rule (:mod:`._authz`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import _groups as G
from . import _misc as M
from . import _topics as T
from ._types import (
    AckIn,
    BrowseOut,
    DlqListOut,
    DlqOut,
    ExtendIn,
    GroupListOut,
    GroupOut,
    GroupSettingsIn,
    HealthOut,
    MessageIn,
    NackIn,
    PublishIn,
    PublishOut,
    ReadyOut,
    ReceiveIn,
    ReceiveOut,
    RedriveIn,
    RedriveOut,
    RejectIn,
    ResetIn,
    SettleOut,
    StatsOut,
    TopicListOut,
    TopicOut,
    TopicSettingsIn,
)

if TYPE_CHECKING:
    from ._app import HttpApi

__all__ = ["Route", "Param", "ROUTES", "Handler"]

Handler = Callable[["HttpApi", web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: str  # "integer" | "number" | "string"
    text: str


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: Any = None  # request body type
    answer: Any = None  # response body type (None: no body)
    status: int = 200
    query: tuple[Param, ...] = ()
    media: str = "application/json"  # of the answer


_T = "/api/v1/topics/{topic}"
_G = _T + "/groups/{group}"
_SETTLE = "A result per receipt; a stale receipt is an error for that receipt (409)."

ROUTES: tuple[Route, ...] = (
    Route("GET", "/", M.index, "The admin page.", "admin", media="text/html"),
    Route("GET", "/static/{name}", M.static, "The admin page's files.", "admin",
          media="application/octet-stream"),
    Route("GET", "/healthz", M.healthz, "Liveness: the event loop answers.", "health",
          answer=HealthOut),
    Route("GET", "/readyz", M.readyz, "Readiness: storage recovered, binary port listening, "
          "disk above its threshold; 503 with the failed checks.", "health", answer=ReadyOut),
    Route("GET", "/metrics", M.metrics, "Prometheus metrics (text format); "
          "?detail=partition adds per-partition series.", "metrics", media="text/plain",
          query=(Param("detail", "string", "'partition' for per-partition series"),)),
    Route("GET", "/api/v1/openapi.json", M.openapi, "This document.", "meta"),
    Route("GET", "/api/v1/stats", M.stats, "Overview: rates of the last ~15 minutes, "
          "connections, storage, fsync p99.", "meta", answer=StatsOut),
    Route("GET", "/api/v1/topics", T.list_topics, "List topics (those the user holds a right "
          "on).", "topics", answer=TopicListOut),
    Route("PUT", _T, T.put_topic, "Create a topic (201), or grow its partitions (200).",
          "topics", body=TopicSettingsIn, answer=TopicOut),
    Route("GET", _T, T.get_topic, "Describe a topic.", "topics", answer=TopicOut),
    Route("DELETE", _T, T.delete_topic, "Delete a topic with its groups and data.", "topics",
          status=204),
    Route("POST", _T + "/messages", T.publish, "Publish messages: a result per message, "
          "answered once they are durable at the topic's level.", "messages",
          body=PublishIn | list[MessageIn], answer=PublishOut),
    Route("GET", _T + "/partitions/{partition}/messages", T.browse_messages, "Browse a "
          "partition from an offset or a time (no side effects).", "messages",
          answer=BrowseOut, query=(
              Param("from_offset", "integer", "first offset (default: the first retained)"),
              Param("from_time", "string", "epoch seconds or ISO 8601: the first message "
                    "stored at or after it"),
              Param("limit", "integer", "1-1000 messages (default 100)"))),
    Route("GET", _T + "/groups", G.list_groups, "List the topic's groups with lag.", "groups",
          answer=GroupListOut),
    Route("PUT", _G, G.put_group, "Create a group (201) or update its settings (200).",
          "groups", body=GroupSettingsIn, answer=GroupOut),
    Route("GET", _G, G.get_group, "A group: settings, lag in messages and seconds, in flight, "
          "per partition.", "groups", answer=GroupOut),
    Route("DELETE", _G, G.delete_group, "Delete a group.", "groups", status=204),
    Route("POST", _G + "/reset", G.reset_group, "Replay: reset the group to a start position.",
          "groups", body=ResetIn, answer=GroupOut),
    Route("POST", _G + "/receive", G.receive, "Lease messages (long poll up to `wait` s); "
          "each with an opaque receipt.", "consume", body=ReceiveIn, answer=ReceiveOut),
    Route("POST", _G + "/ack", G.ack, "Ack by receipts. " + _SETTLE, "consume", body=AckIn,
          answer=SettleOut),
    Route("POST", _G + "/nack", G.nack, "Nack by receipts (redelivered after `delay` or the "
          "group's backoff). " + _SETTLE, "consume", body=NackIn, answer=SettleOut),
    Route("POST", _G + "/reject", G.reject, "Dead-letter by receipts. " + _SETTLE, "consume",
          body=RejectIn, answer=SettleOut),
    Route("POST", _G + "/extend", G.extend, "Extend leases by receipts. " + _SETTLE, "consume",
          body=ExtendIn, answer=SettleOut),
    Route("GET", _G + "/dlq", G.dlq_summary, "The group's dead letters: count, oldest age, "
          "counts by reason.", "dead letters", answer=DlqOut),
    Route("GET", _G + "/dlq/messages", G.dlq_messages, "List the group's dead letters, oldest "
          "first.", "dead letters", answer=DlqListOut, query=(
              Param("limit", "integer", "1-1000 (default 100)"),
              Param("after", "string", "the `next` of the previous page"))),
    Route("POST", _G + "/dlq/redrive", G.dlq_redrive, "Redrive the group's dead letters "
          "(those named by `ids`, with a result per id; or all, or the oldest `limit`, at most "
          "`rate` per second).", "dead letters",
          body=RedriveIn, answer=RedriveOut),
)
