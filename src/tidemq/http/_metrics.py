"""``GET /metrics``: Prometheus metrics, read from the broker at scrape time.

Official ``prometheus_client``, never its global registry: each scrape builds its own
``CollectorRegistry`` holding one custom collector over a :class:`Snapshot`. The snapshot is
taken on the event loop (the broker is single-threaded: a few dict reads per group), and the
text is rendered on a worker thread, so the loop pays for reading state, not for formatting
thousands of lines.

Names are in base units, counters end in ``_total``, and labels are only topic, group,
partition (``?detail=partition`` only), reason, outcome, protocol and error code: never message
ids, receipts, client ids or routing keys. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from ..broker import Broker
from ..broker._stats import group_gauges, storage_bytes
from ..errors import CATALOGUE, TideMQError

__all__ = ["Snapshot", "take_snapshot", "render", "CONTENT_TYPE", "disk_free"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (topic, group or None) -> may the scraper see it; None: everything (a server without users)
Visible = Callable[[str, str | None], bool] | None


@dataclass(slots=True)
class Snapshot:
    """Everything one scrape exposes, copied on the loop."""

    version: str
    published: dict[str, int] = field(default_factory=dict)
    delivered: dict[tuple[str, str], int] = field(default_factory=dict)
    redelivered: dict[tuple[str, str, str], int] = field(default_factory=dict)
    settled: dict[tuple[str, str, str], int] = field(default_factory=dict)
    dead_lettered: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # (topic, group) -> (lag messages, lag seconds, in flight)
    groups: dict[tuple[str, str], tuple[int, float, int]] = field(default_factory=dict)
    delayed: dict[str, int] = field(default_factory=dict)
    # detail=partition: (topic, partition) -> (start, end); (topic, group, partition) ->
    # (committed, lag messages, lag seconds, in flight)
    partitions: dict[tuple[str, int], tuple[int, int]] | None = None
    group_partitions: dict[tuple[str, str, int], tuple[int, int, float, int]] | None = None
    storage_bytes: int = 0
    disk_free_bytes: int | None = None
    fsync: tuple[list[int], float, int] = ([], 0.0, 0)
    fsync_buckets: tuple[float, ...] = ()
    connections: dict[str, int] = field(default_factory=dict)
    errors: dict[int, int] = field(default_factory=dict)


def _age(ts_us: int | None, now_us: int) -> float:
    return 0.0 if ts_us is None else max(0.0, (now_us - ts_us) / 1e6)


def disk_free(path: str | None) -> int | None:
    """Free bytes on the data folder's file system (None: in memory, or it cannot be read)."""
    if path is None:
        return None
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def take_snapshot(broker: Broker, *, visible: Visible, detail: bool, now_us: int,
                  version: str, data: str | None, fsync: tuple[list[int], float, int],
                  fsync_buckets: tuple[float, ...], connections: dict[str, int],
                  errors: dict[int, int]) -> Snapshot:
    """Read the broker's state (on its thread) for one scrape; only topics and groups
    ``visible`` to the scraper."""
    snap = Snapshot(version=version, fsync=fsync, fsync_buckets=fsync_buckets,
                    connections=connections, errors=dict(errors))
    stats = broker.stats
    topic_ok: dict[str, bool] = {}

    def seen(topic: str) -> bool:
        if visible is None:
            return True
        ok = topic_ok.get(topic)
        if ok is None:
            ok = topic_ok[topic] = visible(topic, None)
        return ok

    snap.published = {t: n for t, n in stats.published.items() if seen(t)}
    group_ok: dict[tuple[str, str], bool] = {}

    def seen_group(key: tuple[str, ...]) -> bool:
        if visible is None:
            return True
        tg = (key[0], key[1])
        ok = group_ok.get(tg)
        if ok is None:
            ok = group_ok[tg] = visible(key[0], key[1])
        return ok

    snap.delivered = {k: n for k, n in stats.delivered.items() if seen_group(k)}
    snap.redelivered = {k: n for k, n in stats.redelivered.items() if seen_group(k)}
    snap.settled = {k: n for k, n in stats.settled.items() if seen_group(k)}
    snap.dead_lettered = {k: n for k, n in stats.dead_lettered.items() if seen_group(k)}
    if detail:
        snap.partitions, snap.group_partitions = {}, {}
    for info in broker.list_topics():
        topic = info.name
        if not seen(topic):
            continue
        snap.delayed[topic] = info.delayed
        if snap.partitions is not None:
            for p in info.partitions:
                snap.partitions[(topic, p.partition)] = (p.start_offset, p.end_offset)
        if not info.groups:
            continue
        for name, lag, held, oldest, parts in group_gauges(broker, topic):
            if not seen_group((topic, name)):
                continue
            snap.groups[(topic, name)] = (lag, _age(oldest, now_us), held)
            if snap.group_partitions is not None:
                for index, (committed, plag, pheld, ts) in enumerate(parts):
                    snap.group_partitions[(topic, name, index)] = (committed, plag,
                                                                   _age(ts, now_us), pheld)
    snap.storage_bytes = storage_bytes(broker)
    snap.disk_free_bytes = disk_free(data)
    return snap


