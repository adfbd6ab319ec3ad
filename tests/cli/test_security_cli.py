"""``tidemq user|token|acl``: each subcommand in-process through ``main([...])``, the file it
writes (mode 0600, no secrets), and a token it prints logging in through the Gate."""

from __future__ import annotations

import getpass
import json
import os
import stat
import time
from pathlib import Path

import pytest

from tidemq.security import Gate, Principal, ScramClient, load_users

from .conftest import Run

NOW = 1_000_000.0


@pytest.fixture
def users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TIDEMQ_USERS", raising=False)
    return tmp_path / "users.json"


def u(users: Path) -> list[str]:
    return ["--users", str(users)]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidemq: error: "), err
    return lines[0]


def add(run: Run, users: Path, name: str, password: str = "s3cret pass") -> None:
    r = run("user", "add", name, *u(users), "--password-stdin", "--iterations", "4096",
            stdin=f"{password}\n".encode(), use_url=False)
    assert r.code == 0, r.err


# --- users ------------------------------------------------------------------------------------


def test_user_add_list_passwd_del(run: Run, users: Path) -> None:
    add(run, users, "alice", "correct horse")
    assert mode(users) == 0o600
    assert "correct horse" not in users.read_text()
    r = run("user", "add", "gw-01", *u(users), "--no-password", use_url=False)
    assert r.code == 0 and "certificate or token only" in r.out

    r = run("user", "list", *u(users), use_url=False)
    assert r.code == 0
    assert [line.split()[:2] for line in r.lines()] == [
        ["USER", "LOGIN"], ["alice", "password"], ["gw-01", "certificate/token"]]
    r = run("user", "list", *u(users), "--json", use_url=False)
    rows = [json.loads(line) for line in r.lines()]
    assert rows[0] == {"user": "alice", "password": True, "iterations": 4096, "tokens": 0,
                       "rules": 0}

    old = load_users(users).credentials("alice")
    r = run("user", "passwd", "alice", *u(users), "--password-stdin", "--iterations", "5000",
            stdin=b"new password\r\n", use_url=False)
    assert r.code == 0, r.err
    new = load_users(users).credentials("alice")
    assert new is not None and new != old and new.iterations == 5000
    gate = Gate(str(users), now_s=NOW)
    client = ScramClient("alice", "new password")  # the \r\n is not part of it
    ex = gate.start("SCRAM-SHA-256", client.first(), peer_addr="127.0.0.1", loopback=True,
                    tls=False, now_s=NOW)
    assert ex.challenge is not None
    ex.respond(client.final(ex.challenge), NOW)
    assert ex.principal == Principal("alice", "SCRAM-SHA-256")

    r = run("user", "del", "alice", *u(users), use_url=False)
    assert r.code == 0 and "deleted user alice" in r.out
    assert load_users(users).users() == ["gw-01"]
    assert mode(users) == 0o600


def test_user_errors(run: Run, users: Path) -> None:
    add(run, users, "alice")
    r = run("user", "add", "alice", *u(users), "--password-stdin", stdin=b"x\n", use_url=False)
    assert r.code == 1 and "already exists" in error_line(r.err)
    r = run("user", "add", "bad name", *u(users), "--password-stdin", stdin=b"x\n",
            use_url=False)
    assert r.code == 1 and "1-128 characters" in error_line(r.err)
    r = run("user", "add", "bob", *u(users), "--password-stdin", stdin=b"", use_url=False)
    assert r.code == 1 and "no password on stdin" in error_line(r.err)
    r = run("user", "add", "bob", *u(users), "--password-stdin", "--iterations", "100",
            stdin=b"pw\n", use_url=False)
    assert r.code == 1 and "at least 4096" in error_line(r.err)
    r = run("user", "passwd", "nobody", *u(users), "--password-stdin", stdin=b"x\n",
            use_url=False)
    assert r.code == 1 and "no user 'nobody'" in error_line(r.err)
    r = run("user", "del", "nobody", *u(users), use_url=False)
    assert r.code == 1 and "no user 'nobody'" in error_line(r.err)
    assert load_users(users).users() == ["alice"]


