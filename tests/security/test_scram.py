"""SCRAM-SHA-256 (``tidemq.security._scram``): the RFC 7677 vector, round trips, and every
way a peer can get it wrong failing with AuthenticationFailed (never a crash)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from tidemq.errors import AuthenticationFailed, InvalidArgument, Unsupported
from tidemq.security import _scram
from tidemq.security._scram import (
    DEFAULT_ITERATIONS,
    MIN_ITERATIONS,
    ScramClient,
    ScramCredentials,
    ScramServer,
    make_credentials,
)

# RFC 7677 §3.
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

SECRET = b"fake-secret-for-tests"
FAILED = "authentication failed: unknown user or wrong password"


def rfc_creds() -> ScramCredentials:
    return make_credentials("pencil", iterations=4096, salt=RFC_SALT)


def server_for(users: dict[str, ScramCredentials], nonce: str | None = None) -> ScramServer:
    return ScramServer(users.get, fake_secret=SECRET, nonce=nonce)


def login(user: str, password: str, users: dict[str, ScramCredentials]) -> ScramServer:
    """A full exchange; returns the server (raises on failure)."""
    client = ScramClient(user, password)
    server = server_for(users)
    client_final = client.final(server.first(client.first()))
    client.verify(server.final(client_final))
    return server


# --- the RFC 7677 test vector -------------------------------------------------------------------


def test_rfc7677_client_messages() -> None:
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE)
    assert client.first() == RFC_CLIENT_FIRST
    assert client.final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify(RFC_SERVER_FINAL)


def test_rfc7677_server_messages() -> None:
    server = server_for({"user": rfc_creds()}, nonce=RFC_SERVER_NONCE)
    assert server.first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.username == ""
    assert server.final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.username == "user"


def test_rfc7677_wrong_server_signature_rejected() -> None:
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE)
    client.first()
    client.final(RFC_SERVER_FIRST)
    bad = base64.b64encode(bytes(32)).decode()
    with pytest.raises(AuthenticationFailed, match="signature"):
        client.verify(f"v={bad}".encode())


def test_server_error_in_final_is_authentication_failed() -> None:
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE)
    client.first()
    client.final(RFC_SERVER_FIRST)
    with pytest.raises(AuthenticationFailed, match="invalid-proof"):
        client.verify(b"e=invalid-proof")


# --- round trips ------------------------------------------------------------------------------


@settings(max_examples=examples(15), deadline=None)
@given(user=st.text(min_size=1, max_size=20).filter(lambda s: "\0" not in s),
       password=st.text(min_size=1, max_size=30))
def test_round_trip_any_name_and_password(user: str, password: str) -> None:
    users = {user: make_credentials(password, iterations=MIN_ITERATIONS)}
    assert login(user, password, users).username == user


def test_escaped_user_names() -> None:
    users = {"a,b=c": make_credentials("pw", iterations=MIN_ITERATIONS)}
    client = ScramClient("a,b=c", "pw")
    assert b"n=a=2Cb=3Dc," in client.first()
    assert login("a,b=c", "pw", users).username == "a,b=c"


def test_password_normalised_nfkc() -> None:
    # U+2168 ROMAN NUMERAL NINE is NFKC "IX": both spellings give the same keys.
    users = {"u": make_credentials("\u2168", iterations=MIN_ITERATIONS)}
    assert login("u", "IX", users).username == "u"


def test_y_flag_accepted_p_flag_unsupported() -> None:
    creds = rfc_creds()
    server = server_for({"user": creds})
    server.first(b"y,,n=user,r=abc")
    server = server_for({"user": creds})
    with pytest.raises(Unsupported, match="channel binding"):
        server.first(b"p=tls-unique,,n=user,r=abc")


def test_y_flag_full_exchange() -> None:
    """With 'y,,' the channel-binding attribute must be base64('y,,')."""
    creds = make_credentials("pw", iterations=MIN_ITERATIONS)
    client = ScramClient("u", "pw", nonce="cnonce")
    server = server_for({"u": creds})
    bare = client.first()[3:]
    client_final = client.final(server.first(b"y,," + bare))
    # The client signed 'n,,' in c=: that no longer matches the header it (supposedly) sent.
    with pytest.raises(AuthenticationFailed, match="channel-binding"):
        server.final(client_final)


def test_authzid_must_be_the_user() -> None:
    creds = rfc_creds()
    server = server_for({"user": creds}, nonce=RFC_SERVER_NONCE)
    server.first(b"n,a=user,n=user,r=x")
    server = server_for({"user": creds})
    with pytest.raises(AuthenticationFailed, match="authorization identity"):
        server.first(b"n,a=admin,n=user,r=x")


# --- unknown users and wrong passwords look alike ----------------------------------------------


def _error(user: str, password: str, users: dict[str, ScramCredentials]) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as info:
        login(user, password, users)
    return info.value


def test_wrong_password_and_unknown_user_fail_identically() -> None:
    users = {"alice": make_credentials("right", iterations=DEFAULT_ITERATIONS)}
    wrong = _error("alice", "wrong", users)
    unknown = _error("mallory", "whatever", users)
    assert type(wrong) is type(unknown) is AuthenticationFailed
    assert wrong.message == unknown.message == FAILED


def test_unknown_user_server_first_looks_real_and_stable() -> None:
    users = {"alice": make_credentials("right")}

    def server_first(user: str) -> dict[str, str]:
        server = server_for(users, nonce="S")
        text = server.first(f"n,,n={user},r=C".encode()).decode()
        return dict(part.split("=", 1) for part in text.split(","))

    known, unknown = server_first("alice"), server_first("mallory")
    assert known.keys() == unknown.keys() == {"r", "s", "i"}
    assert len(base64.b64decode(unknown["s"])) == len(base64.b64decode(known["s"])) == 16
    assert unknown["i"] == known["i"] == str(DEFAULT_ITERATIONS)
    assert server_first("mallory") == unknown  # stable: a probe sees no change
    assert server_first("mallory2")["s"] != unknown["s"]  # and per user, like real salts
    other = ScramServer(users.get, fake_secret=b"another", nonce="S")
    assert other.first(b"n,,n=mallory,r=C") != server_for(users, nonce="S").first(
        b"n,,n=mallory,r=C")


def test_a_proof_for_an_unknown_user_is_rejected_even_if_it_matches_fake_keys() -> None:
    """Unknown users fail even when the proof is 'right' for the fake keys (only known users
    may succeed)."""
    server = server_for({}, nonce="S")
    fake = server._fake("ghost")
    client = ScramClient("ghost", "x", nonce="C")
    client.first()
    server.first(b"n,,n=ghost,r=C")
    # Forge the proof from the fake keys directly.
    auth = b"n=ghost,r=C," + server._server_first.encode() + b",c=biws,r=CS"
    sig = _scram._hmac(fake.stored_key, auth)
    # client_key s.t. H(client_key) == stored_key is unknown (the fake stored_key is H(keys)).
    keys = _scram._hmac(SECRET, b"keys\0ghost")
    proof = _scram._xor(keys, sig)
    with pytest.raises(AuthenticationFailed, match="unknown user or wrong password"):
        server.final(b"c=biws,r=CS,p=" + base64.b64encode(proof))


def test_certificate_only_user_cannot_scram() -> None:
    def lookup(name: str) -> ScramCredentials | None:
        return None  # a user without a password looks up as None

    server = ScramServer(lookup, fake_secret=SECRET)
    client = ScramClient("gw", "")
    final = client.final(server.first(client.first()))
    with pytest.raises(AuthenticationFailed, match=FAILED):
        server.final(final)


# --- tampering ------------------------------------------------------------------------------


def _exchange(password: str = "pw") -> tuple[ScramClient, ScramServer, bytes]:
    users = {"u": make_credentials("pw", iterations=MIN_ITERATIONS)}
    client = ScramClient("u", password, nonce="clientnonce")
    server = server_for(users, nonce="servernonce")
    return client, server, client.final(server.first(client.first()))


def test_tampered_proof_rejected() -> None:
    _, server, final = _exchange()
    head, proof = final.rsplit(b",p=", 1)
    raw = bytearray(base64.b64decode(proof))
    raw[0] ^= 1
    with pytest.raises(AuthenticationFailed, match=FAILED):
        server.final(head + b",p=" + base64.b64encode(bytes(raw)))


def test_tampered_nonce_rejected_by_server() -> None:
    _, server, final = _exchange()
    with pytest.raises(AuthenticationFailed, match="nonce"):
        server.final(final.replace(b"servernonce", b"servernoncX"))


def test_client_rejects_server_nonce_not_extending_its_own() -> None:
    for server_first in (b"r=othernonceXYZ,s=AAAA,i=4096",  # not ours
                         b"r=clientnonce,s=AAAA,i=4096"):  # ours, not extended
        client = ScramClient("u", "pw", nonce="clientnonce")
        client.first()
        with pytest.raises(AuthenticationFailed, match="nonce"):
            client.final(server_first)


@pytest.mark.parametrize("iterations", [1, 4095, 10_000_001, 999_999_999])
def test_client_rejects_bad_iteration_counts(iterations: int) -> None:
    client = ScramClient("u", "pw", nonce="c")
    client.first()
    with pytest.raises(AuthenticationFailed, match="iterations"):
        client.final(f"r=cS,s=AAAA,i={iterations}".encode())


def test_wrong_password_fails_and_client_cannot_verify_a_fake_server() -> None:
    client, server, final = _exchange(password="nope")
    with pytest.raises(AuthenticationFailed, match=FAILED):
        server.final(final)


def test_server_out_of_order_and_replay() -> None:
    _, server, final = _exchange()
    server.final(final)
    with pytest.raises(AuthenticationFailed):
        server.final(final)  # a second final on the same exchange
    fresh = server_for({"u": make_credentials("pw", iterations=MIN_ITERATIONS)})
    with pytest.raises(AuthenticationFailed):
        fresh.final(final)  # final before first
    fresh = server_for({"u": make_credentials("pw", iterations=MIN_ITERATIONS)})
    fresh.first(b"n,,n=u,r=clientnonce")
    with pytest.raises(AuthenticationFailed, match="nonce"):
        fresh.final(final)  # replayed into a new exchange: the server nonce differs


def test_make_credentials_limits() -> None:
    with pytest.raises(InvalidArgument, match="at least 4096"):
        make_credentials("pw", iterations=4095)
    c = make_credentials("pw", iterations=MIN_ITERATIONS)
    assert len(c.salt) == 16 and c.iterations == MIN_ITERATIONS
    assert make_credentials("pw", iterations=MIN_ITERATIONS).salt != c.salt  # random


def test_client_caches_salted_password(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
        calls.append(1)
        return real(name, password, salt, iterations)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    salt = b"cache-test-salt!"
    for _ in range(3):
        client = ScramClient("user", "cache-pw", nonce="c")
        client.first()
        client.final(f"r=cS,s={base64.b64encode(salt).decode()},i=4096".encode())
    assert len(calls) == 1
    client = ScramClient("user", "other-pw", nonce="c")
    client.first()
    client.final(f"r=cS,s={base64.b64encode(salt).decode()},i=4096".encode())
    assert len(calls) == 2


# --- malformed input ----------------------------------------------------------------------------


MALFORMED_FIRST = [
    b"", b"n", b"n,", b"n,,", b"x,,n=u,r=a", b"n,,r=a,n=u", b"n,,n=,r=a", b"n,,n=u=,r=a",
    b"n,,n=u=2X,r=a", b"n,,n=u,r=", b"n,,n=u,r=a b", b"n,,n=u", b"n,,n=u,r=a,m=ext",
    b"n,,n=u,,r=a", b"n,b=x,n=u,r=a", b"\xff\xfe", b"n,,n=u,r=" + b"a" * 5000,
]


@pytest.mark.parametrize("message", MALFORMED_FIRST)
def test_malformed_client_first_rejected(message: bytes) -> None:
    server = server_for({"u": rfc_creds()})
    with pytest.raises(AuthenticationFailed, match="SCRAM"):
        server.first(message)


MALFORMED_FINAL = [
    b"", b"c=biws", b"c=biws,r=clientnonceservernonce", b"p=abc",
    b"c=biws,r=clientnonceservernonce,p=!!!",
    b"c=biws,r=clientnonceservernonce,p=" + base64.b64encode(b"short"),
    b"c=????,r=clientnonceservernonce,p=" + base64.b64encode(bytes(32)),
    b"c=eSws,r=clientnonceservernonce,p=" + base64.b64encode(bytes(32)),  # y,, but we sent n,,
    b"r=clientnonceservernonce,c=biws,p=" + base64.b64encode(bytes(32)),
]


@pytest.mark.parametrize("message", MALFORMED_FINAL)
def test_malformed_client_final_rejected(message: bytes) -> None:
    _, server, _ = _exchange()
    with pytest.raises(AuthenticationFailed):
        server.final(message)


@settings(max_examples=examples(300), deadline=None)
@given(data=st.binary(max_size=300))
def test_fuzz_server_first(data: bytes) -> None:
    server = server_for({"u": rfc_creds()})
    try:
        server.first(data)
    except (AuthenticationFailed, Unsupported):
        pass


_SCRAMISH = st.lists(st.sampled_from(
    [b"n", b"y", b"p=x", b",", b"=", b"n=", b"r=", b"s=", b"i=", b"c=", b"p=", b"m=", b"a=",
     b"biws", b"u", b"=2C", b"=3D", b"clientnonce", b"servernonce", b"4096", b"\xff", b"AAAA"]),
    max_size=16).map(b"".join)


@settings(max_examples=examples(300), deadline=None)
@given(first=st.one_of(st.binary(max_size=100), _SCRAMISH), final=st.one_of(
    st.binary(max_size=200), _SCRAMISH))
def test_fuzz_server_both_messages(first: bytes, final: bytes) -> None:
    server = server_for({"u": rfc_creds()}, nonce="servernonce")
    for message in (b"n,,n=u,r=clientnonce", first):
        server = server_for({"u": rfc_creds()}, nonce="servernonce")
        try:
            server.first(message)
        except (AuthenticationFailed, Unsupported):
            continue
        with pytest.raises(AuthenticationFailed):  # random bytes are never a valid proof
            server.final(final)


@settings(max_examples=examples(200), deadline=None)
@given(data=st.one_of(st.binary(max_size=200), _SCRAMISH))
def test_fuzz_client_final_and_verify(data: bytes) -> None:
    client = ScramClient("u", "pw", nonce="clientnonce")
    client.first()
    try:
        client.final(data)
    except AuthenticationFailed:
        return
    with pytest.raises(AuthenticationFailed):
        client.verify(data)
