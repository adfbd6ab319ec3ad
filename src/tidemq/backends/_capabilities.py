"""What each SPEC feature is on the ``nats://`` backend: native, emulated, or unsupported.

The same table is in ``docs/backends.md``. "Emulated" says how and at what cost; "unsupported"
says why, and using such a feature raises :class:`~tidemq.errors.Unsupported` naming the feature,
the backend and the server version (at ``create_topic``, ``subscribe`` or ``publish``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["Capability", "capabilities", "parse_version", "MIN_VERSION"]

Support = Literal["native", "emulated", "unsupported"]
MIN_VERSION: Final = (2, 9, 0)


@dataclass(frozen=True, slots=True)
class Capability:
    """One feature on one backend and server version. ``how``: how it maps (native), how it is
    emulated and what that costs, or why it is unsupported."""

    support: Support
    how: str


def parse_version(version: str) -> tuple[int, int, int]:
    """``"2.9.10"`` (or ``"v2.10.0-beta"``) as a tuple; unknown parts are 0."""
    core = version.lstrip("v").split("-")[0].split("+")[0]
    parts = [int(p) if p.isdigit() else 0 for p in core.split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def capabilities(server_version: str) -> dict[str, Capability]:
    """The ``nats://`` backend's capability table for a nats-server version.

    The backend uses only what 2.9 offers and reads every setting back, so the table is the same
    for every server from 2.9 on; newer servers' features that would make an emulation native
    are named in ``how`` but not used. Servers older than 2.9 support nothing.
    """
    v = parse_version(server_version)
    if v < MIN_VERSION:
        why = (f"nats-server {server_version} is older than 2.9, the oldest the nats:// "
               "backend runs on (NAK with delay, durable pull consumers, stream info subject "
               "filters)")
        return {name: Capability("unsupported", why) for name in _TABLE}
    table = dict(_TABLE)
    if v >= (2, 10, 0):
        table["routing_filter_multi"] = Capability(
            "emulated", table["routing_filter_multi"].how + " (this server has filter_subjects, "
            "which the backend does not use yet)")
    return table


def N(how: str) -> Capability:  # noqa: N802  (reads as a table)
    return Capability("native", how)


def E(how: str) -> Capability:  # noqa: N802
    return Capability("emulated", how)


def U(how: str) -> Capability:  # noqa: N802
    return Capability("unsupported", how)


_TABLE: Final[dict[str, Capability]] = {
    "partitions": N("one stream per partition, P_T_I_p, subjects P.T.I.p.<routing words>.~ "
                    "(names escaped); offsets are stream sequence - 1"),
    "key_partitioning": N("xxh3_64(key) mod partitions, as SPEC §2 (the project's "
                          "partitioner); keyless publishes go round-robin per call"),
    "key_ordering": N("FIFO per partition: one stream per partition, publishes in order on one "
                      "connection"),
    "batch_publish": E("each message is published and confirmed on its own, pipelined; a "
                       "batch is NOT atomic: a failure part-way leaves the earlier messages "
                       "stored (atomic batches need nats-server 2.12)"),
    "priority": U("JetStream delivers in stream order and has no priorities; publishing "
                  "priority > 0 raises Unsupported (connect option ignore_priority=True stores "
                  "it and delivers in FIFO order)"),
    "delay": E("the message is stored at once with its due time in a header; a group member "
               "that receives it early NAKs it with the remaining delay. Cost: one early "
               "delivery per group (delivery_count leaves it out when the member saw it "
               "early). In ordered groups the NAKed message keeps the partition's one "
               "in-flight slot, so later messages wait in line as SPEC says. Delays are "
               "bounded by max_age retention"),
    "ttl": E("expiry time in a header; a member that receives an expired message dead-letters "
             "it with reason 'expired' (each group that had not acked it), as SPEC says. Cost: "
             "the expired message is still transferred once per group"),
    "dead_letter_routing_key": E("the member publishes the group's dead letters under that "
                                 "routing key"),
    "group_ttl": E("a group's message_ttl is checked by the member as a message's own TTL "
                   "is (the shorter counts): it dead-letters what expired when it receives it. "
                   "Nothing expires at the head of a group without members"),
    "dedup": N("Nats-Msg-Id with the stream's duplicate_window = dedup_window; a keyless "
               "message with a dedup_id is partitioned by it, so retries meet in one stream. "
               "Scope is the partition: the same dedup_id with different keys is stored twice"),
    "idempotent_producer": E("every message without a dedup_id gets Nats-Msg-Id "
                             "<producer>:<n>, and a publish that got no answer is retried with "
                             "the same id: stored once within the duplicate window (2 min when "
                             "dedup_window is 0). Cost: the server keeps those ids for the "
                             "window"),
    "exactly_once_producer": U("no transactions in JetStream; idempotent retries only"),
    "durability_always": U("nats-server 2.9 has no per-stream fsync; confirmation means stored "
                           "by the stream leader and, with replicas > 1, a quorum. Use "
                           "replicas=3"),
    "durability_interval": E("accepted: JetStream's own durability (file store, the server's "
                             "sync interval, replication) stands in for TideMQ's 100 ms fsync"),
    "retention_log": N("max_age / max_bytes with discard old, when log_retention=True"),
    "retention_group_veto": U("a limits stream cannot keep messages some group still needs "
                              "while dropping others by age; set log_retention=True"),
    "backlog_limit": U("JetStream limits count stored messages, not undelivered ones"),
    "mode_shared": N("durable pull consumer per group and partition, shared by its members"),
    "mode_ordered": E("one owner per partition: members register in the P_owners bucket "
                      "(TTL owner_ttl) and claim partitions by create-if-absent up to their "
                      "fair share, refreshing every owner_ttl/3; the consumer has "
                      "max_ack_pending=1, so the server itself keeps strict FIFO and "
                      "head-of-line on nack and lease expiry. Cost: one message in flight "
                      "per partition. On a crash the owner's claim expires after owner_ttl "
                      "and its one in-flight message after ack_timeout"),
    "mode_key_ordered": E("as ordered (one message in flight per partition): FIFO and "
                          "head-of-line per key hold, but keys of one partition are not "
                          "processed in parallel, and keyless messages are serialised too"),
    "lease": N("AckWait = ack_timeout"),
    "extend": N("in-progress (+WPI) renews the lease to ack_timeout; a longer extension is "
                "kept alive by repeated +WPI from the member"),
    "nack_delay": N("NAK with delay; delay=None uses the group's backoff"),
    "delivery_count": N("from the message metadata ($JS.ACK subject). nats-server 2.9.10 "
                        "sometimes reports 1 again for a redelivery after a NAK with delay "
                        "(seen in the tests); the member keeps the count of messages it nacked "
                        "as a floor, so an undercount (and a later dead letter) can only "
                        "happen when another member gets the redelivery"),
    "max_deliveries_dlq": E("JetStream only emits an advisory, so the consumer has "
                            "max_deliver=-1 and the member counts deliveries from the message "
                            "metadata: past max_deliveries (or on nack of the last one) it "
                            "publishes the dead letter with SPEC's x-tidemq-origin-* headers "
                            "to the dead-letter topic, waits for its ack, then TERMs the "
                            "original. Crash window: between the two the message is redelivered "
                            "and dead-lettered again; the dead letter's Nats-Msg-Id makes the "
                            "second one a duplicate within the dead-letter topic's duplicate "
                            "window, so a duplicate dead letter needs the crash plus a "
                            "redelivery later than that window"),
    "reject": E("as max deliveries: dead letter published, then TERM"),
    "redrive": E("reads the dead-letter topic from the group's cursor (in the P_meta bucket), "
                 "appends each of the group's dead letters to its origin partition with "
                 "x-tidemq-group (other groups skip it client-side) and an idempotent "
                 "Nats-Msg-Id, then stores the cursor. Cost: one read per dead letter; a crash "
                 "between append and cursor redrives again, deduplicated within the window"),
    "routing_filter_exact": N("one pattern whose '#' is only the last word (or none) is the "
                              "consumer's filter_subject: '*' is '*', a final '#' is '>'; an "
                              "exact key ({'exact': k}) is its own subject"),
    "routing_filter_multi": E("several patterns, or '#' before the last word: the consumer "
                              "reads the whole partition and the member acks what the filter "
                              "rejects. Cost: every message is transferred to the group"),
    "header_filter": E("client-side with the broker's filter compiler; rejected messages are "
                       "acked. Cost: every message is transferred to the group"),
    "replay_offset": N("deliver_policy by_start_sequence = offset + 1"),
    "replay_time": N("deliver_policy by_start_time, by the server's clock (JetStream stamps "
                     "each message as it stores it; a delivery's timestamp_us is that stamp)"),
    "reset_group": E("the group's consumers are deleted and created again at the new start; "
                     "messages in flight are delivered again"),
    "update_group": E("settings stored in P_meta; ack_timeout is updated on the consumers "
                      "(read back); a change of mode or routing filter recreates them at the "
                      "group's ack floor"),
    "set_partitions": N("new partition streams and consumers; members pick them up within "
                        "owner_ttl/3; keys remap from then on (SPEC §2)"),
    "stale_lease_error": U("JetStream does not tell a member that its expired delivery was "
                           "given to another member; a late ack is sent and applied if the "
                           "message is still pending. A redelivery that reaches the member "
                           "that acked it is acked again and not handed out; one that reaches "
                           "another member is delivered there (at-least-once)"),
    "ack_confirmation": E("ack() sends the ack and returns, as over tidemq://; "
                          "flush() waits for the server's answer to each ack (double ack, "
                          "+ACK with a reply). nats-server answers before a clustered "
                          "consumer has replicated the ack, so a kill -9 of the consumer "
                          "leader right after may bring an acked message back, as SPEC §6 "
                          "allows under durability 'interval'"),
}
