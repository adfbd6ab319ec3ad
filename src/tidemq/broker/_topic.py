"""One topic at run time: its partition logs, delay store, journal, groups and producer state.

The :class:`Topic` does the per-topic work of publishing, releasing delays, journaling and
recovery; the :class:`~tidemq.broker.Broker` owns the catalogue, members and the wiring between
topics (dead letters, redrive). Pure logic: time is passed in; one thread at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import msgspec

from ..errors import BacklogFull, Closed, CorruptRecord, InvalidArgument, TideMQError, UnknownGroup
from ..storage import LogConfig, LogStore, MetaStore, PartitionLog, Record
from ..storage._format import HAS_DELAY, HAS_EXT, verify
from ._delays import DelayStore
from ._group import GroupState
from ._hashing import StickyPartitioner, partition_for_key
from ._idempotence import DedupTable, IdsRepr, ProducerTable, ids_out
from ._ids import DELAY_PARTITION, make_id, make_ids, parse_id
from ._journal import Journal, encode
from ._limits import ID_HEADER, check_lengths, check_record, check_records
from ._sync import TokenBuilder
from ._types import GroupSettings, TopicConfig

__all__ = ["Topic", "SnapshotJob", "log_config", "partition_log_name"]

_key = attrgetter("key")
# A plain record (body only) has exactly these extras (see publish_one).
_EXTRAS = attrgetter("key", "routing_key", "headers", "priority", "deliver_at_us", "ttl_us",
                     "dedup_id")
_PLAIN_EXTRAS = (None, None, None, 0, 0, 0, None)
_dedup = attrgetter("dedup_id")
_deliver_at = attrgetter("deliver_at_us")

SNAPSHOT_EVERY_EVENTS = 20_000
RELEASE_BATCH = 10_000
JOURNAL_BATCH_EVENTS = 1_000  # pending event lists that force a journal append
# Journal events that recovery rebuilds from the data (J3): producer sequences, dedup ids
_REBUILT_FROM_DATA = frozenset(("pr", "dd"))


def log_config(cfg: TopicConfig, *, retention_ms: int | None = None, internal: bool = False) -> LogConfig:
    """The storage configuration of a topic's logs. Internal logs (delay, journal) delete any
    segment the broker no longer needs (retention 0 below its ``keep_from``)."""
    if internal:
        return LogConfig(segment_bytes=min(cfg.segment_bytes, 64 << 20), retention_ms=0,
                         durability=cfg.durability)
    return LogConfig(
        segment_bytes=min(cfg.segment_bytes, 2 << 30),
        retention_ms=None if cfg.retention is None else int(cfg.retention * 1000),
        retention_bytes=cfg.retention_bytes,
        durability=cfg.durability,
    )


def partition_log_name(key: str, incarnation: int, partition: int | str) -> str:
    """Log names: one folder per topic incarnation, so a re-created topic starts empty."""
    return f"{key}/{incarnation}/{partition}"


def _fold(dst: list[tuple[Any, ...]], src: list[tuple[Any, ...]]) -> None:
    """Append group events ``src`` to ``dst``, joining an event to the one before it when both
    are runs of the same kind and partition and the new runs continue the old (as
    ``GroupCore._log_runs`` does within one drain). Order is kept, so replay is unchanged."""
    for ev in src:
        if dst and len(ev) == 3:
            prev = dst[-1]
            if len(prev) == 3 and prev[0] == ev[0] and prev[1] == ev[1]:
                old, new = prev[2], ev[2]
                if old and new and old[-1] == new[0]:
                    old[-1:] = new[1:]
                    continue
        dst.append(ev)


class SnapshotJob:
    """The I/O of one topic snapshot, planned by :meth:`Topic.plan_snapshot` on the broker's
    thread and run by the driver on a worker thread (``run`` only touches ``sync`` of logs,
    which is thread-safe, and the store's metadata under this topic's own name)."""

    __slots__ = ("topic", "meta", "name", "data", "syncs", "foreign", "journal_offset")

    def __init__(self, topic: Topic, meta: MetaStore, name: str, data: bytes,
                 syncs: list[tuple[PartitionLog, int]], journal_offset: int,
                 foreign: list[tuple[PartitionLog, int]] | None = None) -> None:
        self.topic = topic
        self.meta = meta
        self.name = name
        self.data = data
        self.syncs = syncs
        self.foreign = foreign or []  # dead-letter topics' partitions (Topic.dead_lettered)
        self.journal_offset = journal_offset

    def run(self) -> None:
        """Sync what the snapshot describes (the dead letters it counts as done, then data,
        delays, journal; J1), then write it. Raises ``OSError`` / ``TideMQError`` (the driver
        calls ``Broker.snapshot_done`` either way)."""
        for log, pos in self.foreign:
            if pos > log.synced_position:
                try:
                    log.sync(pos)
                except Closed:
                    pass  # its topic was deleted meanwhile: those dead letters went with it
        for log, pos in self.syncs:
            if pos > log.synced_position:
                log.sync(pos)
        self.meta.put(self.name, self.data)


def settings_out(s: GroupSettings) -> Any:
    return msgspec.to_builtins(s)


class Topic:
    """Run-time state of one topic incarnation."""

    def __init__(self, store: LogStore, meta: MetaStore, name: str, key: str, incarnation: int,
                 config: TopicConfig, *, now_us: int) -> None:
        self.store = store
        self.meta = meta
        self.name = name
        self.key = key
        self.incarnation = incarnation
        self.config = config
        self.always = config.durability == "always"
        data_cfg = log_config(config)
        self.logs: list[PartitionLog] = [
            store.open_log(partition_log_name(key, incarnation, p), data_cfg)
            for p in range(config.partitions)
        ]
        internal = log_config(config, internal=True)
        self.delays = DelayStore(store.open_log(partition_log_name(key, incarnation, "__delay"), internal))
        self.journal = Journal(store.open_log(partition_log_name(key, incarnation, "__state"), internal))
        self.groups: dict[str, GroupState] = {}
        self.dedup = DedupTable()
        self.producers = ProducerTable()
        self.redrive: dict[tuple[str, str, int], int] = {}
        # Dead-letter offsets at or after a redrive cursor that were redriven by id (same key
        # as ``redrive``): the cursor's redrive skips them; dropped once the cursor passes them.
        self.redriven: dict[tuple[str, str, int], set[int]] = {}
        # Dead-letter topics' partitions this topic's dead letters went to: id(log) -> (log,
        # position). The next snapshot syncs them before it is written (see dead_lettered).
        self.dead_letter_syncs: dict[int, tuple[PartitionLog, int]] = {}
        self.sticky = StickyPartitioner()
        # Journal events not yet appended (see commit); the broker reads it to skip commits.
        self.events: list[Any] = []
        # Group event lists folded into the previous pending one (see drain_group): they count
        # toward JOURNAL_BATCH_EVENTS as the separate events they would have been.
        self._folded = 0
        self._id_prefixes: list[str] = []  # per partition: the message ids' constant part
        self.journal_flushed_us = now_us
        self.journal_interval_us = int(config.sync_interval * 1_000_000)
        self.last_snapshot_us = now_us
        self.last_maintenance_us = now_us
        self.snapshot_in_flight = False
        self.closed = False

    # --- identity --------------------------------------------------------------------------

    @property
    def snapshot_name(self) -> str:
        return f"snap-{self.key}~{self.incarnation}"

    def ids(self, partition: int, first: int, count: int) -> list[str]:
        if partition >= 0:
            prefix = self.id_prefix(partition)
            return [prefix + str(o) for o in range(first, first + count)]
        return make_ids(self.name, self.incarnation, partition, first, count)

    def id_prefix(self, partition: int) -> str:
        """What every id of ``partition`` (>= 0) starts with; computed once per partition."""
        prefixes = self._id_prefixes
        while len(prefixes) <= partition:
            prefixes.append(make_ids(self.name, self.incarnation, len(prefixes), 0, 1)[0][:-1])
        return prefixes[partition]

    def resolve(self, ids: IdsRepr) -> list[str]:
        if isinstance(ids, tuple):
            return self.ids(*ids)
        return list(ids)

    # --- journal ---------------------------------------------------------------------------

    def record_event(self, event: list[Any]) -> None:
        self.events.append(event)

    def drain_group(self, group: GroupState) -> None:
        ev = group.drain_journal()
        if not ev:
            return
        events = self.events
        if events:
            last = events[-1]
            if last[0] == "g" and last[1] == group.name:
                # The same group's events, with nothing between: one pending event, its runs
                # coalesced (an ack after an ack is one run, not one event per ack). Pending
                # events are not encoded yet, and the group no longer holds these lists.
                _fold(last[2], ev)
                self._folded += 1
                return
        events.append(["g", group.name, ev])

    def commit(self, now_us: int, tb: TokenBuilder, *, force: bool = False) -> None:
        """Append the pending events to the journal, after the data (J1).

        Under ``always`` every call's events go out at once (the caller syncs them before it
        answers). Otherwise they are batched: appended once ``sync_interval`` has passed since
        the last append (``tick`` comes by at least that often, see :meth:`journal_due`) or
        when many are pending, so an ack costs no write of its own. What a crash loses is the
        last moments' acks, which SPEC §6 allows under ``interval`` and ``never``.
        """
        if not (self.events if force else self.commit_due(now_us)):
            return
        events = self.events
        # Every batch below these ends has its events (producer, dedup) in this record or an
        # earlier one: recovery rescans the data from the last surviving record's ends (J3).
        # If the append fails (disk full, a failed log), the events stay pending: the caller's
        # request fails, and the next commit carries them, so a retried ack (a no-op in the
        # group by then) is answered OK only once the journal took its event.
        position = self.journal.append([["ends", self.data_ends()], *events], now_us)
        self.events = []
        self._folded = 0
        self.journal_flushed_us = now_us
        if all(ev[0] in _REBUILT_FROM_DATA for ev in events):
            # A publish's own events (its producer sequence, its dedup ids): recovery rebuilds
            # them from the data after the last surviving record's ends (J3), so the answer
            # waits for the data's fsync only; the periodic sync covers this record.
            tb.later.append((self.journal.log, position))
        else:
            tb.add(self.journal.log, position, self.always)

    def data_ends(self) -> list[int]:
        return [log.end_offset for log in self.logs]

    def commit_due(self, now_us: int) -> bool:
        """Whether :meth:`commit` at ``now_us`` would append to the journal."""
        events = self.events
        if not events:
            return False
        return (self.always or len(events) + self._folded >= JOURNAL_BATCH_EVENTS
                or now_us - self.journal_flushed_us >= self.journal_interval_us)

    def journal_due_us(self) -> int | None:
        """When (wall µs) pending journal events must be appended; None: nothing pending."""
        if not self.events:
            return None
        return self.journal_flushed_us + self.journal_interval_us

    def journal_due(self, now_us: int) -> float | None:
        """Seconds until pending journal events must be appended (None: nothing pending)."""
        if not self.events:
            return None
        return max(0.0, (self.journal_flushed_us + self.journal_interval_us - now_us) / 1e6)

    # --- publishing ------------------------------------------------------------------------

    def check_backlog(self, adding: int) -> None:
        limit = self.config.backlog_limit
        if limit is None:
            return
        backlog = self.backlog()
        if backlog + adding > limit:
            raise BacklogFull(
                f"topic {self.name!r} has {backlog} undelivered messages, its backlog limit is "
                f"{limit} (policy {self.config.backlog_policy}); consume or retry later"
            )

    def backlog(self) -> int:
        """Messages some group has still to finish, plus pending delayed messages."""
        total = len(self.delays)
        if self.groups:
            for p, log in enumerate(self.logs):
                low = min(g.low_water(p) for g in self.groups.values())
                total += max(0, log.end_offset - low)
        return total

    def append(self, partition: int, records: Sequence[Record], now_us: int, tb: TokenBuilder) -> int:
        log = self.logs[partition]
        res = log.append_records(records, now_us)
        tb.add(log, res.position, self.always)
        return res.base_offset

    def publish_one(self, records: Sequence[Record], now_us: int
                    ) -> tuple[list[str], PartitionLog, int] | None:
        """The per-message fast path of :meth:`publish`: exactly one keyless record with no
        dedup id and no delay (routing key, headers, priority and TTL as it likes) goes to the
        next keyless partition. Returns ``(ids, log, position)`` for the caller's sync token,
        or None, having done nothing, for anything else (take :meth:`publish`). Same checks,
        same outcome as ``publish``; a record that fails one is left to ``publish``, which
        raises the same error."""
        if len(records) != 1:
            return None
        r = records[0]
        if type(r) is not Record:
            return None
        extras = _EXTRAS(r)
        if extras != _PLAIN_EXTRAS:
            key, rk, headers, priority, deliver_at, _ttl, dedup = extras
            if key is not None or dedup is not None or deliver_at or type(priority) is not int \
                    or not 0 <= priority <= 9:
                return None
            if rk is not None or headers:
                try:
                    check_record(0, r)
                except TideMQError:
                    return None
        body = r.body
        config = self.config
        if type(body) is not bytes or len(body) > config.max_message_bytes:
            return None
        if config.backlog_limit is not None:
            self.check_backlog(1)
        logs = self.logs
        p = self.sticky.next_partition(len(logs))
        log = logs[p]
        res = log.append_records(records, now_us)
        prefixes = self._id_prefixes
        prefix = prefixes[p] if p < len(prefixes) else self.id_prefix(p)
        return [prefix + str(res.base_offset)], log, res.position

    def publish(self, records: Sequence[Record], now_us: int, tb: TokenBuilder, *,
                partition: int | None = None, check: bool = True) -> list[str]:
        """Store ``records``; ids in input order. ``partition`` forces keyless and keyed records
        alike into one partition (a producer's own choice)."""
        if check:
            check_records(records, self.config.max_message_bytes)
        n = len(self.logs)
        count = len(records)
        has_dedup = any(map(_dedup, records))
        has_delay = max(map(_deliver_at, records)) > now_us
        if check:
            self.check_backlog(count)
        if not has_dedup and not has_delay:
            if partition is None and not any(map(_key, records)):
                partition = self.sticky.next_partition(n)
            if partition is not None:
                base = self.append(partition, records, now_us, tb)
                return self.ids(partition, base, count)
        ids: list[str | None] = [None] * count
        todo = list(range(count))
        alias: list[tuple[int, int]] = []
        if has_dedup:
            todo, alias = self._dedup_filter(records, ids, now_us)
        delayed: list[int] = []
        by_part: dict[int, list[int]] = {}
        keyless_p = -1
        for i in todo:
            r = records[i]
            if r.deliver_at_us > now_us:
                delayed.append(i)
                continue
            if partition is not None:
                p = partition
            elif r.key is not None:
                p = partition_for_key(r.key, n)
            else:
                if keyless_p < 0:
                    keyless_p = self.sticky.next_partition(n)
                p = keyless_p
            by_part.setdefault(p, []).append(i)
        for p, idx in by_part.items():
            base = self.append(p, [records[i] for i in idx], now_us, tb)
            prefix = self.id_prefix(p)
            for j, i in enumerate(idx):
                ids[i] = prefix + str(base + j)
        if delayed:
            base, pos = self.delays.add([records[i] for i in delayed], now_us)
            tb.add(self.delays.log, pos, self.always)
            for j, i in enumerate(delayed):
                ids[i] = make_id(self.name, self.incarnation, DELAY_PARTITION, base + j)
        for i, first in alias:
            ids[i] = ids[first]
        if has_dedup and len(todo) < count:
            # Duplicates answer with their first message's id: confirm them only once that
            # message is durable too (it may still be in its fsync).
            done = set(todo)
            self.cover([mid for i, mid in enumerate(ids) if i not in done and mid is not None], tb)
        if has_dedup:
            expires = now_us + int(self.config.dedup_window * 1e6)
            rows = []
            for i in todo:
                d = records[i].dedup_id
                mid = ids[i]
                if d is not None and mid is not None:
                    self.dedup.put(d, mid, expires)
                    rows.append([d, mid, expires])
            if rows:
                self.events.append(["dd", rows])
        return [i for i in ids if i is not None]

    def cover(self, ids: list[str], tb: TokenBuilder) -> None:
        """Add to ``tb`` the positions that make the messages ``ids`` (stored earlier: a dedup
        duplicate or an idempotent resend) durable, so the driver confirms the repeat only when
        the original is durable at the topic's level (a confirm is never ahead of the data)."""
        for mid in ids:
            ref = parse_id(mid)
            if ref.partition == DELAY_PARTITION:
                tb.add(self.delays.log, ref.offset + 1, self.always)
            elif 0 <= ref.partition < len(self.logs):
                tb.add(self.logs[ref.partition], ref.offset + 1, self.always)

    def _dedup_filter(self, records: Sequence[Record], ids: list[str | None],
                      now_us: int) -> tuple[list[int], list[tuple[int, int]]]:
        todo: list[int] = []
        alias: list[tuple[int, int]] = []
        first: dict[str, int] = {}
        for i, r in enumerate(records):
            d = r.dedup_id
            if d is not None:
                if not isinstance(d, str):
                    raise InvalidArgument(f"record {i}: dedup_id must be a str")
                prev = self.dedup.get(d, now_us)
                if prev is not None:
                    ids[i] = prev
                    continue
                if d in first:
                    alias.append((i, first[d]))
                    continue
                first[d] = i
            todo.append(i)
        return todo, alias

    def publish_encoded(self, partition: int, batch: bytes, now_us: int, tb: TokenBuilder) -> IdsRepr:
        """Append a producer's pre-encoded batch as it came when it can; split it when it carries
        future delays or dedup ids. Idempotent per (partition, producer id, sequence).

        Returns the ids, or ``(partition, first offset, count)`` when the batch was stored as
        it came (its ids are ``id_prefix(partition)`` + each offset; nobody made them yet)."""
        if not 0 <= partition < len(self.logs):
            raise InvalidArgument(
                f"partition {partition} does not exist: topic {self.name!r} has {len(self.logs)}")
        try:
            view = verify(batch)
        except CorruptRecord as exc:
            raise InvalidArgument(f"the published batch is malformed: {exc}") from exc
        pid, epoch, seq, count = view.producer_id, view.producer_epoch, view.base_sequence, view.count
        idempotent = pid >= 0 and seq >= 0
        if idempotent:
            dup = self.producers.check(partition, pid, epoch, seq, count)
            if dup is not None:
                ids = self.resolve(dup)
                self.cover(ids, tb)
                return ids
        check_lengths(view.lengths(), self.config.max_message_bytes)
        split = bool(view.attributes & HAS_DELAY) and max(view.deliver_ats()) > now_us
        records: list[Record] | None = None
        if view.attributes & HAS_EXT:
            try:
                records = view.records()
            except CorruptRecord as exc:
                raise InvalidArgument(f"the published batch is malformed: {exc}") from exc
            check_records(records, self.config.max_message_bytes)
            split = split or any(map(_dedup, records))
        ids_repr: IdsRepr
        if split:
            if records is None:
                records = view.records()
            ids = self.publish(records, now_us, tb, partition=partition, check=False)
            ids_repr = ids
        else:
            self.check_backlog(count)
            log = self.logs[partition]
            res = log.append(batch, now_us, verified=view)
            tb.add(log, res.position, self.always)
            ids_repr = (partition, res.base_offset, count)
        if idempotent:
            self.producers.record(partition, pid, epoch, seq, count, ids_repr, now_us)
            self.events.append(["pr", partition, pid, epoch, seq, count, ids_out(ids_repr), now_us])
        return ids_repr

    # --- delays ----------------------------------------------------------------------------

    def release_due(self, now_us: int, tb: TokenBuilder) -> int:
        """Append due delayed messages to their partitions (keeping their ids); how many."""
        due = self.delays.pop_due(now_us, RELEASE_BATCH)
        if not due:
            return 0
        n = len(self.logs)
        by_part: dict[int, list[Record]] = {}
        keyless_p = -1
        for seq, r in due:
            headers = dict(r.headers) if r.headers else {}
            headers[ID_HEADER] = make_id(self.name, self.incarnation, DELAY_PARTITION, seq)
            if r.key is not None:
                p = partition_for_key(r.key, n)
            else:
                if keyless_p < 0:
                    keyless_p = self.sticky.next_partition(n)
                p = keyless_p
            by_part.setdefault(p, []).append(msgspec.structs.replace(r, headers=headers))
        seqs: list[int] = []
        locs: list[int] = []  # per seq: partition, offset of its copy (recovery checks it)
        for p, recs in by_part.items():
            base = self.append(p, recs, now_us, tb)
            for j, r in enumerate(recs):
                assert r.headers is not None
                seqs.append(int(r.headers[ID_HEADER].rsplit(":", 1)[1]))
                locs += (p, base + j)
        self.delays.released(seqs)
        self.events.append(["dr", seqs, locs])
        return len(due)

    # --- dead letters ----------------------------------------------------------------------

    def dead_lettered(self, group: str, dlq: Topic, locs: list[int]) -> None:
        """Journal where ``group``'s dead letters were written: ``locs`` is flat ``[partition,
        offset, delivery count, dead-letter partition, dead-letter offset, ...]``, one five per
        message. Call after the group's events that mark them done were drained (their
        ``"a"`` event must come first in the journal).

        The dead-letter topic's data and this journal are different files: the OS may write
        the journal back first. Recovery therefore counts a journaled dead-lettering only if
        its copy is in the dead-letter topic (``_recover``); a snapshot, after which the event
        is no longer replayed, syncs those partitions first (J1)."""
        self.events.append(["dl", group, dlq.key, dlq.incarnation, locs])
        syncs = self.dead_letter_syncs
        for i in range(0, len(locs), 5):
            log = dlq.logs[locs[i + 3]]
            pos = locs[i + 4] + 1
            prev = syncs.get(id(log))
            if prev is None or pos > prev[1]:
                syncs[id(log)] = (log, pos)

    # --- durable state ---------------------------------------------------------------------

    def plan_snapshot(self, now_us: int) -> SnapshotJob:
        """Take a snapshot of the in-memory state and return the I/O that makes it durable; the
        driver runs ``job.run()`` off its loop, then calls :meth:`snapshot_done` (J4).

        Pending events are appended to the journal first, so the journal alone still holds the
        whole state if the snapshot is never written (a failure, a crash): the snapshot only
        shortens recovery. The job syncs the data logs, the delay log and the journal up to
        what the snapshot describes before writing it (J1).
        """
        tb = TokenBuilder()
        self.commit(now_us, tb, force=True)
        ends = self.data_ends()
        state = {
            "journal_offset": self.journal.log.end_offset,
            "time_us": now_us,
            "ends": ends,
            "groups": {name: [settings_out(g.settings), g.snapshot()] for name, g in self.groups.items()},
            "delays": self.delays.snapshot(),
            "dedup": self.dedup.dump(),
            "producers": self.producers.dump(),
            "redrive": [[g, d, p, off] for (g, d, p), off in self.redrive.items()],
            "redriven": [[g, d, p, sorted(offs)] for (g, d, p), offs in self.redriven.items()],
        }
        syncs = [(log, log.end_offset) for log in (*self.logs, self.delays.log, self.journal.log)]
        # Entries already durable are dropped; the others stay until a later plan finds them
        # durable, so a failed job leaves them for the next one.
        self.dead_letter_syncs = {k: (log, pos) for k, (log, pos) in self.dead_letter_syncs.items()
                                  if pos > log.synced_position}
        foreign = list(self.dead_letter_syncs.values())
        self.snapshot_in_flight = True
        self.journal.events_since_snapshot = 0
        self.last_snapshot_us = now_us
        return SnapshotJob(self, self.meta, self.snapshot_name, encode(state), syncs,
                           self.journal.log.end_offset, foreign)

    def snapshot_done(self, job: SnapshotJob, now_us: int) -> None:
        """The job is durable: the journal below its offset is no longer needed."""
        self.snapshot_in_flight = False
        if self.closed:
            return
        self.journal.log.apply_retention(now_us, keep_from=job.journal_offset)

    def snapshot_failed(self) -> None:
        """The job failed: nothing is lost (the journal has it all); try again later."""
        self.snapshot_in_flight = False
        self.journal.events_since_snapshot = max(self.journal.events_since_snapshot, 1)

    # --- groups ----------------------------------------------------------------------------

    def group(self, name: str) -> GroupState:
        g = self.groups.get(name)
        if g is None:
            raise UnknownGroup(f"topic {self.name!r} has no consumer group {name!r}")
        return g

    # --- retention & upkeep ----------------------------------------------------------------

    def apply_retention(self, now_us: int) -> int:
        removed = 0
        for p, log in enumerate(self.logs):
            keep: int | None = None
            if not self.config.log_retention and self.groups:
                keep = min(g.low_water(p) for g in self.groups.values())
            removed += log.apply_retention(now_us, keep_from=keep)
        removed += self.delays.trim(now_us)
        return removed

    def close(self) -> None:
        self.closed = True
        for log in (*self.logs, self.delays.log, self.journal.log):
            log.close()