def test_password_prompt_twice(run: Run, users: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["pw-one", "pw-one", "pw-two", "pw-typo"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    r = run("user", "add", "alice", *u(users), "--iterations", "4096", use_url=False)
    assert r.code == 0, r.err
    assert len(prompts) == 2 and "alice" in prompts[0]
    r = run("user", "add", "bob", *u(users), use_url=False)
    assert r.code == 1 and "passwords differ" in error_line(r.err)
    assert load_users(users).users() == ["alice"]


def test_users_file_from_env_or_usage_error(run: Run, users: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    r = run("user", "list", use_url=False)
    assert r.code == 2
    assert "--users FILE" in error_line(r.err) and "TIDEMQ_USERS" in r.err
    monkeypatch.setenv("TIDEMQ_USERS", str(users))
    r = run("user", "add", "gw", "--no-password", use_url=False)
    assert r.code == 0, r.err
    assert load_users(users).users() == ["gw"]


def test_usage_errors(run: Run, users: Path) -> None:
    for argv in (["user"], ["user", "add"], ["token", "create"], ["acl", "grant", "a", "b"],
                 ["user", "add", "x", "--no-password", "--password-stdin", *u(users)],
                 ["token", "create", "x", "--ttl", "0", *u(users)]):
        r = run(*argv, use_url=False)
        assert r.code == 2, (argv, r.err)
        error_line(r.err)


# --- tokens -----------------------------------------------------------------------------------


def test_token_create_prints_a_token_the_gate_accepts(run: Run, users: Path) -> None:
    run("user", "add", "svc", *u(users), "--no-password", use_url=False)
    r = run("token", "create", "svc", *u(users), "--ttl", "3600", use_url=False)
    assert r.code == 0, r.err
    assert len(r.lines()) == 1
    token = r.out.strip()
    assert r.out == token + "\n" and token.startswith("tmq_")
    token_id = token.split("_")[1]
    assert token_id in r.err and "only now" in r.err
    assert token not in users.read_text()
    assert mode(users) == 0o600

    gate = Gate(str(users), now_s=NOW)
    now = time.time()
    ex = gate.start("TOKEN", token.encode(), peer_addr="127.0.0.1", loopback=True, tls=False,
                    now_s=now)
    assert ex.principal == Principal("svc", "TOKEN", token_id)

    r = run("token", "list", *u(users), use_url=False)
    assert r.code == 0
    header, row = r.lines()
    assert header.split() == ["ID", "USER", "CREATED", "EXPIRES"]
    assert row.split()[:2] == [token_id, "svc"]
    r = run("token", "list", *u(users), "--json", use_url=False)
    info = json.loads(r.out)
    assert info["id"] == token_id and info["expires_s"] - info["created_s"] == 3600

    r = run("token", "revoke", token_id, *u(users), use_url=False)
    assert r.code == 0 and token_id in r.out
    assert gate.reload(now)
    assert ex.principal is not None and not gate.still_valid(ex.principal, now)
    r = run("token", "revoke", token_id, *u(users), use_url=False)
    assert r.code == 1 and "no token" in error_line(r.err)
    r = run("token", "create", "nobody", *u(users), use_url=False)
    assert r.code == 1 and "no user 'nobody'" in error_line(r.err)


# --- acl --------------------------------------------------------------------------------------


def test_acl_grant_deny_revoke_list(run: Run, users: Path) -> None:
    add(run, users, "shop")
    add(run, users, "billing")
    for argv in (("grant", "shop", "publish", "topic:orders"),
                 ("grant", "billing", "consume", "topic:orders"),
                 ("grant", "billing", "consume", "group:billing"),
                 ("grant", "*", "consume", "topic:inbox.{user}"),
                 ("deny", "shop", "publish", "topic:orders")):
        r = run("acl", *argv, *u(users), use_url=False)
        assert r.code == 0 and "added rule" in r.out, r.err
    r = run("acl", "grant", "shop", "publish", "topic:orders", *u(users), use_url=False)
    assert r.code == 0 and "already present" in r.out

    gate = Gate(str(users), now_s=NOW)
    shop, billing = Principal("shop", "SCRAM-SHA-256"), Principal("billing", "SCRAM-SHA-256")
    assert not gate.allows(shop, "publish", "topic", "orders")  # deny wins
    assert gate.allows(billing, "consume", "group", "billing")
    assert gate.allows(billing, "consume", "topic", "inbox.billing")

    r = run("acl", "list", *u(users), use_url=False)
    assert r.code == 0
    assert [line.split() for line in r.lines()] == [
        ["EFFECT", "USER", "OP", "RESOURCE"],
        ["allow", "shop", "publish", "topic:orders"],
        ["allow", "billing", "consume", "topic:orders"],
        ["allow", "billing", "consume", "group:billing"],
        ["allow", "*", "consume", "topic:inbox.{user}"],
        ["deny", "shop", "publish", "topic:orders"]]
    r = run("acl", "list", "--user", "billing", "--json", *u(users), use_url=False)
    assert [json.loads(line)["user"] for line in r.lines()] == ["billing", "billing", "*"]

    r = run("acl", "revoke", "shop", "publish", "topic:orders", *u(users), use_url=False)
    assert r.code == 0 and "removed 2 rule(s)" in r.out
    r = run("acl", "revoke", "shop", "publish", "topic:orders", *u(users), use_url=False)
    assert r.code == 1 and "no rule" in error_line(r.err)
    assert gate.reload(NOW)
    assert not gate.allows(shop, "publish", "topic", "orders")  # no rule: denied
    assert mode(users) == 0o600


def test_acl_errors(run: Run, users: Path) -> None:
    add(run, users, "shop")
    for argv, message in ((("grant", "shop", "read", "topic:x"), "publish, consume, admin"),
                          (("grant", "shop", "publish", "orders"), "topic:PATTERN"),
                          (("grant", "shop", "publish", "topic:a*"), "whole words"),
                          (("deny", "ghost", "publish", "topic:x"), "no user 'ghost'")):
        r = run("acl", *argv, *u(users), use_url=False)
        assert r.code == 1, argv
        assert message in error_line(r.err)
    assert load_users(users).rules() == []


def test_delete_user_removes_its_tokens_and_rules(run: Run, users: Path) -> None:
    add(run, users, "shop")
    run("token", "create", "shop", *u(users), use_url=False)
    run("acl", "grant", "shop", "publish", "topic:orders", *u(users), use_url=False)
    r = run("user", "del", "shop", *u(users), use_url=False)
    assert r.code == 0 and "1 token(s) and 1 rule(s)" in r.out
    db = load_users(users)
    assert db.tokens() == [] and db.rules() == []


def test_malformed_file_is_one_error_line(run: Run, users: Path) -> None:
    users.write_text('{"version": 7}')
    r = run("user", "list", *u(users), use_url=False)
    assert r.code == 1
    line = error_line(r.err)
    assert str(users) in line and "version 7" in line
