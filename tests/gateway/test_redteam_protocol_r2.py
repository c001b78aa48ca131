"""Red-team probes of the wire protocol, round 2, as a user under PII policy without
a grant (tests/data/security sample schema): what the gateway read against what
PostgreSQL runs, byte by byte."""
from __future__ import annotations

import struct

import pytest

from gateway.protocol import codec

from .conftest import PASSWORD
from .rawclient import RawClient, errors
from .test_enforcement import POLICY, _client, _policy_config, policy_gateway, shadow_gateway  # noqa: F401

SSN7 = b"000-00-0007"
SYNC = codec.frame(b"S")
FLUSH = codec.frame(b"H")


def _leaks(client) -> bool:
    return b"000-00-00" in client.received or b"example.invalid" in client.received


def _bind(portal: str = "", stmt: str = "", fmt: tuple[int, ...] = ()) -> bytes:
    body = portal.encode() + b"\x00" + stmt.encode() + b"\x00" + struct.pack("!hh", 0, 0)
    body += struct.pack("!h", len(fmt)) + b"".join(struct.pack("!h", f) for f in fmt)
    return codec.frame(b"B", body)


def _execute(portal: str = "", limit: int = 0) -> bytes:
    return codec.frame(b"E", portal.encode() + b"\x00" + struct.pack("!i", limit))


SESSION_RULE = """
[[rule]]
name = "analysts-may-set"
roles = ["analyst"]
actions = ["session"]
effect = "allow"
"""


@pytest.fixture
def session_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """The sample policy plus a rule that lets analysts run session statements (SET,
    LISTEN, ...), as a site that trusts its analysts' settings would have."""
    text = _policy_config(pg_server, sample_db_fresh.dbname, tmp_path)
    (tmp_path / "policy.toml").write_text(POLICY + SESSION_RULE)
    gw = gateway_factory(config_text=text)
    gw.dbname = sample_db_fresh.dbname
    return gw


# U+00C1 is C3 81 in UTF-8; read as SJIS, C3 is a one-byte katakana and 81 a lead
# byte that takes the backslash after it: the E'' literal ends one quote earlier
SJIS_SMUGGLE = "SELECT E'\u00c1\\', ssn FROM customers WHERE id = 7 --'"


@pytest.mark.parametrize("change", ["SET client_encoding = 'SJIS'", "SET NAMES 'BIG5'",
                                    "SET standard_conforming_strings = off",
                                    "SET client_encoding = 'LATIN1'", "RESET client_encoding"])
def test_a_statement_pipelined_behind_a_change_of_how_text_is_read_is_not_read_the_old_way(
        session_gateway, change):
    """PostgreSQL reads the message after SET client_encoding = 'SJIS' in SJIS; the
    gateway learnt of the change only from the ParameterStatus with the SET's
    ReadyForQuery, so a Query pipelined behind it in the same write was analysed as
    UTF-8: SELECT E'<C3 81>\\', ssn FROM customers ... --' was one string literal to
    the gateway and a literal, the SSN and a comment to PostgreSQL, which returned
    the SSN in clear (found by red-teaming, with a policy that lets analysts SET).
    Encodings and string modes the gateway cannot read in are refused whatever the
    policy says, and statements pipelined behind any change are refused until it
    has completed."""
    ann = _client(session_gateway)
    try:
        ann.sock.sendall(codec.encode_query(change) + codec.encode_query(SJIS_SMUGGLE)
                         + codec.encode_parse("", SJIS_SMUGGLE) + _bind() + _execute() + SYNC)
        ann._until_ready()
        ann._until_ready()
        ann._until_ready()
        assert not _leaks(ann)
    finally:
        ann.close()


def test_how_text_is_read_changes_only_alone_and_outside_a_transaction(session_gateway):
    ann = _client(session_gateway)
    try:
        assert not errors(ann.query("SET client_encoding = 'UTF8'"))          # unchanged: fine anywhere
        assert not errors(ann.query("BEGIN"))
        assert not errors(ann.query("SET client_encoding = 'utf-8'"))
        assert [e.sqlstate for e in errors(ann.query("SET client_encoding = 'LATIN1'"))] == ["42501"]
        assert not errors(ann.query("ROLLBACK"))
        assert [e.sqlstate for e in errors(ann.query("SELECT 1; SET client_encoding = 'LATIN1'; SELECT 2"))] \
            == ["42501"]
        assert not errors(ann.query("SET client_encoding = 'LATIN1'"))         # alone: the policy's call
        assert not errors(ann.query("SELECT 'caf\u00e9'"))
        assert not errors(ann.query("SET client_encoding = 'UTF8'"))
        ann.received.clear()
        assert not errors(ann.query("SELECT ssn FROM customers WHERE id = 7")) and not _leaks(ann)
    finally:
        ann.close()


