"""Red-team probes of the extended protocol, COPY, result formats and grants, as a
user under PII policy without a grant (tests/data/security sample schema)."""
from __future__ import annotations

import struct
import time

import pytest

from gateway.protocol import codec
from gateway.protocol.messages import ReadyForQuery

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


COPY_PROBES = [
    "COPY customers TO STDOUT",
    "COPY customers (id, ssn) TO STDOUT",
    "COPY customers (id, city) TO STDOUT",
    "COPY (SELECT ssn FROM customers) TO STDOUT",
    "COPY (SELECT id, ssn FROM customers) TO STDOUT (FORMAT binary)",
    "COPY (SELECT id FROM customers WHERE ssn = '000-00-0007') TO STDOUT",
    "COPY customers TO STDOUT (FORMAT csv, HEADER)",
    "SELECT 1; COPY customers TO STDOUT",
    "COPY orders (note) TO STDOUT",
    "COPY customers_archive TO STDOUT",
    "COPY (TABLE customers) TO STDOUT",
    "COPY (WITH c AS (SELECT * FROM customers) SELECT * FROM c) TO STDOUT",
    "COPY customers FROM STDIN",
    "COPY customers (ssn) FROM STDIN",
    "COPY orders (customer_id, amount, note) FROM STDIN",
]


@pytest.mark.parametrize("sql", COPY_PROBES)
def test_copy_never_returns_a_catalogued_value(policy_gateway, sql):
    """COPY TO STDOUT of PII (tables, column lists, queries, binary, inside a multi-
    statement Query) is refused or masked; COPY FROM STDIN into PII tables is refused
    (the raw client answers a CopyInResponse with CopyFail)."""
    ann = _client(policy_gateway)
    try:
        msgs = ann.query(sql)
        assert b"000-00-00" not in ann.received and b"example.invalid" not in ann.received, msgs
        if "FROM STDIN" in sql and "orders (customer_id" not in sql:
            assert errors(msgs), msgs
        assert not errors(ann.query("SELECT 1"))
    finally:
        ann.close()


def test_copy_in_data_sent_before_the_refusal_arrives_is_not_read_as_sql(policy_gateway):
    """CopyData/CopyDone pipelined behind a refused COPY FROM STDIN: PostgreSQL ignores
    them outside COPY, and a Query hidden in a CopyData is never run."""
    ann = _client(policy_gateway)
    try:
        payload = codec.encode_query("SELECT ssn FROM customers WHERE id = 7")
        ann.sock.sendall(codec.encode_query("COPY customers (ssn) FROM STDIN")
                         + codec.frame(b"d", payload) + codec.frame(b"c"))
        msgs = ann._until_ready()
        assert errors(msgs)
        ann.drain(0.3)
        assert SSN7 not in ann.received
        assert not errors(ann.query("SELECT 1"))
    finally:
        ann.close()


def _rowdesc(msgs):
    return [m for m in msgs if getattr(m, "type", None) == b"T"]


def _fields(body: bytes):
    (n,) = struct.unpack_from("!h", body, 0)
    pos, out = 2, []
    for _ in range(n):
        end = body.index(b"\x00", pos)
        name = body[pos:end]
        _table, _attnum, typ, size, mod, fmt = struct.unpack_from("!ihihih", body, end + 1)
        out.append((name, typ, size, mod, fmt))
        pos = end + 1 + 18
    return out


@pytest.mark.parametrize("result_format", [0, 1])
def test_masked_columns_in_binary_and_text_describe_as_the_unmasked_statement(policy_gateway, result_format):
    """Describe of a masked statement and portal gives the names, types, typmods and
    formats the unmasked statement has (what the dba sees); rows in binary format
    are masked too."""
    sql = "SELECT id, full_name, ssn, dob, email FROM customers WHERE id = $1"
    results = {}
    for user in ("ann", "dba"):
        c = RawClient("127.0.0.1", policy_gateway.port, user, "secret-pw", policy_gateway.dbname)
        try:
            param = struct.pack("!i", 7)
            bind = (b"\x00\x00" + struct.pack("!hh", 1, 1) + struct.pack("!h", 1) + struct.pack("!i", 4) + param
                    + struct.pack("!hh", 1, result_format))
            c.sock.sendall(codec.encode_parse("", sql, (23,)) + codec.frame(b"D", b"S\x00")
                           + codec.frame(b"B", bind) + codec.frame(b"D", b"P\x00") + _execute("") + SYNC)
            msgs = c._until_ready()
            assert not errors(msgs), msgs
            results[user] = ([_fields(t.body) for t in _rowdesc(msgs)], bytes(c.received))
        finally:
            c.close()
    assert results["ann"][0] == results["dba"][0]
    assert SSN7 in results["dba"][1]
    assert SSN7 not in results["ann"][1] and b"user07@example.invalid" not in results["ann"][1]
    assert b"Grace Example-07" not in results["ann"][1]


