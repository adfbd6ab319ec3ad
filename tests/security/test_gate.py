"""The gate: each mechanism, the failure limiter, reloading the file, sessions' validity and
permissions."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tidemq.errors import AuthenticationFailed, InvalidArgument, PermissionDenied, Unsupported
from tidemq.security import (
    FAILURE_DELAY_S,
    MECHANISMS,
    AuthExchange,
    FailureLimiter,
    Gate,
    Principal,
    ScramClient,
    UserDB,
    load_users,
    save_users,
)
from tidemq.security._scram import MIN_ITERATIONS

NOW = 1_000_000.0
FAILED = "authentication failed: unknown user or wrong password"


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users.json"
    db = UserDB()
    db.add_user("alice", "wonderland", iterations=MIN_ITERATIONS)
    db.add_user("gw-01.example.com", None)
    db.grant("allow", "alice", "publish", "topic:orders")
    save_users(path, db)
    return path


def edit(path: Path, change: Callable[[UserDB], object]) -> None:
    db = load_users(path)
    change(db)
    save_users(path, db)


def start(gate: Gate, mechanism: str | None, data: bytes | None, *, addr: str = "10.0.0.1",
          loopback: bool = False, tls: bool = True, names: tuple[str, ...] = (),
          now: float = NOW) -> AuthExchange:
    return gate.start(mechanism, data, peer_addr=addr, loopback=loopback, tls=tls,
                      peer_cert_names=names, now_s=now)


def scram_login(gate: Gate, user: str, password: str, *, addr: str = "10.0.0.1",
                now: float = NOW) -> AuthExchange:
    client = ScramClient(user, password)
    ex = start(gate, "SCRAM-SHA-256", client.first(), addr=addr, tls=False, now=now)
    assert ex.principal is None and ex.challenge is not None
    ex.respond(client.final(ex.challenge), now)
    assert ex.challenge is None and ex.server_data is not None
    client.verify(ex.server_data)
    return ex


def test_constants() -> None:
    assert MECHANISMS == ("SCRAM-SHA-256", "TOKEN", "EXTERNAL")
    assert FAILURE_DELAY_S == 0.1


def test_missing_users_file_is_created(tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    gate = Gate(str(path), now_s=NOW)
    assert path.exists() and (os.stat(path).st_mode & 0o777) == 0o600
    assert gate.db.users() == []


def test_malformed_file_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text("{")
    with pytest.raises(InvalidArgument, match="users.json"):
        Gate(str(path), now_s=NOW)


# --- SCRAM ------------------------------------------------------------------------------------


def test_scram_success(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    ex = scram_login(gate, "alice", "wonderland")
    assert ex.principal == Principal(user="alice", mechanism="SCRAM-SHA-256")
    with pytest.raises(AuthenticationFailed, match="already ended"):
        ex.respond(b"again", NOW)


@pytest.mark.parametrize("user, password", [("alice", "wrong"), ("mallory", "wonderland"),
                                            ("gw-01.example.com", "x")])
def test_scram_failures_look_alike(users: Path, user: str, password: str) -> None:
    gate = Gate(str(users), now_s=NOW)
    with pytest.raises(AuthenticationFailed) as info:
        scram_login(gate, user, password)
    assert info.value.message == FAILED


def test_scram_without_first_message_and_channel_binding(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    with pytest.raises(AuthenticationFailed, match="client-first"):
        start(gate, "SCRAM-SHA-256", None)
    with pytest.raises(Unsupported, match="channel binding"):
        start(gate, "SCRAM-SHA-256", b"p=tls-exporter,,n=alice,r=abc")
    with pytest.raises(AuthenticationFailed, match="malformed"):
        start(gate, "SCRAM-SHA-256", b"garbage")


def test_no_or_unknown_mechanism(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    with pytest.raises(AuthenticationFailed) as info:
        start(gate, None, None)
    assert info.value.message == ("authentication required; mechanisms: SCRAM-SHA-256, TOKEN, "
                                  "EXTERNAL")
    with pytest.raises(AuthenticationFailed, match="PLAIN.*SCRAM-SHA-256, TOKEN, EXTERNAL"):
        start(gate, "PLAIN", b"\0alice\0wonderland")


# --- TOKEN ------------------------------------------------------------------------------------


def test_token_success_over_tls_and_loopback(users: Path) -> None:
    db = load_users(users)
    token_id, token = db.create_token("alice", ttl_s=None, now_s=NOW)
    save_users(users, db)
    gate = Gate(str(users), now_s=NOW)
    for tls, loopback in ((True, False), (False, True)):
        ex = start(gate, "TOKEN", token.encode(), tls=tls, loopback=loopback)
        assert ex.principal == Principal("alice", "TOKEN", token_id)
        assert ex.challenge is None and ex.server_data is None


def test_token_refused_on_plaintext_non_loopback(users: Path) -> None:
    db = load_users(users)
    _, token = db.create_token("alice", ttl_s=None, now_s=NOW)
    save_users(users, db)
    gate = Gate(str(users), now_s=NOW)
    with pytest.raises(AuthenticationFailed) as info:
        start(gate, "TOKEN", token.encode(), tls=False, loopback=False)
    assert info.value.message.startswith(
        "TOKEN authentication needs TLS or a loopback connection")


def test_bad_expired_or_missing_token(users: Path) -> None:
    db = load_users(users)
    _, token = db.create_token("alice", ttl_s=10, now_s=NOW)
    save_users(users, db)
    gate = Gate(str(users), now_s=NOW)
    for data, now in ((token.encode(), NOW + 10), (token[:-2].encode(), NOW), (b"", NOW),
                      (None, NOW), (b"\xff", NOW)):
        with pytest.raises(AuthenticationFailed):
            start(gate, "TOKEN", data, now=now)


# --- EXTERNAL ---------------------------------------------------------------------------------


def test_external_takes_the_first_name_that_is_a_user(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    ex = start(gate, "EXTERNAL", None, names=("Unknown CN", "gw-01.example.com", "alice"))
    assert ex.principal == Principal("gw-01.example.com", "EXTERNAL")
    ex = start(gate, "EXTERNAL", b"alice", names=("gw-01.example.com", "alice"))
    assert ex.principal == Principal("alice", "EXTERNAL")


@pytest.mark.parametrize("data, names, tls, message", [
    (None, ("gw-01.example.com",), False, "needs TLS"),
    (None, (), True, "needs TLS with a verified client certificate"),
    (None, ("stranger",), True, "no user matches"),
    (b"alice", ("gw-01.example.com",), True, "does not name 'alice'"),
    (b"ghost", ("ghost",), True, "no user 'ghost'"),
])
def test_external_failures(users: Path, data: bytes | None, names: tuple[str, ...], tls: bool,
                           message: str) -> None:
    gate = Gate(str(users), now_s=NOW)
    with pytest.raises(AuthenticationFailed, match=message):
        start(gate, "EXTERNAL", data, names=names, tls=tls)


# --- the failure limiter ---------------------------------------------------------------------


def test_limiter_kicks_in_and_recovers_after_the_window(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW, limiter=FailureLimiter(max_failures=3, window_s=60))
    for i in range(3):
        with pytest.raises(AuthenticationFailed, match="unknown user or wrong"):
            scram_login(gate, "alice", "guess", now=NOW + i)
    with pytest.raises(AuthenticationFailed) as info:
        scram_login(gate, "alice", "wonderland", now=NOW + 3)  # even the right password
    assert info.value.message == ("too many failed logins from this address; "
                                  "try again in 57 s")
    scram_login(gate, "alice", "wonderland", addr="10.0.0.2", now=NOW + 3)  # others may
    scram_login(gate, "alice", "wonderland", now=NOW + 60.5)  # the oldest failure left
    scram_login(gate, "alice", "wonderland", now=NOW + 61)


def test_limiter_sliding_window_and_success_resets() -> None:
    lim = FailureLimiter(max_failures=2, window_s=10)
    lim.failed("a", 0)
    lim.check("a", 1)
    lim.failed("a", 5)
    with pytest.raises(AuthenticationFailed, match="try again in 5 s"):
        lim.check("a", 5)
    lim.check("a", 10)  # the failure at 0 left the window
    lim.failed("a", 11)
    with pytest.raises(AuthenticationFailed):
        lim.check("a", 11)
    lim.succeeded("a")
    lim.check("a", 11)


def test_limiter_counts_ipv6_per_64_and_bounds_memory() -> None:
    lim = FailureLimiter(max_failures=1, window_s=10, max_addresses=3)
    lim.failed("2001:db8::1", 0)
    with pytest.raises(AuthenticationFailed):
        lim.check("2001:db8::ffff", 0)  # same /64
    lim.check("2001:db8:0:1::1", 0)  # another /64
    for i in range(10):
        lim.failed(f"10.0.0.{i}", 0)
    assert len(lim) == 3
    lim.check("10.0.0.0", 0)  # the oldest were forgotten
    with pytest.raises(AuthenticationFailed):
        lim.check("10.0.0.9", 0)


def test_every_kind_of_failure_feeds_the_limiter(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW, limiter=FailureLimiter(max_failures=4, window_s=60))
    attempts: list[tuple[str | None, bytes | None, bool]] = [
        (None, None, True), ("NOPE", b"", True), ("TOKEN", b"tmq_x_y", False),
        ("EXTERNAL", None, True)]
    for mechanism, data, tls in attempts:
        with pytest.raises(AuthenticationFailed):
            start(gate, mechanism, data, tls=tls)
    with pytest.raises(AuthenticationFailed, match="too many failed logins"):
        start(gate, "EXTERNAL", None, names=("alice",))


# --- reload and sessions ------------------------------------------------------------------------


def test_reload_picks_up_changes_and_bumps_generation(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    gen = gate.generation
    alice = Principal("alice", "SCRAM-SHA-256")
    assert not gate.reload(NOW)  # unchanged
    assert not gate.reload(NOW, force=True)  # re-read, same content
    assert gate.generation == gen
    assert not gate.allows(alice, "consume", "topic", "orders")

    edit(users, lambda db: db.grant("allow", "alice", "consume", "topic:orders"))
    assert gate.reload(NOW + 1)
    assert gate.generation == gen + 1
    assert gate.allows(alice, "consume", "topic", "orders")
    assert not gate.reload(NOW + 2)
    assert gate.generation == gen + 1


def test_reload_keeps_old_users_when_the_file_is_broken_or_gone(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    gen = gate.generation
    users.write_text("{broken")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        gate.reload(NOW)
    assert gate.generation == gen and gate.db.has_user("alice")
    users.unlink()
    with pytest.raises(InvalidArgument, match="missing"):
        gate.reload(NOW, force=True)
    assert gate.db.has_user("alice")
    scram_login(gate, "alice", "wonderland")


def test_fake_salts_stay_stable_across_reloads_and_restarts(users: Path) -> None:
    def server_first(gate: Gate) -> bytes:
        ex = start(gate, "SCRAM-SHA-256", b"n,,n=mallory,r=abc")
        assert ex.challenge is not None
        return ex.challenge.split(b",", 1)[1]  # salt and iterations, not the nonce

    gate = Gate(str(users), now_s=NOW)
    first = server_first(gate)
    edit(users, lambda db: db.add_user("bob", None))
    gate.reload(NOW)
    assert server_first(gate) == first
    assert server_first(Gate(str(users), now_s=NOW)) == first


def test_still_valid_after_user_deleted_or_token_revoked(users: Path) -> None:
    db = load_users(users)
    token_id, token = db.create_token("alice", ttl_s=100, now_s=NOW)
    save_users(users, db)
    gate = Gate(str(users), now_s=NOW)
    by_token = start(gate, "TOKEN", token.encode()).principal
    by_scram = scram_login(gate, "alice", "wonderland").principal
    assert by_token is not None and by_scram is not None
    assert gate.still_valid(by_token, NOW) and gate.still_valid(by_scram, NOW)
    assert not gate.still_valid(by_token, NOW + 100)  # expired

    edit(users, lambda db: db.revoke_token(token_id))
    gate.reload(NOW)
    assert not gate.still_valid(by_token, NOW)
    assert gate.still_valid(by_scram, NOW)

    edit(users, lambda db: db.delete_user("alice"))
    gate.reload(NOW)
    assert not gate.still_valid(by_scram, NOW)


def test_allows_and_check(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    alice = Principal("alice", "SCRAM-SHA-256")
    assert gate.allows(alice, "publish", "topic", "orders")
    gate.check(alice, "publish", "topic", "orders")
    assert not gate.allows(alice, "publish", "topic", "payments")
    with pytest.raises(PermissionDenied) as info:
        gate.check(alice, "publish", "topic", "payments")
    assert info.value.message == "user 'alice' may not publish topic 'payments'"
