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
