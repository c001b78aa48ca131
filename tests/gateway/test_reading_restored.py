"""A session under policy that the gateway cannot read (it started in a multibyte
client_encoding such as SJIS) is refused every statement, and the refusal's hint says
SET client_encoding = 'UTF8': that one statement, alone and in plain ASCII, is let
through to the gateway's own rules for such a SET, so the session can get out."""
from __future__ import annotations

from gateway.protocol import codec

from .rawclient import RawClient, errors
from .test_enforcement import PASSWORD, policy_gateway  # noqa: F401


def _sjis_client(gw) -> RawClient:
    return RawClient("127.0.0.1", gw.port, "ann", PASSWORD, gw.dbname, params={"client_encoding": "SJIS"})


def _rows(msgs) -> int:
    return sum(1 for m in msgs if getattr(m, "type", None) == b"D")


def test_a_session_in_an_unreadable_encoding_can_set_a_readable_one(policy_gateway):  # noqa: F811
    ann = _sjis_client(policy_gateway)
    try:
        refused = errors(ann.query("SELECT 1"))
        assert [e.sqlstate for e in refused] == ["22021"]
        assert "SET client_encoding = 'UTF8'" in refused[0].fields.get("H", "")
        # not with anything else in the same Query, nor to another unreadable encoding
        assert [e.sqlstate for e in errors(ann.query("SET client_encoding = 'UTF8'; SELECT 1"))] == ["22021"]
        assert [e.sqlstate for e in errors(ann.query("SET client_encoding = 'BIG5'"))] == ["22021"]
        assert not errors(ann.query("SET client_encoding = 'UTF8'"))
        msgs = ann.query("SELECT email FROM customers WHERE id = 7")
        assert not errors(msgs) and _rows(msgs) == 1
        assert b"user07@example.invalid" not in bytes(ann.received)
    finally:
        ann.close()


def test_what_is_pipelined_behind_the_way_out_is_still_refused(policy_gateway):  # noqa: F811
    ann = _sjis_client(policy_gateway)
    try:
        ann.sock.sendall(codec.encode_query("SET client_encoding = 'UTF8'")
                         + codec.encode_query("SELECT ssn FROM customers WHERE id = 7"))
        ann.drain(0.5)
        assert b"000-00-0007" not in bytes(ann.received)
        assert b"22021" in bytes(ann.received) or b"42501" in bytes(ann.received)
    finally:
        ann.close()
