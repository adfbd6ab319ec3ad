"""The gate's per-request checks used by the HTTP API: passwords (HTTP Basic) against the
stored SCRAM keys, with a cache of successes, and bearer tokens."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tidemq.errors import AuthenticationFailed
from tidemq.security import FailureLimiter, Gate, Principal, UserDB, load_users, save_users
from tidemq.security._scram import MIN_ITERATIONS

NOW = 1_000_000.0
FAILED = "authentication failed: unknown user or wrong password"


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users.json"
    db = UserDB()
    db.add_user("alice", "wonderland", iterations=MIN_ITERATIONS)
    db.add_user("certonly", None)
    save_users(path, db)
    return path


def test_right_password(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    p = gate.verify_password("alice", "wonderland", peer_addr="10.0.0.1", now_s=NOW)
    assert p == Principal("alice", "PASSWORD")


@pytest.mark.parametrize("user, password", [
    ("alice", "wrong"), ("mallory", "wonderland"), ("certonly", ""), ("alice", ""),
    ("alice", "x" * 5000), ("", "wonderland"),
])
def test_failures_look_alike_and_count(users: Path, user: str, password: str) -> None:
    gate = Gate(str(users), now_s=NOW, limiter=FailureLimiter(max_failures=2, window_s=60))
    for _ in range(2):
        with pytest.raises(AuthenticationFailed) as info:
            gate.verify_password(user, password, peer_addr="10.0.0.1", now_s=NOW)
        assert info.value.message == FAILED
    with pytest.raises(AuthenticationFailed, match="too many failed logins"):
        gate.verify_password("alice", "wonderland", peer_addr="10.0.0.1", now_s=NOW)
    # Another address is not affected.
    gate.verify_password("alice", "wonderland", peer_addr="10.0.0.2", now_s=NOW)


def test_unknown_user_costs_pbkdf2_too(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW, limiter=FailureLimiter(max_failures=100))
    # An unknown user is checked against fake keys with the default iteration count: the work
    # is not skipped (no timing shortcut tells unknown users apart).
    check = gate.begin_password("mallory", "x", peer_addr="10.0.0.1", now_s=NOW)
    assert check.principal is None
    t0 = time.perf_counter()
    check.derive()
    assert time.perf_counter() - t0 > 0.005  # 100,000 PBKDF2 iterations
    with pytest.raises(AuthenticationFailed, match="unknown user or wrong password"):
        check.finish(NOW)


def test_success_is_cached_until_the_file_changes(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    gate.verify_password("alice", "wonderland", peer_addr="10.0.0.1", now_s=NOW)
    check = gate.begin_password("alice", "wonderland", peer_addr="10.0.0.1", now_s=NOW)
    assert check.principal == Principal("alice", "PASSWORD")  # no PBKDF2 this time
    # A different password is not answered from the cache.
    assert gate.begin_password("alice", "wonderlan", peer_addr="10.0.0.1",
                               now_s=NOW).principal is None
    db = load_users(users)
    db.set_password("alice", "looking-glass", iterations=MIN_ITERATIONS)
    save_users(users, db)
    assert gate.reload(NOW + 1, force=True)
    assert gate.begin_password("alice", "wonderland", peer_addr="10.0.0.1",
                               now_s=NOW + 1).principal is None
    with pytest.raises(AuthenticationFailed):
        gate.verify_password("alice", "wonderland", peer_addr="10.0.0.1", now_s=NOW + 1)
    assert gate.verify_password("alice", "looking-glass", peer_addr="10.0.0.1",
                                now_s=NOW + 1).user == "alice"


def test_deleted_user_is_not_served_from_the_cache(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    gate.verify_password("alice", "wonderland", peer_addr="10.0.0.1", now_s=NOW)
    db = load_users(users)
    db.delete_user("alice")
    save_users(users, db)
    gate.reload(NOW + 1, force=True)
    with pytest.raises(AuthenticationFailed, match="unknown user or wrong password"):
        gate.verify_password("alice", "wonderland", peer_addr="10.0.0.1", now_s=NOW + 1)


def test_a_success_across_a_reload_is_not_cached(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    check = gate.begin_password("alice", "wonderland", peer_addr="10.0.0.1", now_s=NOW)
    check.derive()
    db = load_users(users)
    db.add_user("bob", "builder", iterations=MIN_ITERATIONS)
    save_users(users, db)
    gate.reload(NOW, force=True)
    assert check.finish(NOW).user == "alice"  # the keys it checked were right when read
    assert gate.begin_password("alice", "wonderland", peer_addr="10.0.0.1",
                               now_s=NOW).principal is None


def test_derive_runs_on_another_thread(users: Path) -> None:
    gate = Gate(str(users), now_s=NOW)
    check = gate.begin_password("alice", "wonderland", peer_addr="10.0.0.1", now_s=NOW)
    worker = threading.Thread(target=check.derive)
    worker.start()
    worker.join()
    assert check.finish(NOW).user == "alice"
    assert check.finish(NOW).user == "alice"  # answered: the same principal again
    bad = gate.begin_password("alice", "bad", peer_addr="10.0.0.1", now_s=NOW)
    with pytest.raises(AuthenticationFailed):
        bad.finish(NOW)
    with pytest.raises(AuthenticationFailed, match="already ended"):
        bad.finish(NOW)


def test_bearer_tokens(users: Path) -> None:
    db = load_users(users)
    token_id, token = db.create_token("alice", ttl_s=10, now_s=NOW)
    save_users(users, db)
    gate = Gate(str(users), now_s=NOW)
    p = gate.verify_token(token, peer_addr="10.0.0.1", loopback=False, tls=True, now_s=NOW)
    assert p == Principal("alice", "TOKEN", token_id)
    assert gate.verify_token(token, peer_addr="127.0.0.1", loopback=True, tls=False,
                             now_s=NOW).user == "alice"
    with pytest.raises(AuthenticationFailed, match="needs TLS or a loopback"):
        gate.verify_token(token, peer_addr="10.0.0.1", loopback=False, tls=False, now_s=NOW)
    with pytest.raises(AuthenticationFailed, match="unknown, revoked or expired"):
        gate.verify_token(token, peer_addr="10.0.0.1", loopback=False, tls=True,
                          now_s=NOW + 10)
    with pytest.raises(AuthenticationFailed):
        gate.verify_token("tmq_nope", peer_addr="10.0.0.1", loopback=True, tls=True, now_s=NOW)
