"""The broker core (public surface): ``Broker`` and the value types it speaks.

Deterministic and single-threaded by contract (time is passed in); see ``docs/architecture.md``.

Durable-state invariants, cited in the code as ``J<n>``:

(J1) State is never durable ahead of the data it describes: journal events are appended after
     their data, sync tokens list data logs before the journal, and a snapshot job syncs the
     logs up to what the snapshot describes before writing it (the topic's own, and the
     dead-letter partitions its dead letters went to).
(J2) Recovery clamps every piece of state to each log's end, so an offset is never reused for a
     different message.
(J3) Every journal record begins with the data logs' end offsets when it was appended; producer
     and dedup state, and releases of delayed messages, are rebuilt from the data after the last
     surviving record's ends (offsets, never timestamps), and what is rebuilt so is journaled
     again at once. So a record holding only producer and dedup events is left out of its
     write's sync token (the periodic sync covers it): an ``always`` publish waits for its
     data. A journaled release counts only if its copy is in its partition; a journaled
     dead-lettering (``"dl"``: where each copy went) counts only if the record there
     is that message's dead letter, else the message is pending again (a deleted dead-letter
     topic took its dead letters with it: they count).
(J1') An ``always`` token syncs every data log with unsynced appends before its journals: writes
     that handed out no token (a tick's releases, a fetch's dead letters) may be described by
     the journal record it makes durable.
(J4) The broker performs no snapshot I/O itself: ``Topic.plan_snapshot`` journals the pending
     events and encodes the state, the driver runs the returned job off its loop, and the
     journal is trimmed only after the snapshot is durable; a failed job loses nothing.
"""

from __future__ import annotations

from ._broker import Broker, PublishResult
from ._group import DeadLetter
from ._hashing import partition_for_key
from ._ids import DELAY_PARTITION, MessageRef, make_id, parse_id
from ._sync import SyncToken
from ._types import (
    Backoff,
    Delivery,
    GroupInfo,
    GroupPartitionInfo,
    GroupSettings,
    PartitionInfo,
    TopicConfig,
    TopicInfo,
)

__all__ = [
    "Broker",
    "PublishResult",
    "SyncToken",
    "DeadLetter",
    "Backoff",
    "TopicConfig",
    "GroupSettings",
    "Delivery",
    "PartitionInfo",
    "GroupPartitionInfo",
    "TopicInfo",
    "GroupInfo",
    "MessageRef",
    "DELAY_PARTITION",
    "make_id",
    "parse_id",
    "partition_for_key",
]
