"""Just-in-time approval end to end: real gateway, real Redis, real clients.

A statement that needs approval waits inside the user's own session; an approver
approves through the admin API; the same statement runs, without a reconnect.
"""
from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time

import aiohttp
import psycopg
import pytest

from .conftest import PASSWORD, gateway_toml

APPROVER_TOKEN = "approver-token-for-tests"
POLICY = """
[defaults]
pii_read = "mask"
[masking]
default = "redact"
[[rule]]
name = "support-needs-approval"
roles = ["support"]
actions = ["read"]
categories = ["*"]
effect = "approve"
[rule.approval]
approver_groups = ["leads"]
max_duration = "30m"
reason_required = true
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(pg, db, tmp_path, redis_url, prefix, *, hold=20, admin_port=0, jit_extra="",
            policy=None) -> str:
    (tmp_path / "policy.toml").write_text(policy or POLICY)
    extra = f"""
[policy]
file = "{tmp_path / 'policy.toml'}"
[redis]
url = "{redis_url}"
prefix = "{prefix}"
[jit]
hold_timeout_s = {hold}
{jit_extra}
[admin]
listen = "127.0.0.1:{admin_port or _free_port()}"
[[admin.approvers]]
name = "lee"
token_sha256 = "{hashlib.sha256(APPROVER_TOKEN.encode()).hexdigest()}"
groups = ["leads"]
"""
    return gateway_toml(pg, users={"sam": ["support"], "lee": ["leads"]}, extra=extra, database=db)


@pytest.fixture
def jit_gateway(gateway_factory, pg_server, sample_db, tmp_path, redis_url, redis_prefix):
    """jit_gateway(hold=..., jit_extra=..., policy=...) -> a gateway with policy, Redis and admin API."""
    def make(**kw):
        gw = gateway_factory(config_text=_config(pg_server, sample_db.dbname, tmp_path, redis_url,
                                                 redis_prefix, **kw))
        gw.dbname = sample_db.dbname
        gw.admin = f"http://127.0.0.1:{gw.runtime.admin_port}"
        return gw
    return make


async def _pending(admin: str, timeout: float = 10.0) -> dict:
    headers = {"Authorization": f"Bearer {APPROVER_TOKEN}"}
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=headers) as http:
        while time.monotonic() < deadline:
            async with http.get(f"{admin}/api/v1/requests", params={"state": "pending"}) as r:
                body = await r.json()
                items = body.get("requests", body) if isinstance(body, dict) else body
                if items:
                    return items[0]
            await asyncio.sleep(0.05)
    raise AssertionError("no pending request appeared")


async def _post(admin: str, path: str, body: dict) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {APPROVER_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{admin}{path}", json=body) as r:
            return r.status, await r.json()


def _run_in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e
    t = threading.Thread(target=run)
    t.start()
    return t, box


async def test_hold_then_approve_releases_the_same_session(jit_gateway):
    gw = jit_gateway()
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.execute("SET piigate.reason = 'TICKET-7 refund'")
    released = {}

    def held_query():
        row = conn.execute("SELECT email FROM customers WHERE id = 7").fetchone()
        released["at"] = time.perf_counter()
        return row

    t, box = _run_in_thread(held_query)
    try:
        req = await _pending(gw.admin)
        assert req["principal"] == "sam" if "principal" in req else True
        await asyncio.sleep(0.2)
        assert t.is_alive(), "the statement should be held"
        approved_at = time.perf_counter()
        status, body = await _post(gw.admin, f"/api/v1/requests/{req['id']}/approve",
                                   {"duration": "5m", "scope": "columns"})
        assert status in (200, 201), body
        t.join(10)
        assert box.get("value") == ("user07@example.invalid",), box
        latency_ms = (released["at"] - approved_at) * 1000
        print(f"hold-to-release after approval: {latency_ms:.1f} ms")
        assert latency_ms < 1000
        assert any(req["id"] in n for n in notices), notices
        # the grant now covers the same columns without a new request
        assert conn.execute("SELECT email FROM customers WHERE id = 8").fetchone() == ("user08@example.invalid",)
    finally:
        t.join(10)
        conn.close()


async def test_denied_request_ends_the_hold_with_the_reason(jit_gateway):
    gw = jit_gateway()
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    conn.execute("SET piigate.reason = 'TICKET-8 curiosity'")
    t, box = _run_in_thread(lambda: conn.execute("SELECT ssn FROM customers WHERE id = 1").fetchone())
    try:
        req = await _pending(gw.admin)
        status, body = await _post(gw.admin, f"/api/v1/requests/{req['id']}/deny",
                                   {"reason": "not for curiosity"})
        assert status in (200, 201), body
        t.join(10)
        err = box.get("error")
        assert isinstance(err, psycopg.errors.InsufficientPrivilege), box
        assert "not for curiosity" in str(err)
        # the session goes on
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (30,)
    finally:
        t.join(10)
        conn.close()


def test_hold_times_out_with_the_request_id(jit_gateway):
    gw = jit_gateway(hold=1)
    with psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True) as conn:
        conn.execute("SET piigate.reason = 'TICKET-9'")
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute("SELECT phone FROM customers WHERE id = 2")
        assert time.monotonic() - t0 < 10
        assert "req-" in str(exc.value) and "not approved" in str(exc.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_reason_required_before_a_request(jit_gateway):
    gw = jit_gateway()
    with psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute("SELECT phone FROM customers WHERE id = 2")
        assert "reason" in str(exc.value)
        # a leading comment is a reason too
        t0 = time.monotonic()


async def test_cancel_while_held_abandons_the_request(jit_gateway):
    gw = jit_gateway()
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    conn.execute("SET piigate.reason = 'TICKET-10'")
    t, box = _run_in_thread(lambda: conn.execute("SELECT email FROM customers WHERE id = 3").fetchone())
    try:
        req = await _pending(gw.admin)
        conn.cancel_safe(timeout=5)
        t.join(10)
        assert isinstance(box.get("error"), psycopg.errors.QueryCanceled), box
        assert conn.execute("SELECT 1").fetchone() == (1,)
        headers = {"Authorization": f"Bearer {APPROVER_TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{gw.admin}/api/v1/requests/{req['id']}") as r:
                body = await r.json()
        state = body.get("state") or body.get("request", {}).get("state")
        assert state == "abandoned", body
    finally:
        t.join(10)
        conn.close()


def test_redis_unreachable_fails_closed_only_for_statements_that_need_a_grant(
        gateway_factory, pg_server, sample_db, tmp_path, redis_prefix):
    closed = f"redis://127.0.0.1:{_free_port()}/0"
    gw = gateway_factory(config_text=_config(pg_server, sample_db.dbname, tmp_path, closed, redis_prefix))
    with psycopg.connect(gw.dsn(sample_db.dbname, user="sam"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (30,)
        conn.execute("SET piigate.reason = 'TICKET-11'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute("SELECT email FROM customers WHERE id = 4")
        assert "unavailable" in str(exc.value)
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (30,)


async def test_two_instances_share_one_redis(gateway_factory, pg_server, sample_db, tmp_path,
                                             redis_url, redis_prefix):
    a = gateway_factory(config_text=_config(pg_server, sample_db.dbname, tmp_path, redis_url, redis_prefix))
    b = gateway_factory(config_text=_config(pg_server, sample_db.dbname, tmp_path, redis_url, redis_prefix))
    admin_b = f"http://127.0.0.1:{b.runtime.admin_port}"
    conn = psycopg.connect(a.dsn(sample_db.dbname, user="sam"), autocommit=True)
    conn.execute("SET piigate.reason = 'TICKET-12'")
    t, box = _run_in_thread(lambda: conn.execute("SELECT email FROM customers WHERE id = 5").fetchone())
    try:
        req = await _pending(admin_b)
        status, body = await _post(admin_b, f"/api/v1/requests/{req['id']}/approve", {"duration": "5m"})
        assert status in (200, 201), body
        t.join(10)
        assert box.get("value") == ("user05@example.invalid",), box
    finally:
        t.join(10)
        conn.close()


async def _approve_pending_for(gw, conn, sql: str, t_box=None) -> dict:
    t, box = _run_in_thread(lambda: conn.execute(sql).fetchone())
    req = await _pending(gw.admin)
    status, body = await _post(gw.admin, f"/api/v1/requests/{req['id']}/approve",
                               {"duration": "5m", "scope": "columns"})
    assert status in (200, 201), body
    t.join(10)
    assert "value" in box, box
    grant = body.get("grant") or {}
    return grant


async def test_revoke_takes_effect_for_the_next_statement(jit_gateway):
    gw = jit_gateway(hold=1)
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    try:
        conn.execute("SET piigate.reason = 'TICKET-13'")
        grant = await _approve_pending_for(gw, conn, "SELECT email FROM customers WHERE id = 1")
        assert conn.execute("SELECT email FROM customers WHERE id = 2").fetchone() == ("user02@example.invalid",)
        status, body = await _post(gw.admin, f"/api/v1/grants/{grant['id']}/revoke", {})
        assert status == 200, body
        await asyncio.sleep(0.2)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT email FROM customers WHERE id = 3")      # held again, times out
    finally:
        conn.close()


async def test_revoke_can_end_a_session_inside_a_transaction_under_the_grant(jit_gateway):
    gw = jit_gateway(jit_extra="end_sessions_on_revoke = true")
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    try:
        conn.execute("SET piigate.reason = 'TICKET-14'")
        conn.execute("BEGIN")
        grant = await _approve_pending_for(gw, conn, "SELECT email FROM customers WHERE id = 1")
        status, body = await _post(gw.admin, f"/api/v1/grants/{grant['id']}/revoke", {})
        assert status == 200, body
        await asyncio.sleep(0.3)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("SELECT 1")
        assert "revoked" in str(exc.value)
        assert conn.broken or conn.closed
    finally:
        conn.close()


TOTP_SECRET = "JBSWY3DPEHPK3PXP"


async def test_totp_self_service_step_up_in_the_session(jit_gateway):
    from gateway.jit.totp import decode_secret, totp
    policy = POLICY.replace("reason_required = true", "reason_required = true\nself_service_totp = true")
    gw = jit_gateway(policy=policy, jit_extra=f'[jit.totp]\nsam = "{TOTP_SECRET}"')
    with psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True) as conn:
        conn.execute("SET piigate.reason = 'TICKET-15'")
        conn.execute("SET piigate.totp = '000000'")            # wrong: refused, not held
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute("SELECT email FROM customers WHERE id = 6")
        assert "TOTP" in str(exc.value)
        code = totp(decode_secret(TOTP_SECRET), time.time())
        conn.execute(f"SET piigate.totp = '{code}'")
        t0 = time.monotonic()
        assert conn.execute("SELECT email FROM customers WHERE id = 6").fetchone() == ("user06@example.invalid",)
        assert time.monotonic() - t0 < 5                         # no approver involved


async def test_one_time_token_works_once_and_only_for_its_user(jit_gateway):
    gw = jit_gateway(hold=1, jit_extra='token_key = "a-test-token-key-of-enough-length"')
    status, body = await _post(gw.admin, "/api/v1/tokens",
                               {"user": "sam", "action": "read", "scope": "columns",
                                "categories": ["email"], "ttl": "5m", "duration": "5m"})
    assert status == 201, body
    token = body["token"]
    with psycopg.connect(gw.dsn(gw.dbname, user="lee"), autocommit=True) as other:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            other.execute(f"SET piigate.grant_token = '{token}'")          # not lee's token
    with psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True) as conn:
        conn.execute(f"SET piigate.grant_token = '{token}'")
        conn.execute("SET piigate.reason = 'TICKET-16'")
        assert conn.execute("SELECT email FROM customers WHERE id = 9").fetchone() == ("user09@example.invalid",)
    with psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SET piigate.grant_token = '{token}'")           # used once already


async def test_statements_and_cursors_decided_under_a_grant_stop_with_it(jit_gateway):
    """A prepared statement (SQL or protocol level) or a WITH HOLD cursor decided under
    a grant must not outlive it: after the revoke, EXECUTE and protocol Binds of them
    are refused (before, they went on returning clear values), and a session with a
    cursor still open under it is ended (a protocol Execute of the cursor is not a
    message the gateway checks)."""
    import struct
    from gateway.protocol import codec
    from .rawclient import RawClient, errors
    gw = jit_gateway(hold=1)
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    with_cursor = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    raw = None
    try:
        conn.execute("SET piigate.reason = 'TICKET-21'")
        with_cursor.execute("SET piigate.reason = 'TICKET-21'")
        grant = await _approve_pending_for(gw, conn, "SELECT email FROM customers WHERE id = 1")
        conn.execute("PREPARE p AS SELECT email FROM customers WHERE id < 4 ORDER BY id")
        with_cursor.execute("DECLARE cur CURSOR WITH HOLD FOR SELECT email FROM customers ORDER BY id")
        assert conn.execute("EXECUTE p").fetchone() == ("user01@example.invalid",)
        assert with_cursor.execute("FETCH 1 FROM cur").fetchone() == ("user01@example.invalid",)
        raw = RawClient("127.0.0.1", gw.port, "sam", PASSWORD, gw.dbname, timeout=10)
        assert not errors(raw.query("SET piigate.reason = 'TICKET-21'"))
        assert not errors(raw.query("PREPARE q AS SELECT email FROM customers WHERE id = 2"))
        status, body = await _post(gw.admin, f"/api/v1/grants/{grant['id']}/revoke", {})
        assert status == 200, body
        await asyncio.sleep(0.3)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute("EXECUTE p")
        assert grant["id"] in str(exc.value)
        with pytest.raises(psycopg.Error):
            with_cursor.execute("FETCH 1 FROM cur")
        assert with_cursor.closed or with_cursor.broken
        # the protocol-level route to a SQL-level prepared statement
        raw.received.clear()
        raw.sock.sendall(codec.frame(b"B", b"\x00q\x00" + struct.pack("!hhh", 0, 0, 0))
                         + codec.frame(b"E", b"\x00" + struct.pack("!i", 0)) + codec.frame(b"S"))
        msgs = raw._until_ready()
        assert [e.sqlstate for e in errors(msgs)] == ["42501"], msgs
        assert b"example.invalid" not in raw.received
    finally:
        conn.close()
        with_cursor.close()
        if raw is not None:
            raw.close()


async def test_a_grant_with_one_use_covers_one_execution(jit_gateway):
    """uses = 1: the statement it was approved for runs once; executing a statement
    prepared under it again needs the grant again (before, every later Bind ran)."""
    gw = jit_gateway(hold=1)
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    try:
        conn.execute("SET piigate.reason = 'TICKET-22'")
        sql = "SELECT email FROM customers WHERE id = %s"
        t, box = _run_in_thread(lambda: conn.execute(sql, (1,), prepare=True).fetchone())
        req = await _pending(gw.admin)
        status, body = await _post(gw.admin, f"/api/v1/requests/{req['id']}/approve",
                                   {"duration": "5m", "scope": "columns", "uses": 1})
        assert status in (200, 201), body
        t.join(10)
        assert box.get("value") == ("user01@example.invalid",), box
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute(sql, (2,), prepare=True).fetchone()      # the same prepared statement again
        assert "limited number of uses" in str(exc.value) or "approval" in str(exc.value)
    finally:
        conn.close()


# -- statement scope: the grant covers the statement the approver saw, nothing else -------------

async def _approve_statement(gw, conn, sql: str, params=None, prepare=None) -> tuple[dict, object]:
    """Hold ``sql``, approve its request with scope statement; (request, first row)."""
    before = {r["id"] for r in await _all_pending(gw.admin)}    # earlier ones left pending
    t, box = _run_in_thread(lambda: conn.execute(sql, params, prepare=prepare).fetchall())
    try:
        deadline = time.monotonic() + 10
        while not (fresh := [r for r in await _all_pending(gw.admin) if r["id"] not in before]):
            assert time.monotonic() < deadline, "no new pending request"
            await asyncio.sleep(0.05)
        req = fresh[0]
        status, body = await _post(gw.admin, f"/api/v1/requests/{req['id']}/approve",
                                   {"duration": "2m", "scope": "statement"})
        assert status in (200, 201), body
        t.join(10)
    finally:
        t.join(10)
    assert "value" in box, box
    return req, box["value"]


async def _all_pending(admin: str) -> list[dict]:
    headers = {"Authorization": f"Bearer {APPROVER_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{admin}/api/v1/requests", params={"state": "pending"}) as r:
            return (await r.json())["requests"]


def _refused(conn, sql: str, params=None, prepare=None) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(sql, params, prepare=prepare).fetchall()


async def test_statement_grant_does_not_cover_other_constants_or_in_list_lengths(jit_gateway):
    """Approved: IN (7) LIMIT 1. Same fingerprint, other exposure: IN (1..10) LIMIT 50
    returned ten SSNs in clear (the grant compared pg_query fingerprints only)."""
    gw = jit_gateway(hold=2)
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    try:
        conn.execute("SET piigate.reason = 'TICKET-31'")
        approved = "SELECT id, ssn FROM customers WHERE id IN (7) LIMIT 1"
        req, rows = await _approve_statement(gw, conn, approved)
        assert rows == [(7, "000-00-0007")]
        assert "000-00-0007" not in str(req) and "IN ($1) LIMIT $2" in req["redacted_sql"]
        assert conn.execute(approved).fetchall() == [(7, "000-00-0007")]     # the same statement again
        wider = "SELECT id, ssn FROM customers WHERE id IN (1,2,3,4,5,6,7,8,9,10) LIMIT 50"
        _refused(conn, wider)
        _refused(conn, "SELECT id, ssn FROM customers WHERE id IN (8) LIMIT 1")
        _refused(conn, "SELECT id, ssn FROM customers WHERE id IN (7) LIMIT 50")
    finally:
        conn.close()


async def test_statement_grant_for_a_parameter_does_not_cover_an_in_list(jit_gateway):
    gw = jit_gateway(hold=2)
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    try:
        conn.execute("SET piigate.reason = 'TICKET-32'")
        _, rows = await _approve_statement(gw, conn, "SELECT id, ssn FROM customers WHERE id = %s", (3,),
                                           prepare=True)
        assert rows == [(3, "000-00-0003")]
        _refused(conn, "SELECT id, ssn FROM customers WHERE id IN (1,2,3)")
        _refused(conn, "SELECT id, ssn FROM customers WHERE id IN (%s, %s, %s)", (1, 2, 3), prepare=True)
    finally:
        conn.close()


async def test_statement_grant_does_not_cover_swapped_aliases(jit_gateway):
    """Output and table aliases are not in the fingerprint: swapping them turned an
    approved statement that returns ids into one that returns every SSN."""
    gw = jit_gateway(hold=2)
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    try:
        conn.execute("SET piigate.reason = 'TICKET-33'")
        _, rows = await _approve_statement(
            gw, conn, "SELECT t.a FROM (SELECT id::text AS a, ssn AS b FROM customers) t LIMIT 1")
        assert rows and not rows[0][0].startswith("000-")
        _refused(conn, "SELECT t.a FROM (SELECT id::text AS b, ssn AS a FROM customers) t LIMIT 100")
        conn.execute("SET piigate.reason = 'TICKET-34'")
        _, rows = await _approve_statement(
            gw, conn, "SELECT x.id FROM (SELECT id FROM customers) x, (SELECT ssn AS id FROM customers) y LIMIT 1")
        assert rows and isinstance(rows[0][0], int)
        _refused(conn, "SELECT x.id FROM (SELECT id FROM customers) y, (SELECT ssn AS id FROM customers) x LIMIT 1")
    finally:
        conn.close()


async def test_statement_grant_is_bound_to_the_search_path(gateway_factory, pg_server, sample_db_fresh,
                                                          tmp_path, redis_url, redis_prefix):
    """The same text under another search_path reads other relations: not covered."""
    with psycopg.connect(str(sample_db_fresh), autocommit=True) as admin:
        admin.execute("CREATE SCHEMA other; CREATE TABLE other.customers (LIKE public.customers); "
                      "INSERT INTO other.customers SELECT * FROM public.customers; "
                      "COMMENT ON COLUMN other.customers.ssn IS 'pii:ssn'")
    gw = gateway_factory(config_text=_config(pg_server, sample_db_fresh.dbname, tmp_path, redis_url,
                                             redis_prefix, hold=2))
    gw.dbname, gw.admin = sample_db_fresh.dbname, f"http://127.0.0.1:{gw.runtime.admin_port}"
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    try:
        conn.execute("SET piigate.reason = 'TICKET-35'")
        sql = "SELECT id, ssn FROM customers WHERE id IN (7) LIMIT 1"
        _, rows = await _approve_statement(gw, conn, sql)
        assert rows == [(7, "000-00-0007")]
        conn.execute("SET search_path = other, public")
        _refused(conn, sql)
        conn.execute("RESET search_path")
        assert conn.execute(sql).fetchall() == [(7, "000-00-0007")]
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["close", "reset", "half-close"])
async def test_a_client_gone_while_its_statement_is_held_leaves_the_gateway_serving(jit_gateway, how):
    """A held statement whose client disconnects (closes, resets, or half-closes)
    while it waits: the request is abandoned, the session ends, and the gateway goes
    on serving everyone else (a red-team run saw the process exit once around here)."""
    import socket
    import struct
    from gateway.protocol import codec
    from .rawclient import RawClient, errors
    gw = jit_gateway(hold=2)
    raw = RawClient("127.0.0.1", gw.port, "sam", PASSWORD, gw.dbname, timeout=10)
    assert not errors(raw.query("SET piigate.reason = 'TICKET-41'"))
    raw.sock.sendall(codec.encode_query("SELECT email FROM customers WHERE id = 4"))
    await _pending(gw.admin)
    if how == "reset":
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.sock.close()
    elif how == "half-close":
        raw.sock.shutdown(socket.SHUT_WR)
    else:
        raw.sock.close()
    await asyncio.sleep(3)                                   # past the hold timeout
    assert gw.runtime is not None and not gw.loop.is_closed() and gw.thread.is_alive()
    conn = psycopg.connect(gw.dsn(gw.dbname, user="lee"), autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()
        if how == "half-close":
            raw.sock.close()
