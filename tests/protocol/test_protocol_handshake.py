"""Version negotiation picks the highest common version or fails with UnsupportedVersion."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemq import errors
from tidemq import protocol as p


def hello(versions: list[int], *, max_frame_size: int = 1 << 20, heartbeat_ms: int = 0) -> p.Hello:
    return p.Hello(request_id=1, versions=versions, client_id="c", max_frame_size=max_frame_size,
                   heartbeat_ms=heartbeat_ms)


@pytest.mark.parametrize(
    ("offered", "supported", "chosen"),
    [([1], [1], 1), ([1, 2, 3], [2, 3, 4], 3), ([5, 1], [1, 5], 5), ([3, 1], [1, 2], 1)],
)
def test_highest_common_version_wins(offered: list[int], supported: list[int], chosen: int) -> None:
    assert p.negotiate_version(offered, supported) == chosen


@settings(max_examples=100, deadline=None)
@given(offered=st.sets(st.integers(0, 20)), supported=st.sets(st.integers(0, 20), min_size=1))
def test_negotiation_matches_a_reference(offered: set[int], supported: set[int]) -> None:
    common = offered & supported
    if common:
        assert p.negotiate_version(offered, supported) == max(common)
    else:
        with pytest.raises(errors.UnsupportedVersion):
            p.negotiate_version(offered, supported)


def test_no_common_version_is_a_fatal_unsupported_version_error_frame() -> None:
    answer = p.accept_hello(hello([7, 8]), server_name="s", max_frame_size=1 << 20,
                            heartbeat_ms=1000)
    assert isinstance(answer, p.Error)
    assert answer.fatal and answer.request_id == 1
    exc = answer.to_exception()
    assert isinstance(exc, errors.UnsupportedVersion)
    assert "[7, 8]" in exc.message and "[1]" in exc.message


def test_accepted_hello_sets_the_session_terms() -> None:
    answer = p.accept_hello(hello([1], max_frame_size=1 << 20, heartbeat_ms=5000),
                            server_name="tide", max_frame_size=4 << 20, heartbeat_ms=2000)
    assert answer == p.HelloOk(request_id=1, version=p.PROTOCOL_VERSION, server_name="tide",
                               max_frame_size=1 << 20, heartbeat_ms=2000)


def test_client_frame_limit_below_the_floor_is_refused() -> None:
    answer = p.accept_hello(hello([1], max_frame_size=1000), server_name="s",
                            max_frame_size=1 << 20, heartbeat_ms=0)
    assert isinstance(answer, p.Error) and answer.code == errors.InvalidArgument.code


@pytest.mark.parametrize(("client", "server", "agreed"),
                         [(0, 0, 0), (0, 500, 500), (700, 0, 700), (700, 500, 500), (300, 500, 300)])
def test_heartbeat_is_the_shorter_non_zero_interval(client: int, server: int, agreed: int) -> None:
    assert p.negotiate_heartbeat(client, server) == agreed


def test_handshake_frames_round_trip_through_the_codec() -> None:
    client_out, server_in = hello([1], heartbeat_ms=1000), p.Decoder(p.MIN_MAX_FRAME_SIZE)
    server_in.feed(p.encode(client_out))
    received = server_in.next_frame()
    assert isinstance(received, p.Hello)
    answer = p.accept_hello(received, server_name="s", max_frame_size=1 << 22, heartbeat_ms=0)
    client_in = p.Decoder()
    client_in.feed(p.encode(answer))
    assert client_in.next_frame() == answer
