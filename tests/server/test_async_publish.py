"""AsyncClient's per-message publish over tidemq://: the producer's future is awaited directly."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

import tidemq
from tidemq import errors

from .conftest import running_server


def test_pipelined_single_publishes_get_their_own_ids_in_order(tmp_path: Path) -> None:
    async def main(url: str) -> None:
        async with tidemq.AsyncClient(url) as mq:
            await mq.create_topic("pipe", partitions=3)
            await mq.publish("pipe", b"warm-up")  # metadata known: the fast path from here on
            sent = [(f"k{i % 7}", f"{i}".encode()) for i in range(700)]
            ids = await asyncio.gather(*[mq.publish("pipe", body, key=key) for key, body in sent])
            assert len(set(ids)) == len(ids) == 700
            with pytest.raises(errors.InvalidArgument):
                mq.publish("pipe", b"x", priority=11)  # bad input raises at the call
            sub = await mq.subscribe("pipe", "g", mode="ordered")
            per_key: dict[bytes, list[int]] = defaultdict(list)
            got: dict[str, bytes] = {}
            while len(got) < 701:
                batch = await sub.receive(max_messages=500, timeout=2.0)
                assert batch, "messages missing"
                for m in batch:
                    got[m.id] = m.body
                    if m.key is not None:
                        per_key[m.key].append(int(m.body))
                await sub.ack(batch)
            assert all(got[i] == body for i, (_, body) in zip(ids, sent, strict=True))
            assert all(seq == sorted(seq) for seq in per_key.values())

    with running_server(tmp_path / "d") as url:
        asyncio.run(main(url))
