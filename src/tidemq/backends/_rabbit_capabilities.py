"""What each SPEC feature is on the ``amqp://`` backend (RabbitMQ): native, emulated, unsupported.

The keys are the ``nats://`` table's (``_capabilities``), so a conformance test can look any
feature up on any backend; ``docs/backends.md`` has the same table. Using an unsupported feature
raises :class:`~tidemq.errors.Unsupported` naming the feature, the backend and the server version
(at ``create_topic``, ``subscribe`` or ``publish``).
"""

from __future__ import annotations

from typing import Final

from ._capabilities import Capability, parse_version

__all__ = ["amqp_capabilities", "AMQP_MIN_VERSION"]

# Quorum queues with x-delivery-limit, at-least-once dead-lettering and message TTL: 3.10.
AMQP_MIN_VERSION: Final = (3, 10, 0)


def N(how: str) -> Capability:  # noqa: N802  (reads as a table)
    return Capability("native", how)


def E(how: str) -> Capability:  # noqa: N802
    return Capability("emulated", how)


def U(how: str) -> Capability:  # noqa: N802
    return Capability("unsupported", how)


def amqp_capabilities(server_version: str) -> dict[str, Capability]:
    """The ``amqp://`` backend's capability table for a RabbitMQ server version.

    The backend uses only what RabbitMQ 3.10 offers without plugins; servers older than 3.10
    support nothing (no at-least-once dead-lettering, no quorum-queue message TTL). Features of
    newer servers that would change an entry are named in ``how`` but not used.
    """
    v = parse_version(server_version)
    if v < AMQP_MIN_VERSION:
        why = (f"RabbitMQ {server_version} is older than 3.10, the oldest the amqp:// backend "
               "runs on (quorum queues with message TTL and at-least-once dead-lettering)")
        return {name: Capability("unsupported", why) for name in _TABLE}
    table = dict(_TABLE)
    if v >= (3, 12, 0):
        table["lease"] = E(table["lease"].how + " (this server has the per-queue "
                           "x-consumer-timeout, which the backend does not use yet)")
    return table


