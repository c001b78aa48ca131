"""Red-team probes of JIT grants through the real gateway: what was decided under a
grant must not outlive it, whichever protocol message reads it."""
from __future__ import annotations

import asyncio
import struct

import psycopg
import pytest

from gateway.protocol import codec

from .conftest import PASSWORD
from .rawclient import RawClient, errors
from .test_jit_flow import _approve_pending_for, _post, jit_gateway  # noqa: F401


def _execute(portal: str, limit: int = 0) -> bytes:
    return codec.frame(b"E", portal.encode() + b"\x00" + struct.pack("!i", limit))


def _ended_with(client, grant_id: str) -> None:
    msgs = []
    with pytest.raises(ConnectionError):
        while True:
            msgs.append(client._next())
    fatal = [e for e in errors(msgs) if e.fields.get("S") == "FATAL"]
    assert fatal and grant_id in fatal[-1].message, msgs


async def _session_with_a_grant(gw, ticket: str):
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    conn.execute(f"SET piigate.reason = '{ticket}'")
    raw = RawClient("127.0.0.1", gw.port, "sam", PASSWORD, gw.dbname, timeout=10)
    assert not errors(raw.query(f"SET piigate.reason = '{ticket}'"))
    grant = await _approve_pending_for(gw, conn, "SELECT email FROM customers WHERE id = 1")
    return conn, raw, grant


@pytest.mark.parametrize("opened", ["with-hold-cursor", "named-portal", "unnamed-portal"])
async def test_a_portal_or_cursor_opened_under_a_grant_is_not_read_after_a_revoke(jit_gateway, opened):
    """FETCH of a cursor decided under a revoked grant was refused, but a protocol
    Execute of it (or of a portal bound under the grant in an open transaction)
    went on returning clear values: the gateway never sees Execute. The session is
    now ended when such a grant lapses while one may still be open."""
    gw = jit_gateway(hold=1)
    conn, raw, grant = await _session_with_a_grant(gw, "TICKET-31")
    try:
        portal = {"with-hold-cursor": "cur", "named-portal": "p1", "unnamed-portal": ""}[opened]
        if opened == "with-hold-cursor":
            msgs = raw.query("DECLARE cur CURSOR WITH HOLD FOR SELECT email FROM customers ORDER BY id")
        else:
            assert not errors(raw.query("BEGIN"))
            raw.sock.sendall(codec.encode_parse("s", "SELECT email FROM customers ORDER BY id")
                             + codec.frame(b"B", portal.encode() + b"\x00s\x00" + struct.pack("!hhh", 0, 0, 0))
                             + _execute(portal, 1) + codec.frame(b"S"))
            msgs = raw._until_ready()
        assert not errors(msgs), msgs
        status, body = await _post(gw.admin, f"/api/v1/grants/{grant['id']}/revoke", {})
        assert status == 200, body
        await asyncio.sleep(0.3)
        raw.received.clear()
        try:
            raw.sock.sendall(_execute(portal, 0) + codec.frame(b"S"))
        except OSError:
            pass
        _ended_with(raw, grant["id"])
        assert b"example.invalid" not in raw.received
        # a session with nothing open under the grant goes on (its statements are held again)
        assert conn.execute("SELECT city FROM customers WHERE id = 1").fetchone() == ("Sampleton",)
    finally:
        conn.close()
        raw.close()


async def test_a_cursor_opened_under_a_grant_is_not_read_after_it_expires(jit_gateway):
    """The same when the grant runs out rather than being revoked (no event: the
    session watches the expiry itself)."""
    gw = jit_gateway(hold=1)
    conn = psycopg.connect(gw.dsn(gw.dbname, user="sam"), autocommit=True)
    raw = RawClient("127.0.0.1", gw.port, "sam", PASSWORD, gw.dbname, timeout=10)
    try:
        conn.execute("SET piigate.reason = 'TICKET-32'")
        assert not errors(raw.query("SET piigate.reason = 'TICKET-32'"))
        from .test_jit_flow import _pending, _run_in_thread
        t, box = _run_in_thread(lambda: conn.execute("SELECT email FROM customers WHERE id = 1").fetchone())
        req = await _pending(gw.admin)
        status, body = await _post(gw.admin, f"/api/v1/requests/{req['id']}/approve",
                                   {"duration": 2, "scope": "columns"})
        assert status in (200, 201), body
        t.join(10)
        grant_id = body["grant"]["id"]
        assert not errors(raw.query("DECLARE cur CURSOR WITH HOLD FOR SELECT email FROM customers ORDER BY id"))
        await asyncio.sleep(2.5)
        raw.received.clear()
        try:
            raw.sock.sendall(_execute("cur", 0) + codec.frame(b"S"))
        except OSError:
            pass
        _ended_with(raw, grant_id)
        assert b"example.invalid" not in raw.received
    finally:
        conn.close()
        raw.close()


async def test_a_cursor_closed_before_the_revoke_ends_nothing(jit_gateway):
    gw = jit_gateway(hold=1)
    conn, raw, grant = await _session_with_a_grant(gw, "TICKET-33")
    try:
        assert not errors(raw.query("DECLARE cur CURSOR WITH HOLD FOR SELECT email FROM customers ORDER BY id"))
        assert not errors(raw.query("CLOSE cur"))
        assert not errors(raw.query("BEGIN"))
        assert not errors(raw.query("DECLARE c2 CURSOR FOR SELECT email FROM customers ORDER BY id"))
        assert not errors(raw.query("COMMIT"))              # c2 ends with its transaction
        status, body = await _post(gw.admin, f"/api/v1/grants/{grant['id']}/revoke", {})
        assert status == 200, body
        await asyncio.sleep(0.3)
        assert not errors(raw.query("SELECT city FROM customers WHERE id = 1"))
    finally:
        conn.close()
        raw.close()
