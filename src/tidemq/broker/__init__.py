"""The broker core (public surface): ``Broker`` and the value types it speaks.

Deterministic and single-threaded by contract (time is passed in); see ``docs/architecture.md``.
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