def test_describe_of_a_statement_parsed_before_flush_leaks_nothing(policy_gateway):
    """Parse/Describe/Bind/Execute with Flush, no Sync: the statement is masked and
    nothing is left over after a mid-pipeline error."""
    ann = _client(policy_gateway)
    try:
        ann.sock.sendall(codec.encode_parse("s1", "SELECT ssn FROM customers WHERE id = 7")
                         + codec.frame(b"D", b"Ss1\x00") + _bind("", "s1") + _execute("") + FLUSH)
        time.sleep(0.3)
        ann.sock.sendall(codec.encode_parse("", "SELECT ssn FROM customers WHERE ssn = $1 OR 1/0 = 1")
                         + _bind("", "") + _execute("") + _bind("p2", "s1") + _execute("p2") + SYNC)
        ann._until_ready()
        ann.sock.sendall(_bind("", "s1") + _execute("") + SYNC)
        ann._until_ready()
        assert SSN7 not in ann.received
    finally:
        ann.close()


def _until_copy_in(client) -> list:
    msgs = []
    while True:
        m = client._next()
        msgs.append(m)
        if getattr(m, "type", None) == b"G":
            return msgs
        assert not isinstance(m, ReadyForQuery), msgs


def test_a_sync_during_copy_from_stdin_ends_the_session(shadow_gateway, sample_db_fresh):
    """PostgreSQL ignores a Sync that arrives during COPY FROM STDIN: no ReadyForQuery
    answers it. The gateway counted it, and from then on matched the server's answers
    to the wrong messages: a DEALLOCATE that PostgreSQL skipped (after a failed Execute,
    before the Sync) was taken as done, a failed PREPARE of the same name was not, and
    EXECUTE of what the gateway believed was "SELECT 1" returned the SSN through s2.t
    (found by red-teaming). A session under policy may send only CopyData, CopyDone
    and CopyFail until the copy ends."""
    import psycopg
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("GRANT INSERT ON public.t TO gw_user")
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = public, s2"))
        assert not errors(ann.query("PREPARE p AS SELECT v FROM t WHERE id = 7"))
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.sock.sendall(codec.encode_query("COPY public.t FROM STDIN"))
        _until_copy_in(ann)
        ann.sock.sendall(SYNC + codec.frame(b"c"))
        msgs = _read_until_closed(ann)
        assert [(e.sqlstate, e.fields["S"]) for e in errors(msgs)] == [("08P01", "FATAL")], msgs
        assert SSN7 not in ann.received
    finally:
        ann.close()
    # COPY FROM STDIN itself works as before
    ann = _client(shadow_gateway)
    try:
        ann.sock.sendall(codec.encode_query("COPY public.t FROM STDIN"))
        _until_copy_in(ann)
        ann.sock.sendall(codec.frame(b"d", b"99\tcopied\n") + codec.frame(b"c"))
        msgs = ann._until_ready()
        assert not errors(msgs), msgs
        ann.received.clear()
        assert not errors(ann.query("SELECT v FROM public.t WHERE id = 99")) and b"copied" in ann.received
    finally:
        ann.close()


def test_a_query_before_the_sync_of_an_extended_batch_ends_the_session(shadow_gateway):
    """PostgreSQL skips a simple Query sent after an extended-protocol message that
    failed, up to the Sync, and the gateway cannot know in time whether one failed:
    a session under policy may not send a Query between extended-protocol messages
    and their Sync, even when nothing failed."""
    ann = _client(shadow_gateway)
    try:
        ann.sock.sendall(codec.encode_parse("", "SELECT 1") + _bind() + _execute() + FLUSH)
        ann.sock.sendall(codec.encode_query("SET search_path = s2, public") + SYNC)
        msgs = _read_until_closed(ann)
        assert [(e.sqlstate, e.fields["S"]) for e in errors(msgs)] == [("08P01", "FATAL")], msgs
    finally:
        ann.close()


def test_copy_from_stdin_in_the_extended_protocol_is_refused_under_policy(shadow_gateway, sample_db_fresh):
    """libpq sends Sync right after the Execute of an extended-protocol COPY FROM STDIN
    (the server ignores it): refused up front with a hint, and the session goes on."""
    import psycopg
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("GRANT INSERT ON public.t TO gw_user")
    ann = _client(shadow_gateway)
    try:
        ann.sock.sendall(codec.encode_parse("", "COPY public.t FROM STDIN") + _bind() + _execute() + SYNC)
        msgs = ann._until_ready()
        assert [e.sqlstate for e in errors(msgs)] == ["0A000"], msgs
        assert "simple Query" in errors(msgs)[0].fields.get("H", "")
        assert not errors(ann.query("SELECT 1"))
    finally:
        ann.close()
