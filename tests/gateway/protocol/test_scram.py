"""SCRAM-SHA-256 both sides: known answers (RFC 7677), round trips, failures that
look alike, verifier parsing, and interoperability with a real PostgreSQL that
demands passwords (an embedded server of our own with its own pg_hba.conf)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os

import asyncpg
import pytest

from gateway import embedded
from gateway.config import UpstreamConfig
from gateway.protocol.scram import (
    ScramClient, ScramError, ScramServer, Verifier, make_verifier, md5_password,
    salted_password,
)
from gateway.upstream import UpstreamError, connect_upstream

from ...conftest import run_async
from ..conftest import _VERIFIER


def exchange(verifier: Verifier | None, password: str) -> tuple[ScramClient, bytes]:
    client = ScramClient("ignored", password)
    server = ScramServer(verifier)
    server_first = server.client_first(client.first())
    final = client.final(server_first)
    return client, server.client_final(final)


# --- known answers ------------------------------------------------------------------

# RFC 7677 section 3: user "user", password "pencil"
RFC_CLIENT_FIRST_BARE = "n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = ("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC_CLIENT_FINAL = ("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_rfc7677_server_side():
    verifier = Verifier.parse(make_verifier("pencil", 4096, base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")))
    server = ScramServer(verifier)
    server._server_nonce = RFC_SERVER_NONCE        # the RFC's fixed nonce (not base64 of bytes)
    assert server.client_first(("n,," + RFC_CLIENT_FIRST_BARE).encode()).decode() == RFC_SERVER_FIRST
    assert server.client_final(RFC_CLIENT_FINAL.encode()).decode() == RFC_SERVER_FINAL


def test_rfc7677_client_side():
    client = ScramClient("user", "pencil")
    client._client_nonce = "rOprNGfwEbeRWgbNEkqO"
    client._client_first_bare = RFC_CLIENT_FIRST_BARE
    assert client.final(RFC_SERVER_FIRST.encode()).decode() == RFC_CLIENT_FINAL
    client.verify(RFC_SERVER_FINAL.encode())
    with pytest.raises(ScramError, match="signature"):
        client.verify(b"v=" + base64.b64encode(b"\0" * 32))


def test_make_verifier_matches_the_definition():
    salt = os.urandom(16)
    v = Verifier.parse(make_verifier("pw", 100, salt))
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 100)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert v.stored_key == hashlib.sha256(client_key).digest()
    assert v.server_key == hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert (v.iterations, v.salt) == (100, salt)
    assert make_verifier("pw") != make_verifier("pw")       # random salt each time


def test_md5_password_definition():
    inner = hashlib.md5(b"secretbob").hexdigest()
    assert md5_password("bob", "secret", b"abcd") == b"md5" + hashlib.md5(inner.encode() + b"abcd").hexdigest().encode()


# --- round trips and failures ------------------------------------------------------------

@pytest.mark.parametrize("password", ["secret", "", "pässwörd ñ", "日本語のパスワード", "a" * 200])
def test_round_trip(password):
    verifier = Verifier.parse(make_verifier(password, 64))
    client, server_final = exchange(verifier, password)
    client.verify(server_final)                              # the server proved it knows the verifier


def test_wrong_password_fails():
    verifier = Verifier.parse(make_verifier("right", 64))
    with pytest.raises(ScramError) as exc:
        exchange(verifier, "wrong")
    assert str(exc.value) == "password authentication failed"


def test_unknown_user_fails_exactly_like_a_wrong_password():
    verifier = Verifier.parse(make_verifier("right", 4096))
    with pytest.raises(ScramError) as wrong:
        exchange(verifier, "wrong")
    with pytest.raises(ScramError) as unknown:
        exchange(None, "whatever")
    assert str(wrong.value) == str(unknown.value)
    # the server-first-message looks the same: fresh salt, the default iteration count
    first = ScramServer(None).client_first(ScramClient("x", "y").first()).decode()
    attrs = dict(p.split("=", 1) for p in first.split(","))
    assert attrs["i"] == "4096" and len(base64.b64decode(attrs["s"])) == 16


def test_unknown_user_is_refused_even_when_the_proof_checks_out():
    # the made-up verifier of an unknown user must never let anyone in, even a client
    # that somehow produced a valid proof for it
    server = ScramServer(None)
    server.verifier = Verifier.parse(make_verifier("guessable", 64))
    client = ScramClient("x", "guessable")
    final = client.final(server.client_first(client.first()))
    with pytest.raises(ScramError, match="password authentication failed"):
        server.client_final(final)


@pytest.mark.parametrize("client_first,match", [
    (b"p=tls-server-end-point,,n=,r=abc", "channel binding"),
    (b"n,,", "nonce"),
    (b"n,", "malformed"),
    (b"n,,n=,x=1", "nonce"),
])
def test_bad_client_first(client_first, match):
    with pytest.raises(ScramError, match=match):
        ScramServer(Verifier.parse(make_verifier("pw", 64))).client_first(client_first)


def test_bad_client_final():
    verifier = Verifier.parse(make_verifier("pw", 64))
    cases = {
        "no proof": lambda nonce: f"c=biws,r={nonce}",
        "nonce mismatch": lambda nonce: f"c=biws,r={nonce}x,p=AAAA",
        "channel binding": lambda nonce: f"c=cD10bHM=,r={nonce},p=AAAA",
        "malformed proof": lambda nonce: f"c=biws,r={nonce},p=!!notbase64",
    }
    for match, make in cases.items():
        server = ScramServer(verifier)
        first = server.client_first(b"n,,n=,r=clientnonce").decode()
        nonce = first.split(",")[0][2:]
        with pytest.raises(ScramError, match=match):
            server.client_final(make(nonce).encode())
    server = ScramServer(verifier)
    with pytest.raises(ScramError, match="unexpected"):
        server.client_final(b"c=biws,r=x,p=AAAA")           # final before first
    server.client_first(b"n,,n=,r=abc")
    with pytest.raises(ScramError, match="unexpected"):
        server.client_first(b"n,,n=,r=abc")                  # first twice


def test_client_refuses_a_server_nonce_that_does_not_extend_its_own():
    client = ScramClient("u", "pw")
    with pytest.raises(ScramError, match="nonce"):
        client.final(b"r=someoneelse,s=c2FsdA==,i=4096")


# --- verifier parsing ------------------------------------------------------------------

GOOD = make_verifier("pw", 4096, b"0123456789abcdef")


def test_verifier_parse_and_str_round_trip():
    v = Verifier.parse(GOOD)
    assert str(v) == GOOD
    assert v.iterations == 4096 and v.salt == b"0123456789abcdef"


@pytest.mark.parametrize("text,match", [
    ("", "not a SCRAM-SHA-256 verifier"),
    ("secret-pw", "not a SCRAM-SHA-256 verifier"),
    ("md5" + "0" * 32, "not a SCRAM-SHA-256 verifier"),
    (GOOD.replace("SCRAM-SHA-256", "SCRAM-SHA-1"), "not a SCRAM-SHA-256 verifier"),
    (GOOD.replace("$4096:", "$many:"), "not a SCRAM-SHA-256 verifier"),
    (GOOD.replace("$4096:", "$0:"), "iteration count"),
    (GOOD.replace("$4096:", "$-5:"), "iteration count"),
    (GOOD.split(":")[0], "not a SCRAM-SHA-256 verifier"),             # keys missing
    (GOOD.rsplit(":", 1)[0], "not a SCRAM-SHA-256 verifier"),          # ServerKey missing
    (GOOD[:-6] + "!!!!=" , "not a SCRAM-SHA-256 verifier"),             # bad base64
    (GOOD.rsplit(":", 1)[0] + ":" + base64.b64encode(b"short").decode(), "key lengths"),
])
def test_verifier_parse_errors(text, match):
    with pytest.raises(ValueError, match=match) as exc:
        Verifier.parse(text)
    if "not a SCRAM" in match:
        assert "piigate passwd" in str(exc.value)            # says what to do next


# --- a real PostgreSQL that demands passwords ---------------------------------------------

ROLES = {"scram": "scram-sha-256", "md5": "md5", "plain": "password"}


class AuthPg:
    """An embedded PostgreSQL whose pg_hba.conf asks for passwords over TCP:
    role piigate_scram: scram-sha-256, piigate_md5: md5, piigate_plain: password
    (cleartext), piigate_any: scram-sha-256; the superuser keeps trust."""

    def __init__(self, server: embedded.EmbeddedPostgres):
        self.server = server
        self.host, self.port = server.host, server.port

    def role(self, kind: str) -> str:
        return f"piigate_{kind}"

    def upstream(self, kind: str, password: str | None, **kw) -> UpstreamConfig:
        return UpstreamConfig(host=self.host, port=self.port, user=self.role(kind), password=password,
                              database="postgres", connect_timeout_s=10, **kw)

    def su_dsn(self) -> str:
        return self.server.dsn("postgres")


@pytest.fixture(scope="module")
def auth_pg():
    try:
        server = embedded.start_postgres()
    except embedded.EmbeddedServerError as e:
        pytest.skip(f"no embedded PostgreSQL to configure password authentication on: {e}")
    try:
        hba = server.data_dir / "pg_hba.conf"
        rules = ["host all postgres 127.0.0.1/32 trust"]
        rules += [f"host all piigate_{kind} 127.0.0.1/32 {method}" for kind, method in ROLES.items()]
        rules += ["host all piigate_any 127.0.0.1/32 scram-sha-256"]
        hba.write_text("\n".join(rules) + "\n" + hba.read_text())

        async def setup():
            conn = await asyncpg.connect(server.dsn("postgres"))
            try:
                await conn.execute("SELECT pg_reload_conf()")
                await conn.execute("SET password_encryption = 'scram-sha-256'")
                await conn.execute("CREATE ROLE piigate_scram LOGIN PASSWORD 'scram-pw'")
                await conn.execute("CREATE ROLE piigate_plain LOGIN PASSWORD 'plain-pw'")
                await conn.execute("CREATE ROLE piigate_any LOGIN")
                await conn.execute("SET password_encryption = 'md5'")
                await conn.execute("CREATE ROLE piigate_md5 LOGIN PASSWORD 'md5-pw'")
            finally:
                await conn.close()
        run_async(setup)
        yield AuthPg(server)
    finally:
        server.stop()


async def test_pg_really_demands_passwords(auth_pg):
    # guards every test below: without this, trust auth would make them pass vacuously
    for kind in ("scram", "md5", "plain"):
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(host=auth_pg.host, port=auth_pg.port, user=auth_pg.role(kind),
                                  password="wrong", database="postgres", ssl=False)
    conn = await asyncpg.connect(host=auth_pg.host, port=auth_pg.port, user="piigate_scram",
                                 password="scram-pw", database="postgres", ssl=False)
    await conn.close()


async def _set_password(auth_pg: AuthPg, role: str, secret: str) -> str:
    conn = await asyncpg.connect(auth_pg.su_dsn())
    try:
        await conn.execute(f"ALTER ROLE {role} PASSWORD '{secret}'")
        return await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
    finally:
        await conn.close()


@pytest.mark.parametrize("password", ["gateway-made", "pässwörd ñ 日本"])
async def test_make_verifier_is_accepted_by_postgresql(auth_pg, password):
    verifier = make_verifier(password, 4096)
    stored = await _set_password(auth_pg, "piigate_any", verifier)
    assert stored == verifier                 # PostgreSQL took it as a verifier, not as a password
    conn = await asyncpg.connect(host=auth_pg.host, port=auth_pg.port, user="piigate_any",
                                 password=password, database="postgres", ssl=False)
    try:
        assert await conn.fetchval("SELECT current_user") == "piigate_any"
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host=auth_pg.host, port=auth_pg.port, user="piigate_any",
                              password=password + "x", database="postgres", ssl=False)


async def test_postgresql_made_verifier_works_in_the_gateway_server(auth_pg):
    stored = await _set_password(auth_pg, "piigate_any", "made-by-postgres")
    verifier = Verifier.parse(stored)         # pg_authid's format is ours
    client, server_final = exchange(verifier, "made-by-postgres")
    client.verify(server_final)
    with pytest.raises(ScramError):
        exchange(verifier, "made-by-postgres!")


@pytest.mark.parametrize("kind,password", [("scram", "scram-pw"), ("md5", "md5-pw"), ("plain", "plain-pw")])
async def test_connect_upstream_with_each_method(auth_pg, kind, password):
    conn = await connect_upstream(auth_pg.upstream(kind, password), {"application_name": "piigate-test"})
    try:
        assert conn.tx_status == "I" and conn.backend_pid > 0 and len(conn.backend_secret) == 4
        assert conn.parameters["application_name"] == "piigate-test"
        assert "server_version" in conn.parameters
        # the connection really is logged in as the role: ask the server
        conn.writer.write(b"Q" + (4 + len(b"SELECT current_user\0")).to_bytes(4, "big") + b"SELECT current_user\0")
        await conn.writer.drain()
        data = conn.leftover
        while b"Z\x00\x00\x00\x05" not in data:
            chunk = await asyncio.wait_for(conn.reader.read(65536), 10)
            assert chunk
            data += chunk
        assert auth_pg.role(kind).encode() in data
    finally:
        conn.writer.close()


@pytest.mark.parametrize("kind", ["scram", "md5", "plain"])
async def test_connect_upstream_wrong_password(auth_pg, kind):
    with pytest.raises(UpstreamError) as exc:
        await connect_upstream(auth_pg.upstream(kind, "wrong"), {})
    e = exc.value
    assert e.sqlstate == "08001"
    assert str(e) == "the gateway could not log in to the database"
    assert e.upstream_error is not None and e.upstream_error.sqlstate == "28P01"


async def test_connect_upstream_without_a_configured_password(auth_pg):
    with pytest.raises(UpstreamError) as exc:
        await connect_upstream(auth_pg.upstream("scram", None), {})
    assert exc.value.sqlstate == "08001"
    assert "upstream.password" in exc.value.hint


async def test_connect_upstream_unicode_password(auth_pg):
    await _set_password(auth_pg, "piigate_any", "Ünïcødé pässwörd")
    conn = await connect_upstream(auth_pg.upstream("any", "Ünïcødé pässwörd"), {})
    conn.writer.close()


async def test_connect_upstream_password_needing_saslprep(auth_pg):
    await _set_password(auth_pg, "piigate_any", "pass\u00adword")
    conn = await connect_upstream(auth_pg.upstream("any", "pass\u00adword"), {})
    conn.writer.close()


async def test_salted_password_uses_postgresql_normalisation_for_nfkc(auth_pg):
    # U+FB01 (ligature fi) is NFKC-normalised to "fi" by PostgreSQL's SASLprep too
    await _set_password(auth_pg, "piigate_any", "\ufb01ne")
    conn = await connect_upstream(auth_pg.upstream("any", "fine"), {})
    conn.writer.close()
    assert salted_password("\ufb01ne", b"s", 2) == salted_password("fine", b"s", 2)


async def test_gateway_logs_in_to_a_scram_upstream(auth_pg, gateway_factory, monkeypatch):
    """The whole path: a client authenticates to the gateway (SCRAM, gateway user alice)
    and the gateway logs in upstream with its own SCRAM credentials from the config."""
    monkeypatch.setenv("PIIGATE_TEST_UPSTREAM_PW", "scram-pw")
    gw = gateway_factory(config_text=_config(auth_pg, 'password_env = "PIIGATE_TEST_UPSTREAM_PW"'))
    conn = await asyncpg.connect(gw.dsn("postgres"), ssl=False)
    try:
        assert await conn.fetchval("SELECT current_user") == "piigate_scram"
    finally:
        await conn.close()
    # the full runtime refuses to start with wrong upstream credentials (it reads the schema)...
    from gateway.config import ConfigError
    with pytest.raises(ConfigError, match="password authentication failed"):
        gateway_factory(config_text=_config(auth_pg, 'password = "not-it"'))
    # ...and the bare server, should the password change under it, tells clients 08001
    from gateway.server import Gate
    bad = gateway_factory(config_text=_config(auth_pg, 'password = "not-it"'), gate_factory=lambda cfg: Gate())
    with pytest.raises(asyncpg.PostgresError) as exc:
        await asyncpg.connect(bad.dsn("postgres"), ssl=False)
    text = str(exc.value) + str(getattr(exc.value, "hint", ""))
    assert exc.value.sqlstate == "08001"
    assert "the gateway could not log in to the database" in text
    assert "piigate_scram" not in text and "not-it" not in text   # upstream details stay hidden


def _config(auth_pg: AuthPg, password_line: str) -> str:
    return f"""
[server]
listen = "127.0.0.1:0"

[upstream]
host = "{auth_pg.host}"
port = {auth_pg.port}
user = "piigate_scram"
{password_line}
database = "postgres"

[users.alice]
password_verifier = "{_VERIFIER}"
"""

