"""The broker core: topics, publishing, groups and members, durable state (SPEC §1-§6).

Deterministic: every call takes the time (``now_us`` wall µs, ``mono_us`` monotonic µs); there are
no threads, sockets or clocks here. The drivers call it from one thread at a time, except
:meth:`Broker.sync` and :meth:`Broker.sync_all`, which they may run on another thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import msgspec

from ..errors import (
    Closed,
    DiskFull,
    GroupSettingsMismatch,
    InvalidArgument,
    InvalidPartitionCount,
    StorageFailed,
    TideMQError,
    TopicExists,
    UnknownMessage,
    UnknownTopic,
)
from ..storage import LogStore, MetaStore, PartitionLog, Record
from ..storage._fileops import is_disk_full
from ._deadletters import (
    H_PARTITION,
    cursor_key,
    dead_letter_records,
    dead_letter_topic,
    drop_redriven_below,
    origin_of,
    redrive_cursor,
    redriven_offsets,
    redriven_record,
)
from ._group import DeadLetter, GroupState
from ._ids import make_id, parse_id
from ._journal import decode, encode
from ._limits import (
    ID_HEADER,
    MAX_GROUPS_PER_TOPIC,
    MAX_TOPICS,
    check_extend,
    check_nack_delay,
    check_prefetch,
    check_reason,
)
from ._names import dead_letter_name, topic_key, validate_group_name, validate_topic_name
from ._recover import recover_topic
from ._stats import BrokerStats
from ._sync import EMPTY_TOKEN, SyncToken, TokenBuilder
from ._topic import (
    SNAPSHOT_EVERY_EVENTS,
    SnapshotJob,
    Topic,
    log_config,
    partition_log_name,
    settings_out,
)
from ._types import (
    MAX_PARTITIONS,
    Delivery,
    GroupInfo,
    GroupSettings,
    PartitionInfo,
    TopicConfig,
    TopicInfo,
    check_start,
)

__all__ = ["Broker", "PublishResult"]

CATALOGUE = "topics"
REDRIVE_BATCH = 10_000  # dead letters moved per redrive call, at most (call again for more)
REDRIVE_FLUSH_BYTES = 16 << 20  # redriven bodies held before they are appended
REDRIVE_IDS_MAX = 1000  # dead letters named per redrive_ids call, at most
MAINTENANCE_EVERY_US = 1_000_000  # dedup/producer expiry, retention, snapshots
SNAPSHOT_EVERY_US = 60_000_000
PRODUCER_IDLE_US = 7 * 24 * 3600 * 1_000_000


class PublishResult:
    """Ids in input order, and the token to sync before confirming (under ``always``).

    When the messages got consecutive offsets ``first ..`` of one partition, one id each,
    ``prefix`` is set (the partition's id prefix) and ``ids`` is made on first use: the server
    answers such a batch with the prefix and its offsets (``PublishOk.id_prefix``) and never
    makes its ids."""

    __slots__ = ("_ids", "token", "prefix", "first", "count")

    def __init__(self, ids: list[str] | None, token: SyncToken, *, prefix: str = "",
                 first: int = 0, count: int = 0) -> None:
        self._ids = ids
        self.token = token
        self.prefix = prefix
        self.first = first
        self.count = count if ids is None else len(ids)

    @property
    def ids(self) -> list[str]:
        ids = self._ids
        if ids is None:
            prefix = self.prefix
            ids = self._ids = [prefix + str(o) for o in range(self.first, self.first + self.count)]
        return ids

    def __repr__(self) -> str:
        return f"PublishResult(ids={self.ids!r}, token={self.token!r})"


class Broker:
    """See ``docs/architecture.md`` ("broker") for the contract of each method."""

    def __init__(self, store: LogStore, *, now_us: int, mono_us: int, auto_create_topics: bool,
                 default_topic_config: TopicConfig, producer_idle: float) -> None:
        self._store = store
        self._meta = store.meta
        self._jobs: list[SnapshotJob] = []
        self._auto_create = auto_create_topics
        self._default = default_topic_config
        self._producer_idle_us = int(producer_idle * 1e6)
        self._topics: dict[str, Topic] = {}
        self._next_incarnation = 1
        self._members: dict[str, tuple[Topic, GroupState]] = {}
        self._member_seq = itertools.count(1)
        # Member ids of this broker run never repeat an earlier run's (ids are not durable).
        self._run = f"{now_us:x}"
        # Groups that may have new ready messages since the last wakeups(). Their members with
        # credit are listed when wakeups() is asked, not after every ack or publish: the
        # per-message paths only add the group.
        self._wake: set[GroupState] = set()
        self._positions: dict[int, tuple[PartitionLog, int]] = {}
        self._prefetch: dict[str, int] = {}
        self._by_name: dict[str, Topic] = {}
        self._closed = False
        # Deadline hints (see take_deadline_hint): the earliest new timed work since the last
        # call, on the monotonic clock (leases, backoff) and on the wall clock (delays, a
        # pending journal append).
        self._hint_mono: int | None = None
        self._hint_wall: int | None = None
        self._journal_ids: set[int] = set()  # id() of every topic's journal log (see _complete)
        self.stats = BrokerStats()  # counters for metrics (_stats.py; not durable)

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(cls, store: LogStore, *, now_us: int, mono_us: int, auto_create_topics: bool = True,
             default_topic_config: TopicConfig | None = None,
             producer_idle: float = 7 * 24 * 3600.0) -> Broker:
        """Open the broker over ``store`` and recover its durable state (J2: clamped to the logs)."""
        cfg = default_topic_config or TopicConfig()
        cfg.validate()
        b = cls(store, now_us=now_us, mono_us=mono_us, auto_create_topics=auto_create_topics,
                default_topic_config=cfg, producer_idle=producer_idle)
        raw = b._meta.get(CATALOGUE)
        if raw:
            cat = decode(raw)
            b._next_incarnation = int(cat["next_incarnation"])
            for key, t in cat["topics"].items():
                config = msgspec.convert(t["config"], TopicConfig, strict=False)
                topic = Topic(store, b._meta, t["name"], key, int(t["incarnation"]), config, now_us=now_us)
                b._topics[key] = topic
                b._journal_ids.add(id(topic.journal.log))
            # Every topic's logs are open (their ends recovered) before any topic's state is:
            # a topic's journaled dead letters are checked against its dead-letter topics'
            # data, whatever order the catalogue lists them in.
            for topic in b._topics.values():
                recover_topic(topic, now_us, b._dead_letter_topic)
        return b

    def _dead_letter_topic(self, key: str, incarnation: int) -> Topic | None:
        """The topic ``key`` if it is still that incarnation, else None (it was deleted)."""
        t = self._topics.get(key)
        return t if t is not None and t.incarnation == incarnation else None

    @property
    def store(self) -> LogStore:
        """The store the broker was opened on (its opener closes it, after :meth:`close`)."""
        return self._store

    @property
    def meta(self) -> MetaStore:
        """The store's named blobs (``storage.MetaStore``), for state that fronts above the
        broker keep beside the logs (the AMQP front's catalogue); the broker's own names are
        its catalogue and ``snap-*`` snapshots. Written on the caller's thread (an fsync)."""
        return self._meta

    def close(self) -> None:
        """Snapshot every topic (here, synchronously: the driver has stopped) and close the
        logs; later calls raise :class:`Closed`. Call after every job handed out by
        :meth:`take_jobs` has finished."""
        if self._closed:
            return
        for t in self._topics.values():
            if not t.snapshot_in_flight:
                self._jobs.append(t.plan_snapshot(t.last_maintenance_us))
        for job in self.take_jobs():  # planned ones no driver took, and the closing ones
            self._run_job(job, job.topic.last_maintenance_us)
        for t in self._topics.values():
            t.close()
        self._closed = True

    # --- background work (J4) --------------------------------------------------------------

    def take_jobs(self) -> list[SnapshotJob]:
        """I/O the driver must run off its loop (snapshot writes), then report with
        :meth:`job_done`. At most one job per topic is out at a time."""
        jobs, self._jobs = self._jobs, []
        return jobs

    def job_done(self, job: SnapshotJob, error: BaseException | None, *, now_us: int) -> None:
        """``job.run()`` finished (``error`` None) or failed. On the broker's thread."""
        t = job.topic
        if error is not None:
            t.snapshot_failed()
            return
        t.snapshot_done(job, now_us)
        if t.closed:  # deleted while the job ran: its snapshot must not outlive it
            self._meta.delete(job.name)

    def snapshot_now(self, topic: str, *, now_us: int) -> None:
        """Plan and write ``topic``'s snapshot here, now (what maintenance does now and then;
        tests and tools). Raises what the job raises; nothing is lost if it fails."""
        t = self._topic(topic)
        if t.snapshot_in_flight:
            raise InvalidArgument(f"a snapshot of {t.name!r} is already being written")
        self._jobs.append(t.plan_snapshot(now_us))
        self.run_jobs(now_us=now_us)

    def run_jobs(self, *, now_us: int) -> int:
        """Run pending jobs here, now (tests and tools without a driver); how many ran."""
        jobs = self.take_jobs()
        for job in jobs:
            error = self._run_job(job, now_us)
            if error is not None:
                raise error
        return len(jobs)

    def _run_job(self, job: SnapshotJob, now_us: int) -> BaseException | None:
        """Run ``job`` on this thread and report it (:meth:`job_done`); returns its error."""
        try:
            job.run()
        except Exception as exc:
            self.job_done(job, exc, now_us=now_us)
            return exc
        self.job_done(job, None, now_us=now_us)
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the broker is closed; open a new one")

    # --- sync ------------------------------------------------------------------------------

    def sync(self, token: SyncToken) -> None:
        """fsync what ``token`` names, data before journal. Safe from another thread."""
        for log, pos in token.entries:
            log.sync(pos)

    def needs_sync(self, token: SyncToken) -> bool:
        """True when the token's topic is ``always``: sync before confirming."""
        return token.always and bool(token.entries)

    def sync_all(self) -> None:
        """fsync every ``interval`` / ``always`` log written so far (the periodic sync; a
        ``never`` log is left to the OS). Safe from another thread. Goes on past a log that
        fails (D9: that log stays failed and says so to its writers), then raises the first
        failure, so one broken topic does not stop the others from being synced."""
        # dict.copy() is one C call under the GIL: consistent even while the loop writes.
        first: BaseException | None = None
        for log, pos in list(self._positions.copy().values()):
            if pos <= log.synced_position or log.durability == "never":
                continue
            try:
                log.sync(pos)
            except Closed:
                pass
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def has_unsynced(self) -> bool:
        """Whether :meth:`sync_all` has anything to do (cheap; safe from another thread)."""
        return any(pos > log.synced_position and log.durability != "never"
                   for log, pos in list(self._positions.copy().values()))

    def barrier(self, topic: str) -> SyncToken:
        """A token that makes everything ``topic``'s state says so far durable: its data logs
        and delay log first, then its journal (J1). A driver syncs it before answering an
        admin change under ``always`` (a group created, updated, deleted or reset), so a power
        cut right after the answer cannot lose the change. Cheap when already synced."""
        t = self._topic(topic)
        tb = TokenBuilder()
        tb.always = t.always
        t.commit(t.last_maintenance_us, tb, force=True)
        for log in (*t.logs, t.delays.log, t.journal.log):
            if log.end_offset > log.synced_position:
                tb.add(log, log.end_offset, t.always)
        return self._token(tb)

    def _token(self, tb: TokenBuilder) -> SyncToken:
        token = tb.build()
        if token.always:
            token = self._complete(token)
        positions = self._positions
        for log, pos in tb.later:
            prev = positions.get(id(log))
            if prev is None or prev[1] < pos:
                positions[id(log)] = (log, pos)
        for log, pos in token.entries:
            positions[id(log)] = (log, pos)
        return token

    def _complete(self, token: SyncToken) -> SyncToken:
        """J1 for writes that handed out no token of their own (a tick's delay releases, a
        fetch's dead letters): a journal record synced by this token may describe them, so
        every data log with unsynced appends is synced first, then this token's journals.
        Costs a pass over the logs written so far, only for tokens the driver must sync."""
        journals = self._journal_ids
        mine = {id(log) for log, _ in token.entries}
        extra = [(log, pos) for key, (log, pos) in self._positions.items()
                 if key not in mine and key not in journals and pos > log.synced_position
                 and log.durability != "never"]
        if not extra:
            return token
        data = [e for e in token.entries if id(e[0]) not in journals]
        tail = [e for e in token.entries if id(e[0]) in journals]
        return SyncToken(tuple(extra + data + tail), True)

    # --- catalogue -------------------------------------------------------------------------

    def _catalogue(self, *, without: str | None = None) -> bytes:
        return encode({
            "next_incarnation": self._next_incarnation,
            "topics": {
                k: {"name": t.name, "incarnation": t.incarnation, "config": msgspec.to_builtins(t.config)}
                for k, t in self._topics.items() if k != without
            },
        })

    def _save_catalogue(self) -> None:
        """Write the catalogue; a failure raises DiskFull or StorageFailed (never OSError).
        The caller undoes its in-memory change first, then re-raises."""
        try:
            self._meta.put(CATALOGUE, self._catalogue())
        except OSError as exc:
            raise _storage_error(exc, "cannot write the topic catalogue") from exc

    def _topic(self, name: str) -> Topic:
        self._check_open()
        t = self._topics.get(topic_key(validate_topic_name(name, derived=True)))
        if t is None:
            raise UnknownTopic(f"topic {name!r} does not exist; create it first")
        return t

    def _topic_for_publish(self, name: str, now_us: int) -> Topic:
        # Hot path: a name seen before skips validation (cleared when topics come and go).
        t = self._by_name.get(name)
        if t is not None and not self._closed:
            return t
        self._check_open()
        t = self._topics.get(topic_key(validate_topic_name(name, derived=True)))
        if t is not None:
            self._by_name[name] = t
        if t is None:
            if not self._auto_create:
                raise UnknownTopic(f"topic {name!r} does not exist and auto-creation is off; create it")
            validate_topic_name(name)
            self._require_room(1, name)
            t = self._create(name, self._default, now_us)
            self._by_name[name] = t
        return t

    def _require_room(self, n: int, name: str) -> None:
        """Room for ``n`` more topics under MAX_TOPICS, else InvalidArgument."""
        if len(self._topics) + n > MAX_TOPICS:
            raise InvalidArgument(
                f"cannot create topic {name!r}: the broker has {len(self._topics)} topics and "
                f"allows at most {MAX_TOPICS} (dead-letter topics included); delete topics "
                "that are no longer used")

    def _create(self, name: str, config: TopicConfig, now_us: int) -> Topic:
        """Create a topic (the caller checked the name and the room): its logs, then the
        catalogue entry. If either fails, nothing of it stays (no ghost topic in memory, its
        new logs removed) and DiskFull / StorageFailed is raised."""
        inc = self._next_incarnation
        key = topic_key(name)
        # Taken even if the creation fails: a number is never given to two incarnations.
        self._next_incarnation += 1
        try:
            t = Topic(self._store, self._meta, name, key, inc, config, now_us=now_us)
        except (OSError, TideMQError) as exc:
            self._drop_logs(key, inc, config.partitions)
            if isinstance(exc, OSError):
                raise _storage_error(exc, f"cannot create topic {name!r}") from exc
            raise
        self._topics[t.key] = t
        self._journal_ids.add(id(t.journal.log))
        try:
            self._save_catalogue()
        except TideMQError:
            del self._topics[t.key]
            _quietly(t.close)
            self._drop_logs(key, inc, config.partitions)
            # The catalogue write may have failed after its rename (at the directory fsync):
            # put back the one that does not name the topic, as far as the disk lets us.
            _quietly(lambda: self._meta.put(CATALOGUE, self._catalogue()))
            raise
        return t

    def _drop_logs(self, key: str, incarnation: int, partitions: int) -> None:
        """Remove every log of one topic incarnation, quietly (best effort: used to undo)."""
        names = {partition_log_name(key, incarnation, p)
                 for p in (*range(partitions), "__delay", "__state")}
        prefix = partition_log_name(key, incarnation, "")
        try:
            names.update(n for n in self._store.list_logs() if n.startswith(prefix))
        except OSError:
            pass
        for log_name in sorted(names):
            _quietly(partial(self._store.delete_log, log_name))

    def create_topic(self, name: str, config: TopicConfig | None = None, *, now_us: int,
                     exist_ok: bool = False) -> TopicInfo:
        self._check_open()
        validate_topic_name(name)
        cfg = config or self._default
        if not isinstance(cfg, TopicConfig):
            raise InvalidArgument("config must be a TopicConfig")
        cfg.validate()
        existing = self._topics.get(topic_key(name))
        if existing is not None:
            if exist_ok:
                return self._info(existing)
            raise TopicExists(f"topic {existing.name!r} already exists")
        self._require_room(1, name)
        return self._info(self._create(name, cfg, now_us))

    def delete_topic(self, name: str, *, now_us: int) -> None:
        """Delete a topic, its groups and its data.

        Crash safety: the catalogue write without the topic is the moment of deletion; the
        logs and the snapshot go after it, so a crash leaves the topic either whole (before)
        or gone (after; files left behind are never read again: a re-created topic is a new
        incarnation). On a full disk the catalogue write may find no room: then the topic's
        logs are deleted first, to make room, and the write is tried again. A crash between
        the two leaves a catalogue entry without logs, which opens as an empty topic (delete
        it again)."""
        t = self._topic(name)
        cat = self._catalogue(without=t.key)
        try:
            self._meta.put(CATALOGUE, cat)
        except OSError as exc:
            if not is_disk_full(exc):
                raise _storage_error(exc, f"cannot delete topic {t.name!r}") from exc
            self._detach(t)
            self._delete_logs(t)
            try:
                self._meta.put(CATALOGUE, cat)
            except OSError as again:
                raise _storage_error(
                    again, f"topic {t.name!r}: its data is deleted but the catalogue could not "
                    "be written, so after a restart the topic is listed again, empty; delete "
                    "it again once there is space") from again
        else:
            self._detach(t)
            self._delete_logs(t)
        try:
            self._meta.delete(t.snapshot_name)
        except OSError as exc:
            raise _storage_error(exc, f"topic {t.name!r} is deleted, but its snapshot "
                                      "could not be removed") from exc

    def _detach(self, t: Topic) -> None:
        """Forget a deleted topic in memory and close its logs."""
        for mid in [m for m, (tt, _) in self._members.items() if tt is t]:
            del self._members[mid]
            self._prefetch.pop(mid, None)
        self._topics.pop(t.key, None)
        self._by_name.clear()
        self._wake.difference_update(t.groups.values())
        for log in (*t.logs, t.delays.log, t.journal.log):
            self._positions.pop(id(log), None)
            for other in self._topics.values():  # its dead letters went with it
                other.dead_letter_syncs.pop(id(log), None)
        self._journal_ids.discard(id(t.journal.log))
        self.stats.forget_topic(t.name)
        _quietly(t.close)

    def _delete_logs(self, t: Topic) -> None:
        """The deleted topic's logs. While its catalogue entry and snapshot still exist (a
        crash, or a full disk), it opens as an empty topic with its groups."""
        prefix = partition_log_name(t.key, t.incarnation, "")
        for name in self._store.list_logs():
            if name.startswith(prefix):
                self._store.delete_log(name)  # StorageFailed: files stay; never read again

    def list_topics(self) -> list[TopicInfo]:
        self._check_open()
        return [self._info(t) for t in sorted(self._topics.values(), key=lambda t: t.key)]

    def describe_topic(self, name: str) -> TopicInfo:
        return self._info(self._topic(name))

    def _info(self, t: Topic) -> TopicInfo:
        return TopicInfo(
            name=t.name, incarnation=t.incarnation, config=t.config,
            partitions=[PartitionInfo(p, log.start_offset, log.end_offset) for p, log in enumerate(t.logs)],
            groups=sorted(t.groups), delayed=len(t.delays),
        )

    def set_partitions(self, name: str, n: int, *, now_us: int) -> TopicInfo:
        t = self._topic(name)
        have = len(t.logs)
        if not isinstance(n, int) or n < have:
            raise InvalidPartitionCount(
                f"topic {t.name!r} has {have} partitions; the count may only grow (asked {n})")
        if n > MAX_PARTITIONS:
            raise InvalidPartitionCount(f"at most {MAX_PARTITIONS} partitions (asked {n})")
        if n == have:
            return self._info(t)
        # New logs first, then the catalogue, and only then the topic and its groups see the
        # partitions: a failure undoes the logs and changes nothing else.
        cfg = log_config(t.config)
        old = t.config
        added: list[PartitionLog] = []
        try:
            for p in range(have, n):
                added.append(self._store.open_log(partition_log_name(t.key, t.incarnation, p), cfg))
            t.config = msgspec.structs.replace(old, partitions=n)
            self._save_catalogue()
        except (OSError, TideMQError) as exc:
            t.config = old
            for p in range(have, n):
                _quietly(partial(self._store.delete_log, partition_log_name(t.key, t.incarnation, p)))
            if isinstance(exc, OSError):
                raise _storage_error(exc, f"cannot add partitions to {t.name!r}") from exc
            raise
        for log in added:
            t.logs.append(log)
            for g in t.groups.values():
                g.add_partition(log)
        return self._info(t)

    # --- publishing ------------------------------------------------------------------------

    def publish(self, topic: str, records: Sequence[Record], *, now_us: int) -> PublishResult:
        """Store ``records`` (partitioned by key; each partition's share one atomic batch).

        Raises MessageTooLarge / InvalidArgument (nothing stored), BacklogFull (policy reject,
        and policy block too: the driver waits and retries), UnknownTopic.
        """
        t = self._by_name.get(topic)
        if t is None or self._closed:
            t = self._topic_for_publish(topic, now_us)
        one = t.publish_one(records, now_us)
        if one is not None and not t.events:
            # One record on the one-record path and no journal events pending: the token is
            # its one entry (what a TokenBuilder would build), without the builder.
            ids, log, pos = one
            entry = (log, pos)
            self._positions[id(log)] = entry
            if t.groups:
                self._after_publish(t)
            self.stats.on_publish(t.name, len(ids))
            return PublishResult(ids, SyncToken((entry,), t.always))
        tb = TokenBuilder()
        if one is not None:
            ids, log, pos = one
            tb.add(log, pos, t.always)
        else:
            ids = t.publish(records, now_us, tb)
        t.commit(now_us, tb)
        self._after_publish(t)
        self.stats.on_publish(t.name, len(ids))
        return PublishResult(ids, self._token(tb))

    def publish_encoded(self, topic: str, partition: int, batch: bytes, *, now_us: int) -> PublishResult:
        """Append a producer's pre-encoded batch to ``partition`` (idempotent per producer seq)."""
        t = self._topic_for_publish(topic, now_us)
        tb = TokenBuilder()
        got = t.publish_encoded(partition, batch, now_us, tb)
        t.commit(now_us, tb)
        self._after_publish(t)
        if isinstance(got, tuple):  # consecutive offsets of one partition: ids made on demand
            part, first, count = got
            self.stats.on_publish(t.name, count)
            return PublishResult(None, self._token(tb), prefix=t.id_prefix(part), first=first,
                                 count=count)
        self.stats.on_publish(t.name, len(got))
        return PublishResult(got, self._token(tb))

    def _after_publish(self, t: Topic) -> None:
        self._wake.update(t.groups.values())
        if t.delays:
            self._hint_at_wall(t.delays.next_due())
        if t.events:
            self._hint_at_wall(t.journal_due_us())

    # --- deadline hints --------------------------------------------------------------------

    def _hint_at_wall(self, when_us: int | None) -> None:
        if when_us is not None and (self._hint_wall is None or when_us < self._hint_wall):
            self._hint_wall = when_us

    def _hint_at_mono(self, when_us: int | None) -> None:
        if when_us is not None and (self._hint_mono is None or when_us < self._hint_mono):
            self._hint_mono = when_us

    def take_deadline_hint(self) -> tuple[int | None, int | None]:
        """``(mono_us, wall_us)``: the earliest timed work that calls since the last
        :meth:`tick` or hint may have created (a lease, a backoff, a delayed message, journal
        events waiting for their batch), or None for either clock. Clears the hint.

        A driver sleeps until the time :meth:`tick` returned; after other calls it asks this
        and wakes earlier if a hint is earlier. Nothing needs polling."""
        hint = (self._hint_mono, self._hint_wall)
        self._hint_mono = self._hint_wall = None
        return hint

    # --- groups ----------------------------------------------------------------------------

    def create_group(self, topic: str, group: str, settings: GroupSettings | None = None, *,
                     now_us: int) -> GroupInfo:
        """Create ``group`` (or return the existing one with the same settings). Every setting
        is checked here, before anything is created: bounds, filter, dead-letter topic name,
        and room for the group and, if it does not exist yet, its dead-letter topic. An
        existing group is joined as it is (its settings may predate a limit)."""
        if not isinstance(group, str):
            validate_group_name(group)  # raises
        if settings is not None and not isinstance(settings, GroupSettings):
            raise InvalidArgument("group settings must be a GroupSettings")
        t = self._topic(topic)
        g = t.groups.get(group)
        if g is not None:
            if settings is not None and g.settings != settings:
                raise GroupSettingsMismatch(
                    f"group {group!r} of {t.name!r} exists with other settings; use update_group")
            return g.info()
        validate_group_name(group)
        s = _settings(settings)
        if len(t.groups) >= MAX_GROUPS_PER_TOPIC:
            raise InvalidArgument(
                f"topic {t.name!r} has {len(t.groups)} consumer groups, the most allowed "
                f"({MAX_GROUPS_PER_TOPIC}); delete groups that are no longer used")
        self._check_dead_letter_topic(t.name, s, extra=0)
        g = GroupState(t.name, t.incarnation, group, s, t.logs, now_us=now_us)
        t.groups[group] = g
        g.drain_journal()  # the creation snapshot below covers it
        t.record_event(["gc", group, settings_out(s), g.snapshot()])
        tb = TokenBuilder()
        t.commit(now_us, tb)
        self._token(tb)
        return g.info()

    def update_group(self, topic: str, group: str, settings: GroupSettings, *, now_us: int,
                     mono_us: int) -> GroupInfo:
        if settings is None:
            raise InvalidArgument("update_group needs GroupSettings")
        _settings(settings)
        t = self._topic(topic)
        old = t.group(group)
        self._check_dead_letter_topic(t.name, settings, extra=0)
        t.drain_group(old)
        snap = old.snapshot()
        g = GroupState.restore(snap, [], t.name, t.incarnation, group, settings, t.logs, now_us=now_us)
        t.groups[group] = g
        for mid, (tt, gg) in list(self._members.items()):
            if gg is old:
                self._members[mid] = (tt, g)
        t.record_event(["gu", group, settings_out(settings), g.snapshot()])
        for mid, (_, gg) in self._members.items():
            if gg is g:  # members keep their ids; the restore released their leases
                g.add_member(mid, self._prefetch.get(mid, 100), mono_us=mono_us)
        self._wake.add(g)
        tb = TokenBuilder()
        t.commit(now_us, tb)
        self._token(tb)
        return g.info()

    def delete_group(self, topic: str, group: str, *, now_us: int) -> None:
        t = self._topic(topic)
        g = t.group(group)
        for mid in [m for m, (_, gg) in self._members.items() if gg is g]:
            del self._members[mid]
        del t.groups[group]
        self.stats.forget_group(t.name, group)
        t.record_event(["gd", group])
        tb = TokenBuilder()
        t.commit(now_us, tb)
        self._token(tb)

    def list_groups(self, topic: str) -> list[GroupInfo]:
        t = self._topic(topic)
        return [g.info() for _, g in sorted(t.groups.items())]

    def describe_group(self, topic: str, group: str) -> GroupInfo:
        return self._topic(topic).group(group).info()

    def subscribe(self, topic: str, group: str, settings: GroupSettings | None = None, *,
                  prefetch: int = 100, now_us: int, mono_us: int) -> str:
        """Join ``group`` (created with ``settings`` if new); returns a fresh member id.

        Everything is checked before anything is created: a bad setting creates neither the
        topic (when auto-created) nor the group."""
        check_prefetch(prefetch)
        if not isinstance(group, str):
            validate_group_name(group)  # raises
        known = self._by_name.get(topic)
        if known is None or self._closed:
            self._check_open()
            known = self._topics.get(topic_key(validate_topic_name(topic, derived=True)))
        if known is None or group not in known.groups:
            validate_group_name(group)
            s = _settings(settings)
            if known is None and self._auto_create:
                # Auto-created here: the group is new too, so its dead-letter topic needs
                # room beside it.
                validate_topic_name(topic)
                self._check_dead_letter_topic(topic, s, extra=1)
        t = self._topic_for_publish(topic, now_us)
        self.create_group(t.name, group, settings, now_us=now_us)
        g = t.groups[group]
        mid = f"{group}#{self._run}.{next(self._member_seq)}"
        g.add_member(mid, prefetch, mono_us=mono_us)
        self._members[mid] = (t, g)
        self._prefetch[mid] = prefetch
        self._finish(t, g, now_us)
        return mid

    def unsubscribe(self, member_id: str, *, now_us: int, mono_us: int) -> SyncToken:
        t, g = self._member(member_id)
        mark = self.stats.mark(g)
        g.remove_member(member_id, mono_us=mono_us)
        self.stats.on_failures(g, mark, "consumer_left")
        self._hint_at_mono(g.next_deadline(mono_us))
        del self._members[member_id]
        self._prefetch.pop(member_id, None)
        return self._finish(t, g, now_us)

    def _member(self, member_id: str) -> tuple[Topic, GroupState]:
        self._check_open()
        hit = self._members.get(member_id)
        if hit is None:
            raise UnknownMessage(f"member {member_id!r} is not subscribed (closed or broker restarted)")
        return hit

    def _finish(self, t: Topic, g: GroupState, now_us: int) -> SyncToken:
        """After a group operation: dead letters out, journal after them, wake members.

        The usual ack or fetch has no dead letters and no journal append due (events are
        batched, see ``Topic.commit``): then no token builder is made and the token is empty,
        as the builder would have built it.
        """
        tb: TokenBuilder | None = None
        if g._dead:  # g.has_dead_letters(), inlined: this runs after every ack
            tb = TokenBuilder()
            self._dead_letters(t, g, now_us, tb)
        t.drain_group(g)
        if t.commit_due(now_us):
            if tb is None:
                tb = TokenBuilder()
            t.commit(now_us, tb)
        elif t.events:
            due = t.journal_flushed_us + t.journal_interval_us  # journal_due_us(), inlined
            if self._hint_wall is None or due < self._hint_wall:
                self._hint_wall = due
        # A group already waiting in _wake needs no has_ready() (a loop over its partitions):
        # adding it again would change nothing.
        wake = self._wake
        if g not in wake and g.has_ready():
            wake.add(g)
        return EMPTY_TOKEN if tb is None else self._token(tb)

    def fetch(self, member_id: str, max_messages: int, *, now_us: int, mono_us: int) -> list[Delivery]:
        t, g = self._member(member_id)
        out = g.fetch(member_id, max_messages, now_us=now_us, mono_us=mono_us)
        if out:
            self.stats.on_fetch(g, len(out))
            lease_end = mono_us + g._ack_timeout_us
            if self._hint_mono is None or lease_end < self._hint_mono:
                self._hint_mono = lease_end
        self._finish(t, g, now_us)
        return out

    def ack(self, member_id: str, ids: Sequence[str], *, now_us: int, mono_us: int) -> SyncToken:
        hit = self._members.get(member_id)
        t, g = hit if hit is not None and not self._closed else self._member(member_id)
        g.ack(member_id, ids if type(ids) is list else list(ids))
        self.stats.on_ack(g, len(ids))
        return self._finish(t, g, now_us)

    def ack_ranges(self, member_id: str, ranges: Sequence[tuple[int, int, int]], *, now_us: int,
                   mono_us: int) -> SyncToken:
        """:meth:`ack` of the messages at ``(partition, first, last)`` offset ranges (inclusive)
        of the member's topic, without their ids (GroupState.ack_ranges)."""
        hit = self._members.get(member_id)
        t, g = hit if hit is not None and not self._closed else self._member(member_id)
        n = g.ack_ranges(member_id, ranges)
        self.stats.on_ack(g, n)
        return self._finish(t, g, now_us)

    def nack(self, member_id: str, ids: Sequence[str], delay: float | None, *, now_us: int,
             mono_us: int) -> SyncToken:
        delay = check_nack_delay(delay)
        t, g = self._member(member_id)
        mark = self.stats.mark(g)
        g.nack(member_id, list(ids), delay, mono_us=mono_us)
        self.stats.on_failures(g, mark, "nack", "nack")
        self._hint_at_mono(g.next_deadline(mono_us))
        return self._finish(t, g, now_us)

    def extend(self, member_id: str, ids: Sequence[str], seconds: float, *, now_us: int,
               mono_us: int) -> SyncToken:
        seconds = check_extend(seconds)
        t, g = self._member(member_id)
        g.extend(member_id, list(ids), seconds, mono_us=mono_us)
        return self._finish(t, g, now_us)

    def reject(self, member_id: str, ids: Sequence[str], reason: str, *, now_us: int,
               mono_us: int) -> SyncToken:
        reason = check_reason(reason)
        t, g = self._member(member_id)
        mark = self.stats.mark(g)
        g.reject(member_id, list(ids), reason)
        self.stats.on_failures(g, mark, "reject", "reject")
        return self._finish(t, g, now_us)

    def expire_head(self, topic: str, group: str, *, now_us: int) -> int:
        """Dead-letter the expired messages at the head of ``group``'s partitions now, not when
        a member's fetch comes to them (``GroupDelivering.expire_head``); how many."""
        t = self._topic(topic)
        g = t.group(group)
        n = g.expire_head(now_us)
        self._finish(t, g, now_us)
        return n

    def reset_group(self, topic: str, group: str, start: Any, *, now_us: int) -> SyncToken:
        check_start(start)
        t = self._topic(topic)
        g = t.group(group)
        g.reset(start, now_us=now_us)
        return self._finish(t, g, now_us)

    def wakeups(self) -> set[str]:
        """Members that may have new ready messages since the last call; clears the set.

        Lists the members of the woken groups that have credit now (one without credit
        cannot take a message; its next ack wakes its group again)."""
        groups = self._wake
        if not groups:
            return set()
        self._wake = set()
        members = self._members
        return {m for g in groups for m in g.members_with_credit() if m in members}

    # --- dead letters ----------------------------------------------------------------------

    def _check_dead_letter_topic(self, topic: str, s: GroupSettings, *, extra: int) -> None:
        """The group's dead-letter topic must not be the topic itself, and if it does not
        exist yet there must be room to create it (with ``extra`` topics about to be created
        first): a dead letter is never refused, so its topic must be creatable."""
        dlq = dead_letter_name(topic, s.dead_letter_topic)
        if topic_key(dlq) == topic_key(topic):
            raise InvalidArgument(
                f"dead_letter_topic {dlq!r} is the group's own topic; name another topic")
        if topic_key(dlq) not in self._topics:
            validate_topic_name(dlq, derived=True)
            self._require_room(extra + 1, dlq)

    def _dead_letters(self, t: Topic, g: GroupState, now_us: int, tb: TokenBuilder) -> None:
        letters: list[DeadLetter] = g.drain_dead_letters()
        if not letters:
            return
        try:
            ids = []
            for dl in letters:
                h = dl.record.headers
                ids.append(h[ID_HEADER] if h and ID_HEADER in h else
                           make_id(t.name, t.incarnation, dl.partition, dl.offset))
            dlq_name = dead_letter_name(t.name, g.settings.dead_letter_topic)
            dlq = self._topics.get(topic_key(dlq_name))
            if dlq is None:
                # Never refused for the topic count (the group's creation made sure there was
                # room then; topics created since may take the count past the limit).
                validate_topic_name(dlq_name, derived=True)
                dlq = self._create(dlq_name, msgspec.structs.replace(t.config, partitions=1,
                                                                     backlog_limit=None), now_us)
            recs = dead_letter_records(t.name, g.name, letters, ids, now_us,
                                       g.settings.dead_letter_routing_key)
            copies = dlq.publish(recs, now_us, tb, check=False)
        except BaseException:
            # Not written: the group hands them out again at its next call (they are done
            # for the group already, so dropping them here would lose them).
            g._dead[:0] = letters
            raise
        dlq.commit(now_us, tb)
        self._after_publish(dlq)
        self.stats.on_dead_letters(t.name, g.name, letters)
        # Where each copy went, journaled after the group's events that mark the messages
        # done (drained first): recovery counts them done only if the copy is there (J3).
        locs: list[int] = []
        for dl, mid in zip(letters, copies, strict=True):
            ref = parse_id(mid)
            if ref.partition >= 0:  # always: a dead letter is neither delayed nor deduplicated
                locs += (dl.partition, dl.offset, dl.delivery_count, ref.partition, ref.offset)
        t.drain_group(g)
        t.dead_lettered(g.name, dlq, locs)

    def redrive(self, topic: str, group: str, *, limit: int | None = None, now_us: int,
                max_batch: int = REDRIVE_BATCH) -> int:
        """Move ``group``'s dead letters back to their origin partitions (only that group sees
        them again); returns how many moved in this call: at most ``min(limit, max_batch)``.
        A caller that wants them all calls again until it gets less than ``max_batch``.
        Reads the dead-letter topic in bounded chunks and appends at least every 16 MiB, so
        memory stays bounded however long the dead-letter topic is. Progress is journaled:
        none is redriven twice (a crash between an append and its journal entry may redrive
        a message again: at-least-once)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidArgument(f"redrive limit must be None or an int >= 0, got {limit!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise InvalidArgument(f"redrive max_batch must be an int >= 1, got {max_batch!r}")
        t = self._topic(topic)
        g = t.group(group)
        dlq = dead_letter_topic(self._topics, t, g)
        if dlq is None:
            return 0
        cap = max_batch if limit is None else min(limit, max_batch)
        tb = TokenBuilder()
        moved = 0
        n = len(t.logs)
        for p, log in enumerate(dlq.logs):
            if moved >= cap:
                break
            key = cursor_key(group, dlq, p)
            start = redrive_cursor(t, key, log)
            skip = redriven_offsets(t, key)  # redriven by id already (redrive_ids)
            off = start
            by_part: dict[int, list[Record]] = {}
            held = 0
            while off < log.end_offset and moved < cap:
                views = log.read(off, max_records=1000)
                if not views:
                    break
                for view in views:
                    if moved >= cap:
                        break
                    if view.last_offset < off:
                        continue
                    for i, r in enumerate(view.records()):
                        o = view.base_offset + i
                        if o < off:
                            continue
                        if moved >= cap:
                            break
                        off = o + 1
                        org = origin_of(r)
                        if (org is None or topic_key(org[0]) != t.key or org[1] != group
                                or o in skip):
                            continue
                        part, rec = _redriven(r, group)
                        by_part.setdefault(part if 0 <= part < n else 0, []).append(rec)
                        held += len(rec.body)
                        moved += 1
                        if held >= REDRIVE_FLUSH_BYTES:
                            self._redrive_flush(t, by_part, key, off, now_us, tb)
                            by_part, held = {}, 0
            if by_part or off != start:
                self._redrive_flush(t, by_part, key, off, now_us, tb)
        # Journaled now, not batched: a crash after this call must not redrive them again.
        t.commit(now_us, tb, force=True)
        self._token(tb)
        self._after_publish(t)
        return moved

    def _redrive_flush(self, t: Topic, by_part: dict[int, list[Record]], key: tuple[str, str, int],
                       off: int, now_us: int, tb: TokenBuilder) -> None:
        """Append redriven records, then journal the cursor after them (J1)."""
        for part, recs in by_part.items():
            t.append(part, recs, now_us, tb)
        t.redrive[key] = off
        drop_redriven_below(t, key, off)
        t.record_event(["rd", key[0], key[1], key[2], off])

    def redrive_ids(self, topic: str, group: str, ids: Sequence[str], *,
                    now_us: int) -> list[TideMQError | None]:
        """Move the dead letters ``ids`` (their ids in the dead-letter topic, as the HTTP API's
        dead-letter listing gives them) of ``group`` back to their origin partitions, like
        :meth:`redrive`; returns one entry per id, in order: None (moved) or the error that
        left it where it was (UnknownMessage: not one of the group's dead letters, gone, or
        redriven already). At most :data:`REDRIVE_IDS_MAX` ids per call; an id given twice
        is moved once (the second gets the error).

        Never twice, also across crashes: the offsets are journaled (``"ri"``) right after
        the appends, and the cursor's redrive skips them until it passes them (see
        ``_deadletters``). As with :meth:`redrive`, a crash between an append and its journal
        entry may redrive a message again (at-least-once)."""
        if isinstance(ids, str) or not all(isinstance(i, str) for i in ids):
            raise InvalidArgument("redrive ids must be a list of dead-letter message ids")
        if len(ids) > REDRIVE_IDS_MAX:
            raise InvalidArgument(f"at most {REDRIVE_IDS_MAX} ids per redrive, got {len(ids)}; "
                                  "split them")
        t = self._topic(topic)
        g = t.group(group)
        dlq_name = dead_letter_name(t.name, g.settings.dead_letter_topic)
        dlq = self._topics.get(topic_key(dlq_name))
        out: list[TideMQError | None] = []
        if dlq is None or dlq is t:
            return [UnknownMessage(f"group {group!r} of topic {t.name!r} has no dead letters "
                                   f"(its dead-letter topic {dlq_name!r} does not exist)")
                    for _ in ids]
        n = len(t.logs)
        by_part: dict[int, list[Record]] = {}
        taken: dict[int, list[int]] = {}  # dead-letter partition -> offsets moved now
        for mid in ids:
            try:
                p, o, r = self._dead_letter_at(t, group, dlq, mid, taken)
            except UnknownMessage as exc:
                out.append(exc)
                continue
            part, rec = _redriven(r, group)
            by_part.setdefault(part if 0 <= part < n else 0, []).append(rec)
            taken.setdefault(p, []).append(o)
            out.append(None)
        if not taken:
            return out
        tb = TokenBuilder()
        for part, recs in by_part.items():
            t.append(part, recs, now_us, tb)
        for p, offs in taken.items():
            key = cursor_key(group, dlq, p)
            log = dlq.logs[p]
            t.record_event(["ri", *key, sorted(offs)])
            cursor = t.redrive.get(key, 0)
            mine = t.redriven.setdefault(key, set())
            mine.update(offs)
            # Compact: a run of redriven offsets at the cursor moves the cursor past it.
            base = nxt = max(cursor, log.start_offset)
            while nxt in mine:
                nxt += 1
            if nxt > base:
                t.redrive[key] = nxt
                drop_redriven_below(t, key, nxt)
                t.record_event(["rd", *key, nxt])
        t.commit(now_us, tb, force=True)
        self._token(tb)
        self._after_publish(t)
        return out

    def _dead_letter_at(self, t: Topic, group: str, dlq: Topic, mid: str,
                        taken: dict[int, list[int]]) -> tuple[int, int, Record]:
        """(dead-letter partition, offset, record) of the dead letter ``mid`` of ``group``, if
        it may be redriven now; else UnknownMessage saying why."""
        ref = parse_id(mid)
        if (topic_key(ref.topic) != dlq.key or ref.incarnation != dlq.incarnation
                or not 0 <= ref.partition < len(dlq.logs)):
            raise UnknownMessage(
                f"{mid!r} is not a dead letter of group {group!r} (its dead-letter topic is "
                f"{dlq.name!r}); use the ids the dead-letter listing gives")
        p, o = ref.partition, ref.offset
        log = dlq.logs[p]
        key = cursor_key(group, dlq, p)
        if o in redriven_offsets(t, key) or o in taken.get(p, ()):
            raise UnknownMessage(f"dead letter {mid!r} was redriven already")
        if not log.start_offset <= o < log.end_offset:
            raise UnknownMessage(f"dead letter {mid!r} is not there (removed by retention, or "
                                 "never written)")
        for view in log.read(o, max_records=1):
            if view.base_offset <= o <= view.last_offset:
                r = view.records()[o - view.base_offset]
                org = origin_of(r)
                if org is None or topic_key(org[0]) != t.key or org[1] != group:
                    break
                if o < t.redrive.get(key, 0):  # the cursor's redrive passed it
                    raise UnknownMessage(f"dead letter {mid!r} was redriven already")
                return p, o, r
        raise UnknownMessage(f"{mid!r} is not a dead letter of group {group!r} of topic "
                             f"{t.name!r}")

    # --- time ------------------------------------------------------------------------------

    def tick(self, *, now_us: int, mono_us: int) -> float | None:
        """Release due delays, expire leases / TTLs (dead letters out), expire dedup and producer
        entries, apply retention and snapshot now and then. Returns seconds until the next
        deadline (None: no topics; with topics at most ~1 s, for maintenance)."""
        self._check_open()
        nxt: float | None = None
        for t in list(self._topics.values()):
            tb = TokenBuilder()
            released = t.release_due(now_us, tb)
            if released:
                t.commit(now_us, tb)
                self._after_publish(t)
            due = t.delays.next_due()
            if due is not None:
                d = max(0.0, (due - now_us) / 1e6)
                nxt = d if nxt is None else min(nxt, d)
            for g in list(t.groups.values()):
                mark = self.stats.mark(g)
                gd = g.tick(now_us=now_us, mono_us=mono_us)
                self.stats.on_failures(g, mark, "lease_expired")
                self._dead_letters(t, g, now_us, tb)
                t.drain_group(g)
                if g.has_ready():
                    self._wake.add(g)
                if gd is not None:
                    nxt = gd if nxt is None else min(nxt, gd)
            t.commit(now_us, tb)
            self._token(tb)
            jd = t.journal_due(now_us)
            if jd is not None:
                nxt = jd if nxt is None else min(nxt, jd)
            if now_us - t.last_maintenance_us >= MAINTENANCE_EVERY_US:
                self._maintain(t, now_us)
            # Maintenance (retention, expiry, snapshots) needs a tick about once a second.
            m = max(0.0, (t.last_maintenance_us + MAINTENANCE_EVERY_US - now_us) / 1e6)
            nxt = m if nxt is None else min(nxt, m)
        return nxt

    def _maintain(self, t: Topic, now_us: int) -> None:
        t.last_maintenance_us = now_us
        t.dedup.expire(now_us)
        t.producers.expire(now_us, self._producer_idle_us)
        t.apply_retention(now_us)
        if not t.snapshot_in_flight and (
                t.journal.events_since_snapshot >= SNAPSHOT_EVERY_EVENTS
                or (t.journal.events_since_snapshot and now_us - t.last_snapshot_us >= SNAPSHOT_EVERY_US)):
            self._jobs.append(t.plan_snapshot(now_us))

    # --- introspection for tests and tools -------------------------------------------------

    def pending_delays(self, topic: str) -> int:
        return len(self._topic(topic).delays)



def _redriven(r: Record, group: str) -> tuple[int, Record]:
    """(origin partition, record to append) for a dead letter (a forged origin partition that
    is not a number: the first)."""
    try:
        return redriven_record(r, group)
    except ValueError:
        return redriven_record(msgspec.structs.replace(
            r, headers={**(r.headers or {}), H_PARTITION: "0"}), group)


def _storage_error(exc: OSError, what: str) -> TideMQError:
    """The typed error for an OSError of a catalogue or log operation."""
    if is_disk_full(exc):
        return DiskFull(f"{what}: the disk is full ({exc.strerror}); free space and try again")
    return StorageFailed(f"{what}: {exc}; check the data folder and its file system")


def _quietly(fn: Callable[[], object]) -> None:
    """Run a clean-up step whose failure must not hide the error being raised."""
    try:
        fn()
    except (OSError, TideMQError):
        pass


def _settings(settings: GroupSettings | None) -> GroupSettings:
    """The given settings (or the defaults), validated."""
    if settings is None:
        return GroupSettings()
    if not isinstance(settings, GroupSettings):
        raise InvalidArgument("group settings must be a GroupSettings")
    settings.validate()
    return settings
