"""Red-team probes of the extended protocol, COPY, result formats and grants, as a
user under PII policy without a grant (tests/data/security sample schema)."""
from __future__ import annotations

import struct
import time

import pytest

from gateway.protocol import codec

from .rawclient import RawClient, errors
from .test_enforcement import _client, _policy_config, policy_gateway, shadow_gateway  # noqa: F401

SSN7 = b"000-00-0007"


def _rows(msgs) -> int:
    return sum(getattr(m, "type", None) == b"D" for m in msgs)


def _bind(portal: str = "", stmt: str = "", fmt: tuple[int, ...] = ()) -> bytes:
    body = portal.encode() + b"\x00" + stmt.encode() + b"\x00" + struct.pack("!hh", 0, 0)
    body += struct.pack("!h", len(fmt)) + b"".join(struct.pack("!h", f) for f in fmt)
    return codec.frame(b"B", body)


def _execute(portal: str = "", limit: int = 0) -> bytes:
    return codec.frame(b"E", portal.encode() + b"\x00" + struct.pack("!i", limit))


SYNC = codec.frame(b"S")
FLUSH = codec.frame(b"H")


def _until_error(client) -> list:
    msgs = []
    while True:
        m = client._next()
        msgs.append(m)
        if getattr(m, "sqlstate", None) and not getattr(m, "notice", False):
            return msgs


def _read_until_closed(client) -> list:
    msgs = []
    with pytest.raises(ConnectionError):
        while True:
            msgs.append(client._next())
    return msgs


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_query_postgres_skips_after_an_unsynced_error_changes_nothing(shadow_gateway, pipelined):
    """After an extended-protocol error PostgreSQL skips every message until Sync, a
    simple Query included, without answering it. The gateway took SET search_path in
    such a Query as done: it then resolved "t" as public.t while PostgreSQL still
    had s2 first (the view over customers.ssn), and the SSN came back in clear. Now
    the session is closed, whether the error arrived before the Query was read or
    after (pipelined)."""
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.sock.sendall(_execute("no_such_portal") + FLUSH)
        if not pipelined:
            _until_error(ann)
        ann.sock.sendall(codec.encode_query("SET search_path = public, s2") + SYNC
                         + codec.encode_query("SELECT v FROM t WHERE id = 7"))
        msgs = _read_until_closed(ann)
        assert errors(msgs)[-1].fields["S"] == "FATAL", msgs
        assert SSN7 not in ann.received and b"plain-7" not in ann.received
    finally:
        ann.close()
    # a search_path change on its own, with nothing failing, is as before
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = public, s2"))
        ann.received.clear()
        assert not errors(ann.query("SELECT v FROM t WHERE id = 7")) and b"plain-7" in ann.received
    finally:
        ann.close()


def test_an_unrestricted_user_may_send_a_query_before_sync(shadow_gateway):
    dba = RawClient("127.0.0.1", shadow_gateway.port, "dba", "secret-pw", shadow_gateway.dbname)
    try:
        dba.sock.sendall(_execute("no_such_portal") + FLUSH)
        _until_error(dba)
        dba.sock.sendall(codec.encode_query("SELECT 1") + SYNC)
        dba._until_ready()
        assert not errors(dba.query("SELECT 2"))
    finally:
        dba.close()


def test_a_user_under_policy_may_not_open_a_database_the_gateway_did_not_read(gateway_factory, pg_server,
                                                                             sample_db, tmp_path):
    """The gateway reads the schema of its upstream database and resolves every name
    with it. Connected to another database of the same server, "customers" was the
    two-column table of the database read (nothing catalogued): SELECT * passed
    unchanged and returned every PII column of the other database's customers in
    clear. Users under policy are now refused at startup; others connect as before."""
    import psycopg
    from ..conftest import create_database, drop_database
    other = create_database(pg_server, prefix="piigate_rt_other")
    try:
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute("CREATE TABLE customers (id int, city text); GRANT SELECT ON customers TO gw_user")
        gw = gateway_factory(config_text=_policy_config(pg_server, other.dbname, tmp_path))
        with pytest.raises(ConnectionError) as exc:
            RawClient("127.0.0.1", gw.port, "ann", "secret-pw", sample_db.dbname)
        assert exc.value.args[0].startswith("42501"), exc.value
        ann = RawClient("127.0.0.1", gw.port, "ann", "secret-pw", other.dbname)
        try:
            assert not errors(ann.query("SELECT * FROM customers"))
        finally:
            ann.close()
        dba = RawClient("127.0.0.1", gw.port, "dba", "secret-pw", sample_db.dbname)
        try:
            assert not errors(dba.query("SELECT ssn FROM customers WHERE id = 7"))
            assert SSN7 in dba.received
        finally:
            dba.close()
    finally:
        drop_database(pg_server, other.dbname)
