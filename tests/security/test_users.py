"""The users file and ``UserDB``: validation, tokens, rules, and the file on disk (0600,
atomic, no secrets in it)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tidemq.errors import InvalidArgument
from tidemq.security import UserDB, check_username, load_users, save_users
from tidemq.security._scram import MIN_ITERATIONS, ScramClient, ScramServer
from tidemq.security._users import Rule, TokenInfo, dump_users, parse_users

IT = MIN_ITERATIONS  # fast PBKDF2 for tests


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "shop", "gw-01.example.com", "ops@example.com", "a+b_c",
                                  "x" * 128])
def test_valid_usernames(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize("name", ["", "*", "a b", "a,b", "a=b", "{user}", "ä", "x" * 129,
                                  "a#", "a\n", None, 3])
def test_invalid_usernames(name: object) -> None:
    with pytest.raises(InvalidArgument, match="1-128 characters"):
        check_username(name)


# --- users ------------------------------------------------------------------------------------


def test_add_set_delete_users() -> None:
    db = UserDB()
    db.add_user("alice", "pw1", iterations=IT)
    db.add_user("gw", None)
    assert db.users() == ["alice", "gw"]
    assert db.has_user("gw") and db.credentials("gw") is None
    creds = db.credentials("alice")
    assert creds is not None and creds.iterations == IT
    with pytest.raises(InvalidArgument, match="already exists"):
        db.add_user("alice", "pw2", iterations=IT)
    with pytest.raises(InvalidArgument, match="empty"):
        db.add_user("bob", "", iterations=IT)
    with pytest.raises(InvalidArgument, match="at least 4096"):
        db.add_user("bob", "pw", iterations=100)
    assert not db.has_user("bob")

    db.set_password("alice", "pw2", iterations=IT)
    assert db.credentials("alice") != creds
    with pytest.raises(InvalidArgument, match="no user 'carol'"):
        db.set_password("carol", "pw", iterations=IT)

    db.delete_user("alice")
    assert db.users() == ["gw"] and db.credentials("alice") is None
    with pytest.raises(InvalidArgument, match="no user"):
        db.delete_user("alice")


def test_credentials_log_in_with_scram() -> None:
    db = UserDB()
    db.add_user("alice", "s3cret", iterations=IT)
    client = ScramClient("alice", "s3cret")
    server = ScramServer(db.credentials, fake_secret=db.fake_salt_key)
    client.verify(server.final(client.final(server.first(client.first()))))
    assert server.username == "alice"


# --- tokens -----------------------------------------------------------------------------------


def test_token_create_verify_expire_revoke() -> None:
    db = UserDB()
    db.add_user("svc", None)
    token_id, token = db.create_token("svc", ttl_s=60, now_s=1000.0)
    assert token.startswith(f"tmq_{token_id}_")
    assert len(token.split("_", 2)[2]) >= 43  # >= 32 random bytes, url-safe base64
    info = db.verify_token(token, now_s=1000.0)
    assert info == TokenInfo(token_id=token_id, user="svc", created_s=1000.0, expires_s=1060.0)
    assert db.verify_token(token, now_s=1059.9) is not None
    assert db.verify_token(token, now_s=1060.0) is None  # expired
    assert db.tokens() == [info]

    forever_id, forever = db.create_token("svc", ttl_s=None, now_s=1000.0)
    assert db.verify_token(forever, now_s=1e12) is not None
    for bad in ("", "tmq_", forever[:-1], forever + "x", forever.replace("tmq_", "tmx_"),
                f"tmq_{forever_id}_", f"tmq_nosuchid_{forever.split('_', 2)[2]}",
                f"tmq_{token_id}_{forever.split('_', 2)[2]}", forever + "é"):
        assert db.verify_token(bad, now_s=1000.0) is None, bad

    db.revoke_token(forever_id)
    assert db.verify_token(forever, now_s=1000.0) is None
    with pytest.raises(InvalidArgument, match="no token"):
        db.revoke_token(forever_id)
    with pytest.raises(InvalidArgument, match="no user"):
        db.create_token("nobody", ttl_s=None, now_s=0)
    with pytest.raises(InvalidArgument, match="positive"):
        db.create_token("svc", ttl_s=0, now_s=0)


def test_token_of_deleted_user_no_longer_verifies() -> None:
    db = UserDB()
    db.add_user("svc", None)
    _, token = db.create_token("svc", ttl_s=None, now_s=0)
    db.delete_user("svc")
    assert db.tokens() == []
    assert db.verify_token(token, now_s=0) is None
    db.add_user("svc", None)  # a new user of the same name does not inherit the token
    assert db.verify_token(token, now_s=0) is None


# --- rules ------------------------------------------------------------------------------------


def test_grant_validates_and_deduplicates() -> None:
    db = UserDB()
    db.add_user("shop", None)
    assert db.grant("allow", "shop", "publish", "topic:orders")
    assert not db.grant("allow", "shop", "publish", "topic:orders")
    assert db.grant("deny", "shop", "publish", "topic:orders")
    assert db.grant("allow", "*", "consume", "topic:inbox.{user}")
    assert db.grant("allow", "shop", "admin", "group:{user}-svc.#")
    assert db.rules()[:3] == [Rule("allow", "shop", "publish", "topic:orders"),
                              Rule("deny", "shop", "publish", "topic:orders"),
                              Rule("allow", "*", "consume", "topic:inbox.{user}")]
    for args, message in [
        (("maybe", "shop", "publish", "topic:x"), "allow or deny"),
        (("allow", "shop", "read", "topic:x"), "publish, consume, admin"),
        (("allow", "shop", "publish", "orders"), "topic:PATTERN"),
        (("allow", "shop", "publish", "queue:x"), "topic:PATTERN"),
        (("allow", "shop", "publish", "topic:"), "topic:PATTERN"),
        (("allow", "shop", "publish", "topic:a.b*"), "whole words"),
        (("allow", "shop", "publish", "topic:{user}#"), "whole words"),
        (("allow", "shop", "publish", "topic:{username}"), "placeholder"),
        (("allow", "shop", "publish", "topic:" + "a." * 200), "at most"),
        (("allow", "bad name", "publish", "topic:x"), "1-128"),
        (("allow", "ghost", "publish", "topic:x"), "no user 'ghost'"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            db.grant(*args)


def test_revoke_rule_removes_allow_and_deny() -> None:
    db = UserDB()
    db.add_user("shop", None)
    db.grant("allow", "shop", "publish", "topic:orders")
    db.grant("deny", "shop", "publish", "topic:orders")
    db.grant("allow", "shop", "consume", "topic:orders")
    assert db.revoke_rule("shop", "publish", "topic:orders") == 2
    assert db.revoke_rule("shop", "publish", "topic:orders") == 0
    assert db.rules() == [Rule("allow", "shop", "consume", "topic:orders")]


def test_delete_user_drops_its_tokens_and_rules_only() -> None:
    db = UserDB()
    db.add_user("a", None)
    db.add_user("b", None)
    db.create_token("a", ttl_s=None, now_s=0)
    b_token, _ = db.create_token("b", ttl_s=None, now_s=0)
    db.grant("allow", "a", "publish", "topic:x")
    db.grant("allow", "b", "publish", "topic:x")
    db.grant("allow", "*", "consume", "topic:x")
    db.delete_user("a")
    assert [t.token_id for t in db.tokens()] == [b_token]
    assert [r.user for r in db.rules()] == ["b", "*"]


# --- the file ---------------------------------------------------------------------------------


def test_missing_file_is_created_empty_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    db = load_users(path)
    assert db.users() == [] and db.rules() == [] and db.tokens() == []
    assert path.exists() and mode(path) == 0o600
    assert json.loads(path.read_text())["version"] == 1
    assert load_users(path).fake_salt_key == db.fake_salt_key  # stored, stable


def test_save_load_round_trip_and_no_secrets_in_file(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    db = UserDB()
    db.add_user("alice", "correct horse battery", iterations=IT)
    db.add_user("gw", None)
    token_id, token = db.create_token("gw", ttl_s=3600, now_s=100.0)
    db.grant("allow", "alice", "publish", "topic:orders.#")
    db.grant("deny", "*", "admin", "topic:#")
    save_users(path, db)
    assert mode(path) == 0o600

    text = path.read_text()
    assert "correct horse battery" not in text
    assert token not in text and token.split("_", 2)[2] not in text
    loaded = load_users(path)
    assert dump_users(loaded) == dump_users(db) == path.read_bytes()
    assert loaded.users() == ["alice", "gw"]
    assert loaded.credentials("alice") == db.credentials("alice")
    assert loaded.rules() == db.rules() and loaded.tokens() == db.tokens()
    assert loaded.verify_token(token, now_s=200.0) is not None
    assert [f for f in os.listdir(tmp_path)] == ["users.json"]  # no temp file left


def test_save_tightens_a_loose_mode(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    save_users(path, UserDB())
    os.chmod(path, 0o644)
    save_users(path, load_users(path))
    assert mode(path) == 0o600


def test_load_and_save_do_not_leak_os_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read the users file"):
        load_users(tmp_path)  # a folder
    with pytest.raises(InvalidArgument, match="cannot write the users file"):
        save_users(tmp_path / "missing-dir" / "users.json", UserDB())


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not valid JSON"),
    (b"\xff", "not valid JSON"),
    (b"[]", "JSON object"),
    (b'{"version": 2}', "unsupported version 2"),
    (b'{"version": 1, "users": {"bad name": {"scram_sha_256": null}}}', "bad name"),
    (b'{"version": 1, "users": {"a": {"scram_sha_256": {"salt": "!!"}}}}', "iterations"),
    (b'{"version": 1, "tokens": {"t1": {"user": "a", "sha256": "zz", "created_s": 0}}}',
     "not hex"),
    (b'{"version": 1, "rules": [{"effect": "allow", "user": "a", "op": "eat", '
     b'"resource": "topic:x"}]}', r"rules\[0\]"),
    (b'{"version": 1, "rules": {}}', "rules must be a list"),
])
def test_malformed_file_names_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "users.json"
    path.write_bytes(content)
    with pytest.raises(InvalidArgument, match=message) as info:
        load_users(path)
    assert str(path) in info.value.message


def test_hand_written_minimal_file_loads() -> None:
    db = parse_users(b'{"version": 1, "users": {"gw": {"scram_sha_256": null}}, '
                     b'"rules": [{"effect": "allow", "user": "gw", "op": "publish", '
                     b'"resource": "topic:x"}]}', "users.json")
    assert db.users() == ["gw"] and len(db.rules()) == 1
    assert not db.fake_salt_key_stored and len(db.fake_salt_key) == 32


def test_token_of_a_user_missing_from_a_hand_edited_file_does_not_verify() -> None:
    db = UserDB()
    db.add_user("svc", None)
    _, token = db.create_token("svc", ttl_s=None, now_s=0)
    obj = json.loads(dump_users(db))
    del obj["users"]["svc"]  # edited by hand: the token stays, its user is gone
    edited = parse_users(json.dumps(obj).encode(), "users.json")
    assert len(edited.tokens()) == 1
    assert edited.verify_token(token, now_s=0) is None