def _assert_no_clear_ssn(client, msgs) -> None:
    assert SSN7 not in client.received, msgs


@pytest.mark.parametrize("drop", ["close", "deallocate all"])
def test_a_statement_name_postgres_forgot_does_not_vouch_for_the_next_one(shadow_gateway, drop):
    """A protocol Close of a prepared statement, and DEALLOCATE ALL, left the gateway's
    entry for the name; PREPARE s1 AS SELECT v FROM t (public.t then) made a new s1,
    and after SET search_path = s2, public a Bind of s1 was re-checked as the closed
    statement's text ("SELECT 'x'"), passed, and PostgreSQL re-planned its s1 over
    s2.t: the SSN in clear (found by red-teaming)."""
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = public, s2"))
        ann.sock.sendall(codec.encode_parse("s1", "SELECT 'x'::text AS v") + SYNC)
        assert not errors(ann._until_ready())
        if drop == "close":
            ann.sock.sendall(codec.frame(b"C", b"Ss1\x00") + SYNC)
            assert not errors(ann._until_ready())
        else:
            assert not errors(ann.query("DEALLOCATE ALL"))
        assert not errors(ann.query("PREPARE s1 AS SELECT v FROM t WHERE id = 7"))
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.sock.sendall(_bind("", "s1") + _execute() + SYNC)
        msgs = ann._until_ready()
        assert errors(msgs), msgs
        _assert_no_clear_ssn(ann, msgs)
        # EXECUTE at SQL level was and is re-checked
        msgs = ann.query("EXECUTE s1")
        assert errors(msgs), msgs
        _assert_no_clear_ssn(ann, msgs)
    finally:
        ann.close()


def test_a_protocol_close_of_a_sql_prepared_statement_is_followed(shadow_gateway):
    """Protocol Close also ends a SQL-level PREPAREd statement (they share names), and
    the gateway kept its meaning: a protocol Parse of the same name that ran before an
    error in its sync group (so the gateway forgot it) fell back to that stale meaning
    at Bind. (The re-check after the search_path change refused it even so; now the
    name is simply unknown after the Close.)"""
    ann = _client(shadow_gateway)
    try:
        assert not errors(ann.query("SET search_path = public, s2"))
        assert not errors(ann.query("PREPARE s1 AS SELECT 'x'::text AS v"))
        ann.sock.sendall(codec.frame(b"C", b"Ss1\x00") + SYNC)
        assert not errors(ann._until_ready())
        ann.sock.sendall(codec.encode_parse("s1", "SELECT v FROM t WHERE id = 7") + _execute("no_such_portal")
                         + SYNC)
        assert errors(ann._until_ready())
        assert not errors(ann.query("SET search_path = s2, public"))
        ann.sock.sendall(_bind("", "s1") + _execute() + SYNC)
        msgs = ann._until_ready()
        assert errors(msgs), msgs
        _assert_no_clear_ssn(ann, msgs)
    finally:
        ann.close()


def test_statements_and_portals_that_were_closed_and_made_again_work(shadow_gateway):
    ann = _client(shadow_gateway)
    try:
        for _ in range(2):
            ann.sock.sendall(codec.encode_parse("s1", "SELECT v FROM t WHERE id = 7") + _bind("p1", "s1")
                             + _execute("p1", 1) + SYNC)
            msgs = ann._until_ready()
            assert not errors(msgs) and b"plain-7" in ann.received, msgs
            ann.sock.sendall(codec.frame(b"C", b"Pp1\x00") + codec.frame(b"C", b"Ss1\x00") + SYNC)
            assert not errors(ann._until_ready())
        assert [e.sqlstate for e in errors(ann.query("FETCH p1"))] == ["42501"]   # closed: not vouched for
        assert not errors(ann.query("BEGIN; DECLARE c CURSOR FOR SELECT ssn FROM customers"))
        assert not errors(ann.query("FETCH c")) and SSN7 not in ann.received
        assert not errors(ann.query("CLOSE c"))
        assert [e.sqlstate for e in errors(ann.query("FETCH c"))] == ["42501"]
        ann.query("ROLLBACK")
        ann.received.clear()
        assert not errors(ann.query("SELECT ssn FROM customers WHERE id = 7")) and SSN7 not in ann.received
    finally:
        ann.close()


def _session_state(gw, user: str = "ann"):
    def find():
        return [r.state["s"] for r in gw.gateway.sessions.values() if r.info.user.name == user]
    return gw.call(find)[0]