class _Collector:
    """The custom collector of one scrape (prometheus_client calls ``collect``)."""

    def __init__(self, snap: Snapshot) -> None:
        self._s = snap

    def collect(self) -> Iterator[Metric]:
        s = self._s
        build = InfoMetricFamily("tidemq_build", "TideMQ version of this server.")
        build.add_metric([], {"version": s.version})
        yield build

        pub = CounterMetricFamily("tidemq_messages_published", "Messages published (stored), "
                                  "by topic, since the server started.", labels=["topic"])
        for topic, n in sorted(s.published.items()):
            pub.add_metric([topic], n)
        yield pub
        yield _counter("tidemq_messages_delivered", "Deliveries (leases handed out, first "
                       "deliveries and redeliveries) by topic and group.", ["topic", "group"],
                       s.delivered)
        yield _counter("tidemq_messages_redelivered", "Deliveries that ended without "
                       "settlement and were put back to be delivered again, by why: nack, "
                       "lease_expired, consumer_left.", ["topic", "group", "reason"],
                       s.redelivered)
        yield _counter("tidemq_deliveries_settled", "Deliveries settled by the consumer, by "
                       "outcome: ack, nack, reject.", ["topic", "group", "outcome"], s.settled)
        yield _counter("tidemq_messages_dead_lettered", "Messages written to a dead-letter "
                       "topic, by reason: max_deliveries, expired, rejected.",
                       ["topic", "group", "reason"], s.dead_lettered)

        lag = GaugeMetricFamily("tidemq_group_lag_messages", "Messages of the topic the "
                                "group has not finished (not acked, dead-lettered or "
                                "filtered out).", labels=["topic", "group"])
        lag_s = GaugeMetricFamily("tidemq_group_lag_seconds", "Age of the oldest message the "
                                  "group has not finished, from its stored timestamp (0: none).",
                                  labels=["topic", "group"])
        inflight = GaugeMetricFamily("tidemq_group_inflight_messages", "Messages leased to "
                                     "the group's consumers, not yet settled.",
                                     labels=["topic", "group"])
        for (topic, group), (n, age, held) in sorted(s.groups.items()):
            lag.add_metric([topic, group], n)
            lag_s.add_metric([topic, group], age)
            inflight.add_metric([topic, group], held)
        yield lag
        yield lag_s
        yield inflight
        delayed = GaugeMetricFamily("tidemq_messages_delayed", "Messages waiting in the "
                                    "topic's delay store (delay or deliver_at not reached).",
                                    labels=["topic"])
        for topic, n in sorted(s.delayed.items()):
            delayed.add_metric([topic], n)
        yield delayed

        if s.partitions is not None:
            end = GaugeMetricFamily("tidemq_partition_end_offset", "Next offset of the "
                                    "partition (messages ever stored in it).",
                                    labels=["topic", "partition"])
            start = GaugeMetricFamily("tidemq_partition_start_offset", "First retained offset "
                                      "of the partition.", labels=["topic", "partition"])
            for (topic, p), (first, nxt) in sorted(s.partitions.items()):
                end.add_metric([topic, str(p)], nxt)
                start.add_metric([topic, str(p)], first)
            yield end
            yield start
        if s.group_partitions is not None:
            names = ("committed_offset", "lag_messages", "lag_seconds", "inflight_messages")
            helps = ("Every offset below is done for the group.",
                     "Messages of the partition the group has not finished.",
                     "Age of the partition's oldest message the group has not finished.",
                     "Messages of the partition leased to the group's consumers.")
            fams = [GaugeMetricFamily(f"tidemq_group_partition_{n}", h,
                                      labels=["topic", "group", "partition"])
                    for n, h in zip(names, helps, strict=True)]
            for (topic, group, p), values in sorted(s.group_partitions.items()):
                for fam, v in zip(fams, values, strict=True):
                    fam.add_metric([topic, group, str(p)], v)
            yield from fams

        yield GaugeMetricFamily("tidemq_storage_bytes", "Bytes of every log the broker holds "
                                "(partitions, delay stores, journals).", value=s.storage_bytes)
        if s.disk_free_bytes is not None:
            yield GaugeMetricFamily("tidemq_disk_free_bytes", "Free bytes on the data "
                                    "folder's file system.", value=s.disk_free_bytes)
        counts, total, n = s.fsync
        if counts:
            cum = 0
            buckets: list[tuple[str, float]] = []
            for bound, c in zip((*s.fsync_buckets, float("inf")), counts, strict=True):
                cum += c
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cum))
            yield HistogramMetricFamily("tidemq_fsync_duration_seconds", "Duration of the "
                                        "server's fsyncs: one per log per group-commit round "
                                        "(durability always), one per periodic sync pass "
                                        "(interval).", buckets=buckets, sum_value=total)
        conns = GaugeMetricFamily("tidemq_connections", "Open client connections by protocol.",
                                  labels=["protocol"])
        for proto, k in sorted(s.connections.items()):
            conns.add_metric([proto], k)
        yield conns
        errors = CounterMetricFamily("tidemq_errors", "Errors answered to clients, by the "
                                     "error catalogue's code (name: its type).",
                                     labels=["code", "name"])
        for code, k in sorted(s.errors.items()):
            errors.add_metric([str(code), _name(code)], k)
        yield errors


def _name(code: int) -> str:
    cls: type[TideMQError] = CATALOGUE.get(code, TideMQError)
    return cls.__name__


def _counter(name: str, doc: str, labels: list[str], values: dict[Any, int]) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(values.items()):
        fam.add_metric(list(key), n)
    return fam


def render(snap: Snapshot) -> bytes:
    """The Prometheus text format of ``snap`` (any thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snap))  # type: ignore[arg-type]
    return generate_latest(registry)
