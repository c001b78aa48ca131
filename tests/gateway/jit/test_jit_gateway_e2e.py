"""End to end: a statement held inside a live psycopg session by the real gateway, then
approved (or denied, or timed out) through the admin API over HTTP, on real
PostgreSQL and Redis. Same session throughout: no reconnect."""
from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from gateway.admin import hash_token
from tests.gateway.conftest import gateway_toml

ROOT = Path(__file__).resolve().parents[3]
APPROVER_TOKEN = "e2e-approver-token"

POLICY = """
[defaults]
pii_read = "mask"
write_pii = "deny"
export = "deny"
unknown = "deny"
ddl = "deny"

[[rule]]
name = "ssn-needs-approval"
roles = ["analyst"]
actions = ["read"]
categories = ["ssn"]
effect = "approve"
approval = { approver_groups = ["dba"], max_duration = "1h" }
"""


def start_jit_gateway(gateway_factory, pg_server, db, tmp_path, redis_url, redis_prefix):
    (tmp_path / "policy.toml").write_text(POLICY)
    shutil.copy(ROOT / "examples" / "catalog.toml", tmp_path / "catalog.toml")
    extra = f"""
[policy]
file = "{tmp_path / 'policy.toml'}"
[catalog]
file = "{tmp_path / 'catalog.toml'}"
[redis]
url = "{redis_url}"
prefix = "{redis_prefix}"
[jit]
hold_timeout_s = 3
[admin]
listen = "127.0.0.1:0"
[[admin.approvers]]
name = "bob"
token_sha256 = "{hash_token(APPROVER_TOKEN)}"
groups = ["dba"]
"""
    text = gateway_toml(pg_server, users={"ann": ["analyst"]}, extra=extra, database=db.dbname)
    gw = gateway_factory(config_text=text)
    gw.dbname = db.dbname
    gw.admin = f"http://127.0.0.1:{gw.runtime.admin_port}/api/v1"
    return gw


@pytest.fixture
def jit_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path, redis_url, redis_prefix):
    return start_jit_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path, redis_url,
                             redis_prefix)


def api(gw, method: str, path: str, body=None):
    req = urllib.request.Request(f"{gw.admin}/{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {APPROVER_TOKEN}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def connect(gw) -> psycopg.Connection:
    from tests.gateway.conftest import PASSWORD
    conn = psycopg.connect(gw.dsn(gw.dbname, user="ann", password=PASSWORD), autocommit=True)
    conn.notices = []
    conn.add_notice_handler(lambda d: conn.notices.append(d.message_primary))
    return conn


def pending_request(gw, deadline_s=5.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = api(gw, "GET", "requests?state=pending&user=ann")["requests"]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("no pending access request appeared")


async def test_hold_approve_release_in_the_same_session(jit_gateway):
    gw = jit_gateway
    conn = connect(gw)
    try:
        sql = "SELECT ssn FROM customers WHERE id = 1"
        held = asyncio.get_running_loop().run_in_executor(None, lambda: conn.execute(sql).fetchall())
        req = await asyncio.to_thread(pending_request, gw)
        assert req["principal"] == "ann" and ["public", "customers", "ssn"] in req["columns"]
        assert "ssn" in req["redacted_sql"] and "= 1" not in req["redacted_sql"]   # literal redacted
        t0 = time.perf_counter()
        out = await asyncio.to_thread(api, gw, "POST", f"requests/{req['id']}/approve",
                                      {"duration": "10m", "scope": "statement"})
        rows = await asyncio.wait_for(held, 10)
        ms = (time.perf_counter() - t0) * 1000
        print(f"\nHTTP approve -> rows back in the held psycopg session: {ms:.1f} ms")
        assert out["grant"]["principal"] == "ann"
        assert len(rows) == 1 and rows[0][0] and "*" not in rows[0][0]     # the real ssn
        assert any(req["id"] in n for n in conn.notices)                    # the client was told
        # The grant is for this statement: the same one runs again without a hold ...
        t1 = time.perf_counter()
        assert conn.execute(sql).fetchall() == rows
        assert time.perf_counter() - t1 < 1.0
        # ... until it is revoked.
        api(gw, "POST", f"grants/{out['grant']['id']}/revoke", {})
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            await asyncio.to_thread(lambda: conn.execute(sql).fetchall())
        assert "not approved within" in str(e.value)
    finally:
        conn.close()


async def test_hold_denied_then_session_continues(jit_gateway):
    gw = jit_gateway
    conn = connect(gw)
    try:
        held = asyncio.get_running_loop().run_in_executor(
            None, lambda: conn.execute("SELECT ssn FROM customers WHERE id = 2").fetchall())
        req = await asyncio.to_thread(pending_request, gw)
        await asyncio.to_thread(api, gw, "POST", f"requests/{req['id']}/deny",
                                {"reason": "use the masked report"})
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            await asyncio.wait_for(held, 10)
        assert "use the masked report" in str(e.value)
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] > 0
    finally:
        conn.close()


async def test_cancel_while_held_abandons_the_request(jit_gateway):
    gw = jit_gateway
    conn = connect(gw)
    try:
        held = asyncio.get_running_loop().run_in_executor(
            None, lambda: conn.execute("SELECT ssn FROM customers WHERE id = 3").fetchall())
        req = await asyncio.to_thread(pending_request, gw)
        # cancel_safe, not cancel: libpq's blocking PQcancel keeps the GIL while it waits
        # for the server to close the socket, and this server runs in our own process.
        await asyncio.to_thread(conn.cancel_safe, timeout=5)
        with pytest.raises(psycopg.errors.QueryCanceled):
            await asyncio.wait_for(held, 10)
        for _ in range(100):
            state = (await asyncio.to_thread(api, gw, "GET", f"requests/{req['id']}"))["state"]
            if state == "abandoned":
                break
            await asyncio.sleep(0.02)
        assert state == "abandoned"
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()


async def test_held_on_one_instance_approved_through_the_other(
        gateway_factory, pg_server, sample_db_fresh, tmp_path, redis_url, redis_prefix):
    gw1 = start_jit_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path, redis_url, redis_prefix)
    gw2 = start_jit_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path, redis_url, redis_prefix)
    assert gw1.admin != gw2.admin
    conn = connect(gw1)
    try:
        held = asyncio.get_running_loop().run_in_executor(
            None, lambda: conn.execute("SELECT ssn FROM customers WHERE id = 4").fetchall())
        req = await asyncio.to_thread(pending_request, gw2)      # visible through gw2's API
        t0 = time.perf_counter()
        await asyncio.to_thread(api, gw2, "POST", f"requests/{req['id']}/approve", {"duration": 60})
        rows = await asyncio.wait_for(held, 10)
        print(f"\napproved on instance 2 -> released on instance 1: {(time.perf_counter() - t0) * 1000:.1f} ms")
        assert len(rows) == 1 and rows[0][0]
    finally:
        conn.close()