def test_portal_names_end_with_their_transaction(policy_gateway):
    """Every named portal a Bind opened stayed in the session's cursor table after
    its transaction ended (PostgreSQL drops it at the Sync): a client binding portals
    of new names in a loop grew the gateway's memory without end (100 bytes each,
    shared by every session of the process), and a stale name vouched for FETCH of
    whatever was opened under it later. Cursors WITH HOLD stay until closed."""
    ann = _client(policy_gateway)
    try:
        ann.sock.sendall(codec.encode_parse("s1", "SELECT ssn FROM customers WHERE id = 7") + SYNC)
        assert not errors(ann._until_ready())
        ann.sock.sendall(b"".join(_bind(f"p{i}", "s1") + SYNC for i in range(300)))
        for _ in range(300):
            assert not errors(ann._until_ready())
        assert not errors(ann.query("DECLARE h CURSOR WITH HOLD FOR SELECT ssn FROM customers"))
        assert set(_session_state(policy_gateway).cursors) == {"h"}
        assert [e.sqlstate for e in errors(ann.query("FETCH p1"))] == ["42501"]
        ann.received.clear()
        assert not errors(ann.query("FETCH h")) and not _leaks(ann)
        # inside a transaction a portal is a cursor to SQL until the transaction ends
        ann.sock.sendall(codec.encode_query("BEGIN"))
        ann._until_ready()
        ann.sock.sendall(_bind("p1", "s1") + SYNC)
        assert not errors(ann._until_ready())
        msgs = ann.query("FETCH p1")
        assert not errors(msgs) and not _leaks(ann), msgs
        assert not errors(ann.query("COMMIT"))
        assert set(_session_state(policy_gateway).cursors) == {"h"}
    finally:
        ann.close()


@pytest.mark.parametrize("encoding, python", [("LATIN1", "latin-1"), ("WIN1252", "cp1252"), ("UTF8", "utf-8")])
def test_error_text_is_scrubbed_in_the_sessions_own_encoding(encoding, python):
    """The server writes error text in the client's encoding. The scrubber read it as
    UTF-8: with lc_messages = de_DE and client_encoding LATIN1 (a startup setting
    users under policy may send), "ungültige Eingabesyntax für Typ integer:
    »000-00-0007«" came as BB ... AB, two replacement characters to the scrubber,
    and the value between them passed in clear (the same with French « » and Spanish
    «»). It is now read and written back in the session's encoding."""
    from types import SimpleNamespace

    from gateway.server import Relay
    from gateway.session import PolicyGate
    relay = SimpleNamespace()
    Relay.set_client_encoding(relay, encoding)
    gate = PolicyGate.__new__(PolicyGate)
    for message in ("ungültige Eingabesyntax für Typ integer: »000-00-0007«",
                    "syntaxe en entrée invalide pour le type integer : « 000-00-0007 »",
                    "la sintaxis de entrada no es válida para tipo integer: «000-00-0007»"):
        body = codec.encode_error_fields({"S": "FEHLER", "V": "ERROR", "C": "22P02", "M": message},
                                         encoding=python)[5:]
        out = gate.on_upstream_error(relay, body)
        assert SSN7 not in out, out
        text = codec.decode_error_fields(out[5:], encoding=python).message
        assert text.startswith(message[:10]), text              # readable in the client's encoding


def test_cheap_probes_of_handled_paths(policy_gateway):
    """Probes that found nothing (kept as regressions): a FunctionCall (fastpath) is
    refused and the session goes on; an extended-protocol COPY TO STDOUT of PII is
    refused; a pipeline under policy sent one byte per write is decided and masked
    as when sent whole; bytes after Terminate in the same write never run."""
    import socket
    ann = _client(policy_gateway)
    try:
        textout = codec.frame(b"F", struct.pack("!ihhh", 1299, 0, 0, 0))        # now()
        ann.sock.sendall(textout)
        assert [e.sqlstate for e in errors(ann._until_ready())] == ["42501"]
        ann.sock.sendall(codec.encode_parse("", "COPY (SELECT id, ssn FROM customers) TO STDOUT") + _bind()
                         + _execute() + SYNC)
        assert errors(ann._until_ready()) and not _leaks(ann)
        ann.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = (codec.encode_query("SELECT ssn FROM customers WHERE id = 7")
                + codec.encode_parse("", "SELECT ssn, full_name FROM customers WHERE id = 7") + _bind()
                + _execute() + SYNC)
        for b in data:
            ann.sock.send(bytes([b]))
        ann._until_ready()
        ann._until_ready()
        assert b"[redacted]" in ann.received and not _leaks(ann)
        ann.received.clear()
        ann.sock.sendall(codec.frame(b"X") + codec.encode_query("SELECT ssn FROM customers"))
        with pytest.raises(ConnectionError):
            ann._next()
        assert not ann.received
    finally:
        ann.close()
