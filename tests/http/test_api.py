"""The HTTP API's routes against an in-process server (no users): topics, publish, browse,
groups, receive and settle with receipts, dead letters, probes and errors."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import tidemq

from .conftest import serving

T = "/api/v1/topics"


def test_topics_crud_and_problem_json() -> None:
    async def main() -> None:
        async with serving() as (_, http):
            r = await http.put(f"{T}/orders", {"partitions": 2, "durability": "always"})
            assert r.status == 201, r
            assert r.json["config"]["durability"] == "always"
            assert [p["partition"] for p in r.json["partitions"]] == [0, 1]
            r = await http.put(f"{T}/orders", {"partitions": 3})
            assert r.status == 200 and len(r.json["partitions"]) == 3
            r = await http.put(f"{T}/orders", {"partitions": 1})
            assert r.status == 400 and r.json["title"] == "InvalidPartitionCount"
            r = await http.put(f"{T}/orders", {"durability": "never"})
            assert r.status == 409 and r.json["code"] == 21, r
            assert r.headers["Content-Type"].startswith("application/problem+json")
            r = await http.put(f"{T}/bad name!", {})
            assert r.status == 400 and r.json["title"] == "InvalidTopicName"
            r = await http.put(f"{T}/x", {"partitions": "many"})
            assert r.status == 400 and "partitions" in r.json["detail"]
            r = await http.put(f"{T}/x", {"partitons": 2})
            assert r.status == 400 and "partitons" in r.json["detail"]  # unknown field refused
            r = await http.call("PUT", f"{T}/x", raw=b"{not json")
            assert r.status == 400 and "not valid JSON" in r.json["detail"]
            # Not declared JSON (what a cross-site "simple" request would be): refused.
            r = await http.call("PUT", f"{T}/x", raw=b"{}", headers={"Content-Type": "text/plain"})
            assert r.status == 400 and "Content-Type: application/json" in r.json["detail"]
            assert (await http.get(f"{T}/x")).status == 404
            # Without users, only loopback names are accepted (no DNS rebinding).
            r = await http.get(T, headers={"Host": "evil.example:7680"})
            assert r.status == 403 and "Host" in r.json["detail"]
            assert (await http.get(T, headers={"Host": "localhost"})).status == 200
            assert (await http.get(T, headers={"Host": "[::1]:7680"})).status == 200
            r = await http.get(T)
            assert [t["name"] for t in r.json["topics"]] == ["orders"]
            r = await http.get(f"{T}/missing")
            assert r.status == 404 and r.json == {
                "type": "urn:tidemq:error:unknown-topic", "title": "UnknownTopic", "status": 404,
                "detail": "topic 'missing' does not exist; create it first", "code": 22,
                "instance": f"{T}/missing"}
            assert (await http.delete(f"{T}/orders")).status == 204
            assert (await http.get(f"{T}/orders")).status == 404
            r = await http.get("/api/v2/nothing")
            assert r.status == 404 and r.json["code"] == 10
            r = await http.call("PATCH", f"{T}/orders")
            assert r.status == 405 and "PATCH" in r.json["detail"]
    asyncio.run(main())


def test_publish_gives_a_result_per_message() -> None:
    async def main() -> None:
        async with serving() as (srv, http):
            await http.put(f"{T}/orders", {"partitions": 2})
            r = await http.post(f"{T}/orders/messages", {"messages": [
                {"payload": "hello", "key": "k", "headers": {"h": "v"}, "routing_key": "a.b"},
                {"payload": base64.b64encode(b"\xff\x00").decode(), "encoding": "base64"},
                {"payload": "x", "priority": 10},
                {"payload": "not base64!", "encoding": "base64"},
                {"payload": "y", "headers": {"x-tidemq-id": "forged"}},
                {"payload": "z", "delay": 60},
            ]})
            assert r.status == 200, r
            res = r.json["results"]
            assert r.json["published"] == 3 and r.json["failed"] == 3
            assert [("id" in x, "error" in x) for x in res] == [
                (True, False), (True, False), (False, True), (False, True), (False, True),
                (True, False)]
            assert res[2]["error"]["title"] == "InvalidArgument" and "priority" in \
                res[2]["error"]["detail"]
            assert "base64" in res[3]["error"]["detail"]
            assert "reserved" in res[4]["error"]["detail"]
            # The bare list works too; all failing: the first error as the answer's status.
            r = await http.post(f"{T}/orders/messages", [{"payload": "a" * 2_000_000}])
            assert r.status == 413 and r.json["title"] == "MessageTooLarge"
            assert r.json["results"][0]["error"]["code"] == 12
            r = await http.post(f"{T}/orders/messages", {"messages": []})
            assert r.status == 400
            assert srv.broker.describe_topic("orders").delayed == 1
            # Auto-creation as on the binary port.
            r = await http.post(f"{T}/fresh/messages", [{"payload": "p"}])
            assert r.status == 200 and r.json["results"][0]["id"].startswith("fresh@")
    asyncio.run(main())


def test_publish_under_always_answers_after_the_fsync(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(data=str(tmp_path / "d")) as (srv, http):
            await http.put(f"{T}/safe", {"durability": "always"})
            assert srv.driver is not None
            before = srv.driver.sync_times.snapshot()[2]
            r = await http.post(f"{T}/safe/messages", [{"payload": "p"}])
            assert r.status == 200
            # The group commit synced the partition before the answer.
            assert srv.driver.sync_times.snapshot()[2] > before
            log = srv.broker._topic("safe").logs[0]
            assert log.synced_position == log.end_offset == 1
    asyncio.run(main())


def test_body_limit() -> None:
    async def main() -> None:
        async with serving(http_max_body_bytes=4096) as (_, http):
            r = await http.post(f"{T}/t/messages", [{"payload": "a" * 10_000}])
            assert r.status == 413 and r.json["title"] == "FrameTooLarge", r
    asyncio.run(main())


def test_browse_has_no_side_effects() -> None:
    async def main() -> None:
        async with serving() as (srv, http):
            await http.put(f"{T}/log", {})
            await http.put(f"{T}/log/groups/g", {})
            await http.post(f"{T}/log/messages", [{"payload": f"m{i}"} for i in range(5)])
            t_mid = time.time()
            await asyncio.sleep(0.01)
            await http.post(f"{T}/log/messages", [{"payload": "late", "key": "k"}])
            before = (await http.get(f"{T}/log/groups/g")).json
            r = await http.get(f"{T}/log/partitions/0/messages?from_offset=1&limit=2")
            assert [m["payload"] for m in r.json["messages"]] == ["m1", "m2"]
            assert r.json["next_offset"] == 3
            r = await http.get(f"{T}/log/partitions/0/messages?from_time={t_mid}")
            assert [(m["offset"], m["payload"], m.get("key")) for m in r.json["messages"]] == [
                (5, "late", "k")]
            iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_mid - 60))
            r = await http.get(f"{T}/log/partitions/0/messages?from_time={iso}")
            assert len(r.json["messages"]) == 6
            for bad in ("from_offset=-1", "limit=0", "limit=5000", "from_time=yesterday",
                        "from_offset=1&from_time=5"):
                assert (await http.get(f"{T}/log/partitions/0/messages?{bad}")).status == 400
            assert (await http.get(f"{T}/log/partitions/1/messages")).status == 400
            after = (await http.get(f"{T}/log/groups/g")).json
            assert (after["lag"], after["in_flight"], after["delivered"]) == \
                (before["lag"], before["in_flight"], before["delivered"]) == (6, 0, 0)
    asyncio.run(main())


def test_groups_lag_in_messages_and_seconds() -> None:
    async def main() -> None:
        async with serving() as (srv, http):
            await http.put(f"{T}/orders", {"partitions": 2})
            r = await http.put(f"{T}/orders/groups/billing", {"ack_timeout": 5,
                                                              "max_deliveries": 2})
            assert r.status == 201 and r.json["settings"]["ack_timeout"] == 5
            assert r.json["lag"] == 0 and r.json["lag_seconds"] == 0
            await http.post(f"{T}/orders/messages", [{"payload": "a", "key": "1"},
                                                     {"payload": "b", "key": "2"}])
            await asyncio.sleep(0.2)
            g = (await http.get(f"{T}/orders/groups/billing")).json
            assert g["lag"] == 2 and g["in_flight"] == 0
            assert 0.2 <= g["lag_seconds"] < 5
            assert sum(p["lag"] for p in g["partitions"]) == 2
            assert {p["partition"] for p in g["partitions"]} == {0, 1}
            # Same settings: 200; new settings: an update.
            r = await http.put(f"{T}/orders/groups/billing", {"ack_timeout": 9,
                                                              "max_deliveries": 2})
            assert r.status == 200 and r.json["settings"]["ack_timeout"] == 9
            r = await http.put(f"{T}/orders/groups/other", {"mode": "sideways"})
            assert r.status == 400
            r = await http.get(f"{T}/orders/groups")
            assert [x["name"] for x in r.json["groups"]] == ["billing"]
            r = await http.post(f"{T}/orders/groups/billing/reset", {"start": "latest"})
            assert r.status == 200 and r.json["lag"] == 0
            assert (await http.delete(f"{T}/orders/groups/billing")).status == 204
            assert (await http.get(f"{T}/orders/groups/billing")).status == 404
    asyncio.run(main())


def test_receive_ack_nack_reject_extend_with_receipts() -> None:
    async def main() -> None:
        async with serving() as (srv, http):
            await http.put(f"{T}/jobs", {})
            await http.put(f"{T}/jobs/groups/w", {"ack_timeout": 30})
            await http.post(f"{T}/jobs/messages", [{"payload": f"j{i}"} for i in range(4)])
            G = f"{T}/jobs/groups/w"
            r = await http.post(f"{G}/receive", {"max_messages": 10})
            msgs = r.json["messages"]
            assert [m["payload"] for m in msgs] == ["j0", "j1", "j2", "j3"]
            assert all(m["delivery_count"] == 1 for m in msgs)
            assert all(time.time() + 25 < m["lease_expires_at"] < time.time() + 31 for m in msgs)
            rc = [m["receipt"] for m in msgs]
            r = await http.post(f"{G}/ack", {"receipts": [rc[0], rc[0] + "x", "!!", rc[0]]})
            res = r.json["results"]
            assert res[0]["ok"] is True
            assert res[1]["error"]["title"] == "InvalidArgument"  # forged
            assert res[2]["error"]["title"] == "InvalidArgument"
            assert "twice" in res[3]["error"]["detail"]
            assert r.json == {**r.json, "settled": 1, "failed": 3}
            r = await http.post(f"{G}/ack", {"receipts": [rc[0]]})
            assert r.json["results"][0]["error"]["title"] == "StaleLease"  # settled already
            r = await http.post(f"{G}/extend", {"receipts": [rc[1]], "seconds": 100})
            assert r.json["results"][0]["ok"]
            r = await http.post(f"{G}/nack", {"receipts": [rc[2]], "delay": 0})
            assert r.json["results"][0]["ok"]
            r = await http.post(f"{G}/reject", {"receipts": [rc[3]], "reason": "bad input"})
            assert r.json["results"][0]["ok"]
            # The nacked one comes again with a new receipt; its old receipt is stale.
            r = await http.post(f"{G}/receive", {"max_messages": 10, "wait": 2})
            again = r.json["messages"]
            assert [(m["payload"], m["delivery_count"]) for m in again] == [("j2", 2)]
            r = await http.post(f"{G}/ack", {"receipts": [rc[2]]})
            assert r.json["results"][0]["error"]["code"] == 25
            r = await http.post(f"{G}/ack", {"receipts": [again[0]["receipt"], rc[1]]})
            assert r.json["settled"] == 2
            g = (await http.get(G)).json
            assert (g["lag"], g["in_flight"], g["dead_lettered"]) == (0, 0, 1)
            # Bounds.
            assert (await http.post(f"{G}/receive", {"max_messages": 0})).status == 400
            assert (await http.post(f"{G}/receive", {"wait": 1000})).status == 400
            assert (await http.post(f"{G}/nack", {"receipts": [], "delay": -1})).status == 400
            assert (await http.post(f"{G}/extend", {"receipts": [],
                                                    "seconds": 10**9})).status == 400
            assert (await http.post(f"{T}/jobs/groups/none/receive", {})).status == 404
            assert (await http.post(f"{T}/nope/groups/w/receive", {})).status == 404
            # A receipt of another group is refused.
            await http.put(f"{T}/jobs/groups/other", {"start": "earliest"})
            await http.post(f"{T}/jobs/messages", [{"payload": "o"}])
            o = (await http.post(f"{T}/jobs/groups/other/receive", {})).json["messages"]
            r = await http.post(f"{G}/ack", {"receipts": [o[0]["receipt"]]})
            assert "not of this route" in r.json["results"][0]["error"]["detail"]
    asyncio.run(main())


def test_expired_lease_makes_the_receipt_stale() -> None:
    async def main() -> None:
        async with serving() as (srv, http):
            await http.put(f"{T}/q", {})
            await http.put(f"{T}/q/groups/g", {"ack_timeout": 0.2})
            await http.post(f"{T}/q/messages", [{"payload": "p"}])
            first = (await http.post(f"{T}/q/groups/g/receive", {})).json["messages"][0]
            await asyncio.sleep(0.4)
            r = await http.post(f"{T}/q/groups/g/ack", {"receipts": [first["receipt"]]})
            assert r.json["results"][0]["error"]["title"] == "StaleLease"
            assert "expired" in r.json["results"][0]["error"]["detail"]
            again = (await http.post(f"{T}/q/groups/g/receive", {"wait": 2})).json["messages"]
            assert again[0]["delivery_count"] == 2
            # An explicit lease overrides ack_timeout.
            await http.post(f"{T}/q/groups/g/nack", {"receipts": [again[0]["receipt"]],
                                                     "delay": 0})
            m = (await http.post(f"{T}/q/groups/g/receive",
                                 {"wait": 2, "lease": 60})).json["messages"][0]
            assert m["lease_expires_at"] > time.time() + 50
            await asyncio.sleep(0.4)
            r = await http.post(f"{T}/q/groups/g/ack", {"receipts": [m["receipt"]]})
            assert r.json["results"][0]["ok"], r
    asyncio.run(main())


def test_long_poll_wakes_on_publish_from_the_binary_port() -> None:
    async def main() -> None:
        async with serving(http_max_wait=5) as (srv, http):
            await http.put(f"{T}/lp", {})
            await http.put(f"{T}/lp/groups/g", {})

            async def later() -> None:
                await asyncio.sleep(0.3)
                async with tidemq.AsyncClient(f"tidemq://127.0.0.1:{srv.port}") as mq:
                    await mq.publish("lp", b"wake")

            task = asyncio.create_task(later())
            t0 = time.monotonic()
            r = await http.post(f"{T}/lp/groups/g/receive", {"wait": 4})
            took = time.monotonic() - t0
            await task
            assert [m["payload"] for m in r.json["messages"]] == ["wake"]
            assert 0.25 < took < 2.0
            t0 = time.monotonic()
            r = await http.post(f"{T}/lp/groups/g/receive", {"wait": 0.3})
            assert r.json["messages"] == [] and 0.25 < time.monotonic() - t0 < 2
    asyncio.run(main())


def test_http_leases_are_released_when_the_api_stops() -> None:
    async def main() -> None:
        async with serving() as (srv, http):
            await http.put(f"{T}/s", {})
            await http.put(f"{T}/s/groups/g", {"ack_timeout": 600})
            await http.post(f"{T}/s/messages", [{"payload": "p"}])
            r = await http.post(f"{T}/s/groups/g/receive", {})
            assert r.json["messages"]
            g = srv.broker.describe_group("s", "g")
            assert (g.in_flight, len(g.members)) == (1, 1)
            assert srv.http is not None
            await srv.http.stop()
            g = srv.broker.describe_group("s", "g")
            assert (g.in_flight, g.members, g.lag) == (0, [], 1)
            assert not srv.external_members
    asyncio.run(main())


def test_dead_letters_stats_list_and_redrive() -> None:
    async def main() -> None:
        async with serving() as (srv, http):
            G = f"{T}/orders/groups/billing"
            await http.put(f"{T}/orders", {})
            await http.put(G, {"max_deliveries": 1, "ack_timeout": 30})
            await http.put(f"{T}/orders/groups/audit", {})
            await http.post(f"{T}/orders/messages", [{"payload": f"m{i}"} for i in range(3)])
            got = (await http.post(f"{G}/receive", {"max_messages": 3})).json["messages"]
            await http.post(f"{G}/reject", {"receipts": [got[0]["receipt"]], "reason": "bad"})
            await http.post(f"{G}/nack", {"receipts": [m["receipt"] for m in got[1:]]})
            s = (await http.get(f"{G}/dlq")).json
            assert s["count"] == 3 and s["complete"] and s["dead_letter_topic"] == "orders.dlq"
            assert s["reasons"] == {"bad": 1, "max_deliveries": 2}
            assert 0 <= s["oldest_age_seconds"] < 5
            assert (await http.get(f"{T}/orders/groups/audit/dlq")).json["count"] == 0
            page = (await http.get(f"{G}/dlq/messages?limit=2")).json
            assert [(m["payload"], m["reason"], m["delivery_count"]) for m in page["messages"]] \
                == [("m0", "bad", 1), ("m1", "max_deliveries", 1)]
            assert page["messages"][0]["origin_id"] == got[0]["id"]
            rest = (await http.get(f"{G}/dlq/messages?after={page['next']}")).json
            assert [m["payload"] for m in rest["messages"]] == ["m2"] and rest["next"] is None
            assert (await http.get(f"{G}/dlq/messages?after=zz")).status == 400
            m1 = page["messages"][1]["id"]
            r = await http.post(f"{G}/dlq/redrive", {"ids": [m1, "x"]})
            assert r.status == 200, r
            assert (r.json["moved"], r.json["remaining"], r.json["complete"]) == (1, 2, True)
            assert r.json["results"][0] == {"id": m1, "ok": True}
            assert r.json["results"][1]["error"]["title"] == "UnknownMessage"
            r = await http.post(f"{G}/dlq/redrive", {"ids": [m1]})  # never twice
            assert r.json["moved"] == 0 and not r.json["results"][0]["ok"]
            assert "redriven already" in r.json["results"][0]["error"]["detail"]
            listed = (await http.get(f"{G}/dlq/messages")).json["messages"]
            assert [m["payload"] for m in listed] == ["m0", "m2"]
            r = await http.post(f"{G}/dlq/redrive", {"ids": [m1], "limit": 1})
            assert r.status == 400 and r.json["title"] == "InvalidArgument"
            r = await http.post(f"{G}/dlq/redrive", {"ids": ["x"] * 1001})
            assert r.status == 400 and "at most 1000" in r.json["detail"]
            r = await http.post(f"{G}/dlq/redrive", {"limit": 1})
            assert r.json == {"moved": 1, "remaining": 1, "complete": True}
            r = await http.post(f"{G}/dlq/redrive", {"rate": 1000})
            assert r.json == {"moved": 1, "remaining": 0, "complete": True}
            again = (await http.post(f"{G}/receive", {"max_messages": 3, "wait": 2})).json
            assert sorted(m["payload"] for m in again["messages"]) == ["m0", "m1", "m2"]
    asyncio.run(main())


def test_probes_stats_and_openapi(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(data=str(tmp_path / "d")) as (srv, http):
            assert (await http.get("/healthz")).json == {"status": "ok"}
            r = await http.get("/readyz")
            assert r.status == 200 and {c["name"] for c in r.json["checks"]} == {
                "storage", "listening", "disk"}
            s = (await http.get("/api/v1/stats")).json
            assert s["connections"]["http"] >= 1 and s["disk_free_bytes"] > 0
            doc = (await http.get("/api/v1/openapi.json")).json
            assert doc["openapi"] == "3.1.0" and f"{T}/{{topic}}/messages" in doc["paths"]
        async with serving(data=str(tmp_path / "d2"), ready_min_disk_free=1 << 62) as (_, http):
            r = await http.get("/readyz")
            assert r.status == 503 and not r.json["ready"]
            assert [c["name"] for c in r.json["checks"] if not c["ok"]] == ["disk"]
    asyncio.run(main())


def test_deleting_a_topic_ends_http_and_binary_consumers() -> None:
    async def main() -> None:
        async with serving() as (srv, http):
            await http.put(f"{T}/gone", {})
            await http.put(f"{T}/gone/groups/g", {})
            await http.post(f"{T}/gone/messages", [{"payload": "p"}])
            m = (await http.post(f"{T}/gone/groups/g/receive", {})).json["messages"][0]
            assert srv.external_members
            assert (await http.delete(f"{T}/gone")).status == 204
            assert not srv.external_members
            r = await http.post(f"{T}/gone/groups/g/ack", {"receipts": [m["receipt"]]})
            assert r.status == 404
            await http.put(f"{T}/gone", {})
            await http.put(f"{T}/gone/groups/g", {})
            await http.post(f"{T}/gone/messages", [{"payload": "new"}])
            r = await http.post(f"{T}/gone/groups/g/receive", {})
            assert [x["payload"] for x in r.json["messages"]] == ["new"]
    asyncio.run(main())