_TABLE: Final[dict[str, Capability]] = {
    "partitions": E("one topic exchange per topic; the publisher puts the partition number as "
                    "the first word of the routing key (p.<routing key>) and a group has one "
                    "quorum queue per partition bound with p.<pattern>. Offsets are NOT log "
                    "positions: RabbitMQ queues have none, so a message's offset is a unique "
                    "publish number (client id and counter), increasing per publisher only; "
                    "describe_topic reports 0 for every start/end offset"),
    "key_partitioning": N("xxh3_64(key) mod partitions, as SPEC §2 (the project's "
                          "partitioner); keyless publishes go round-robin per call"),
    "key_ordering": N("FIFO per partition: one queue per group and partition, publishes in "
                      "order on one channel with publisher confirms"),
    "batch_publish": E("each message is published on one channel, pipelined, and the batch "
                       "returns when every confirm arrived; a batch is NOT atomic (a failure "
                       "part-way leaves the earlier messages stored)"),
    "priority": U("quorum queues refuse x-max-priority (checked: RabbitMQ 3.10 answers "
                  "PRECONDITION_FAILED 'invalid arg x-max-priority'), and classic mirrored "
                  "queues are deprecated; publishing priority > 0 raises Unsupported "
                  "(connect option ignore_priority=True stores it and delivers in FIFO order)"),
    "delay": E("no delayed-message plugin: the message waits in a quorum queue "
               "P.wait.<ms>.<target> (x-message-ttl = the delay rounded UP to 3 significant "
               "digits, x-expires so unused ones go) that dead-letters it at-least-once to the "
               "topic exchange with its routing key. Cost: one extra quorum queue per distinct "
               "delay level and one extra write per message; a member that still receives it "
               "early (clock skew) waits it out again"),
    "ttl": E("native for immediate messages (AMQP expiration: each group queue that still "
             "holds it dead-letters it with reason 'expired', as SPEC says); a delayed message "
             "loses expiration on its dead-letter hop, so its TTL (counted from deliver_at) is "
             "also checked by the member, which dead-letters it. Cost of that path: the expired "
             "message is transferred once per group"),
    "dead_letter_routing_key": E("the member publishes the group's dead letters under that "
                                 "routing key, and the group queues' x-dead-letter-routing-key "
                                 "gives RabbitMQ's own (x-delivery-limit) dead letters the "
                                 "same; update_group changing it raises Unsupported"),
    "group_ttl": E("a group's message_ttl is checked by the member as a message's own TTL "
                   "is (the shorter counts): it dead-letters what expired when it receives it "
                   "(not x-message-ttl: a queue's arguments cannot change when the group's "
                   "settings do). Nothing expires at the head of a group without members"),
    "dedup": U("RabbitMQ has no publish deduplication without a plugin; a publish with "
               "dedup_id raises Unsupported"),
    "idempotent_producer": U("AMQP 0-9-1 has no producer ids: a publish whose confirm was lost "
                             "with the connection raises ConnectionLost and is not retried "
                             "(retrying it may store it twice)"),
    "exactly_once_producer": U("no transactions across quorum queues"),
    "durability_always": N("publisher confirms of quorum queues come after the message is "
                           "fsynced on a majority of the queue's replicas"),
    "durability_interval": E("accepted: quorum queues confirm after fsync anyway (stronger "
                             "than asked, and slower than TideMQ's 100 ms group commit)"),
    "retention_log": N("log_retention=True: a stream queue P.T.I.log bound with '#' keeps "
                       "every message of the topic for retention (x-max-age) / "
                       "retention_bytes (x-max-length-bytes), whatever the groups did. Cost: "
                       "every message is written once more, to the stream"),
    "retention_group_veto": E("queue semantics: each group's queue keeps a message until the "
                              "group settles it. A message no group's binding takes (published "
                              "before any group, or matching no group's filter) goes through "
                              "the topic exchange's alternate exchange to the quorum queue "
                              "P.T.I.unrouted, kept for the topic's retention / "
                              "retention_bytes (x-message-ttl, x-max-length-bytes; forever by "
                              "default); the first group created with start='earliest' whose "
                              "filter matches it takes it (moved, confirmed, then acked). So "
                              "'earliest' means: what no earlier group took, then everything "
                              "from the group's creation; a message taken by one group is not "
                              "offered to a group created later"),
    "backlog_limit": U("x-max-length counts each group queue separately and only with "
                       "x-overflow reject-publish, which makes a publish fail after some "
                       "groups stored it; not offered"),
    "mode_shared": N("one quorum queue per group and partition, competing consumers; prefetch "
                     "is split over the partition consumers (quorum queues have no global "
                     "QoS): ceil(prefetch / partitions) each"),
    "mode_ordered": E("single-active-consumer quorum queue per partition: the server gives a "
                      "partition to one member at a time and moves it when that member leaves "
                      "(no fair-share rebalance: the first member owns every partition until "
                      "it leaves). Head-of-line on nack and lease expiry is kept by the member: "
                      "the message and every later one it holds of that partition are handed "
                      "out again, in order, after the delay, without returning them to the "
                      "server. Cost: a message held longer than the server's consumer_timeout "
                      "(30 min by default) closes the member's channel"),
    "mode_key_ordered": E("as ordered (one owner per partition): FIFO and head-of-line per key "
                          "hold, but keys of one partition are not processed in parallel"),
    "lease": E("RabbitMQ has only the server-wide consumer_timeout, so the member keeps "
               "ack_timeout itself: when it runs out the member returns the message "
               "(basic.nack requeue in shared groups; ordered groups redeliver locally). A "
               "crashed member's connection closes and the server requeues at once; a hung "
               "process (event loop blocked) holds its messages until the AMQP heartbeat or "
               "consumer_timeout closes its connection"),
    "extend": E("the member moves its own lease deadline; nothing is sent to the server"),
    "nack_delay": E("delay 0: basic.nack requeue (native); delay > 0 in shared groups: a copy "
                    "with the delivery count goes through a wait queue P.wait.<ms>.<group "
                    "queue> (TTL, dead-letters at-least-once back to the group's queue only), "
                    "confirmed, then the original is acked. Cost: one wait queue per delay "
                    "level and group queue, and the message loses its place in the queue. "
                    "Ordered groups wait in the member (head-of-line)"),
    "delivery_count": N("x-delivery-count of quorum queues, plus the count a delayed copy "
                        "carries, plus the member's own local redeliveries (ordered groups)"),
    "max_deliveries_dlq": E("the member dead-letters a message delivered more than "
                            "max_deliveries times (or nacked on its last one): it publishes "
                            "the dead letter with SPEC's x-tidemq-origin-* headers, waits for "
                            "the confirm, then acks the original. Backstop for the crash "
                            "window: the queue's x-delivery-limit = max_deliveries with "
                            "x-dead-letter-strategy at-least-once; such a dead letter (and one "
                            "expired by TTL) gets the SPEC headers from x-death when read, "
                            "with delivery count = max_deliveries"),
    "reject": E("as max deliveries: dead letter published with the reason, then ack (AMQP's "
                "basic.reject cannot carry a reason)"),
    "redrive": N("every group's dead letters also go (fanout dead-letter exchange) to a quorum "
                 "queue of its own, P.T.I.G.dead; redrive moves them (basic.get, publish to the "
                 "origin partition's queue of that group only, confirm, ack). Cost: a copy of "
                 "each dead letter is kept there until redriven or the group deleted"),
    "routing_filter_exact": N("topic-exchange bindings: pattern x on partition p is binding "
                              "p.x (a one-partition topic binds *.x, so that dead letters of "
                              "any origin partition reach it)"),
    "routing_filter_multi": N("several patterns are several bindings of the group's queues"),
    "header_filter": E("client-side with the broker's filter compiler (a headers exchange "
                       "only matches equal values); rejected messages are acked. Cost: every "
                       "message the routing patterns pass is transferred to the group"),
    "replay_offset": U("offsets are publish numbers, not log positions (RabbitMQ does not "
                       "return a stream offset to the publisher): start='earliest', 'latest' "
                       "or a time only"),
    "replay_time": E("log_retention topics only: a new group with start={'timestamp': t} "
                     "copies the log stream from t (from an offset found by bisecting the "
                     "stream on publish times, a second early, then exactly by the "
                     "message's publish time: RabbitMQ's own clock is not read) up to a "
                     "marker appended after its bindings, into its queues; with "
                     "start='earliest' it copies the whole log. Cost: one read and one "
                     "write per copied message while subscribe waits; a message published "
                     "during the copy may come twice. Other topics: Unsupported"),
    "reset_group": E("to 'latest': queue.purge of the group's queues (messages members "
                     "hold stay theirs until settled); on log_retention topics also to "
                     "'earliest' or a time: purge, then copy from the log stream as a new "
                     "group does. By offset, or earliest / a time on other topics: "
                     "Unsupported (a queue cannot be rewound)"),
    "update_group": E("settings stored in the P.meta stream; a new routing filter binds the "
                      "new patterns before unbinding the old ones; ack_timeout and backoff "
                      "apply to members at once; a change of mode, max_deliveries or "
                      "dead_letter_topic (queue arguments RabbitMQ cannot change) raises "
                      "Unsupported"),
    "set_partitions": E("every group gets quorum queues for the new partitions, bound, "
                        "before the topic record says the new count (so no publisher routes "
                        "to a partition without them); a one-partition topic's queues are "
                        "rebound from *.x to 0.x first; members consume the new queues at "
                        "their next receive; keys remap from then on (SPEC §2). A topic that "
                        "is some group's dead-letter topic cannot grow (Unsupported): dead "
                        "letters keep their origin partition's routing word"),
    "stale_lease_error": E("the member knows when it returned a message at the end of its "
                           "lease; a later ack of it raises StaleLease and changes nothing"),
    "ack_confirmation": E("ack() returns once the ack is queued on the member's channel, as "
                          "over tidemq://. "
                          "AMQP acks have no answer: flush() sends a synchronous basic.qos on "
                          "the member's channel after its acks, so the channel has processed "
                          "them (the quorum queue applies them through Raft after that). A "
                          "batch of acks is one basic.ack(multiple) when no other message up "
                          "to its last tag is held, buffered or being settled"),
}
