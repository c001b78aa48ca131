"""The audit trail behind the real gateway: every corpus statement audited, no PII in
the trail, and the trail verifies."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import orjson
import pytest

from gateway.audit.chain import verify
from gateway.audit.records import outcomes as outcomes_of
from gateway.audit.query import iter_records, read_trail

from ..conftest import PASSWORD, gateway_toml
from ..rawclient import RawClient
from .test_records import VALUES

ROOT = Path(__file__).resolve().parents[3]
SECURITY = ROOT / "tests" / "data" / "security"
CORPUS = [json.loads(l) for l in (SECURITY / "attack-corpus.jsonl").read_text().splitlines() if l.strip()]

POLICY = """
[defaults]
pii_read = "mask"
write_pii = "approve"
export = "deny"
unknown = "deny"
ddl = "deny"

[[rule]]
name = "dba-unrestricted"
roles = ["dba"]
actions = ["*"]
categories = ["*"]
effect = "allow"
"""

# statements an unrestricted user sends with values in them: the trail must not keep them
VALUE_STATEMENTS = [
    "SELECT id FROM customers WHERE ssn = '000-00-0007'",
    "SELECT id FROM customers WHERE email IN ('user07@example.invalid', 'user08@example.invalid')",
    "SELECT CAST(ssn AS integer) FROM customers WHERE id = 7",          # error text echoes the value
    "SELECT id FROM customers WHERE dob = DATE '1969-12-22' -- Grace Example-07",
    "SELEC id FROM customers WHERE full_name = 'Grace Example-07'",     # does not parse
]


@pytest.fixture(params=["group"])
def audited_gateway(request, gateway_factory, pg_server, sample_db_fresh, tmp_path):
    return _audited_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path, request.param)


def _audited_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path, fsync: str):
    (tmp_path / "policy.toml").write_text(POLICY)
    shutil.copy(ROOT / "examples" / "catalog.toml", tmp_path / "catalog.toml")
    extra = f"""
[policy]
file = "{tmp_path / 'policy.toml'}"
[catalog]
file = "{tmp_path / 'catalog.toml'}"
[audit]
sinks = ["file"]
file = "{tmp_path / 'audit' / 'audit.jsonl'}"
fsync = "{fsync}"
"""
    (tmp_path / "audit").mkdir()
    text = gateway_toml(pg_server, users={"ann": ["analyst"], "dba": ["dba"]}, extra=extra,
                        database=sample_db_fresh.dbname)
    text = text.replace(f'user = "{pg_server.user}"', 'user = "gw_user"', 1)
    gw = gateway_factory(config_text=text)
    gw.dbname = sample_db_fresh.dbname
    gw.audit_dir = tmp_path / "audit"
    return gw


def _run(gw, user: str, statements) -> None:
    client = RawClient("127.0.0.1", gw.port, user, PASSWORD, gw.dbname)
    try:
        for pre, sql, params in statements:
            for p in pre:
                client.query(p)
            if params is not None:
                client.extended(sql, params)
            else:
                client.query(sql)
        client.drain(0.2)
    finally:
        client.close()


@pytest.mark.timeout(180)
def test_corpus_through_the_gateway_leaves_an_intact_pii_free_trail(audited_gateway):
    gw = audited_gateway
    for case in CORPUS:
        _run(gw, "ann", [(case.get("pre") or [], case["sql"], case.get("params"))])
    _run(gw, "dba", [((), s, None) for s in VALUE_STATEMENTS])
    _run(gw, "dba", [((), "SELECT ssn FROM customers WHERE id = $1", ["000-00-0007"])])
    gw.stop()                                   # closes the trail: final checkpoint
    files = sorted(gw.audit_dir.glob("*.jsonl"))
    assert files, "the gateway wrote no audit file"
    res = verify(read_trail(files))
    assert res.ok, res.summary()
    recs = list(iter_records(read_trail(files)))
    decisions = [r for r in recs if r["type"] == "statement.decision"]
    assert len([r for r in decisions if r.get("user") == "ann"]) >= len(CORPUS)
    assert len([r for r in decisions if r.get("user") == "dba"]) >= len(VALUE_STATEMENTS)
    # timestamps and hashes are the trail's own digits ("...T00:51:18.99...Z" is not a value)
    own = ("ts", "hash", "prev", "head", "sig", "key_id")
    blob = orjson.dumps([{k: v for k, v in r.items() if k not in own} for r in recs]).decode()
    assert "000-00-0007" not in blob and "user07@example.invalid" not in blob
    leaked = sorted(v for v in VALUES if v in blob)
    assert not leaked, f"the audit trail holds {len(leaked)} schema values, e.g. {leaked[:5]}"


def test_every_forwarded_statement_has_an_outcome_naming_its_decision(audited_gateway):
    """Simple, extended and prepared executions (each Bind its own decision record):
    every decision of a forwarded statement is followed by an outcome in a
    statement.complete record that names it by seq, with the right status and rows."""
    gw = audited_gateway
    client = RawClient("127.0.0.1", gw.port, "ann", PASSWORD, gw.dbname)
    try:
        client.query("SELECT id, city FROM customers WHERE id < 4")
        client.extended("SELECT id FROM customers WHERE id = $1", ["5"])
        client.query("SELECT id FROM no_such_table")                       # refused: unknown
        client.query("SELECT 1/0")                                         # fails upstream
        client.drain(0.2)
    finally:
        client.close()
    gw.stop()
    files = sorted(gw.audit_dir.glob("*.jsonl"))
    assert verify(read_trail(files)).ok
    recs = list(iter_records(read_trail(files)))
    decisions = {r["seq"]: r for r in recs if r["type"] == "statement.decision" and r.get("user") == "ann"}
    outcomes = [(r, o) for r in recs if r["type"] == "statement.complete" for o in outcomes_of(r)]
    by_decision = {o["decision_seq"]: (r, o) for r, o in outcomes}
    forwarded = [d for d in decisions.values() if d["effect"] in ("allow", "mask")]
    assert len(forwarded) >= 3
    for d in forwarded:
        rec, o = by_decision[d["seq"]]                     # its outcome exists ...
        assert rec["seq"] > d["seq"] and rec["session"] == d["session"]   # ... after it, same session
        assert o["fingerprint"] == d["fingerprint"]
    rows = sorted((o["status"], o["rows"]) for _, o in outcomes if o["decision_seq"] in decisions)
    assert ("ok", 3) in rows and ("ok", 1) in rows and ("22012", 0) in rows


@pytest.mark.parametrize("fsync", ["always", "group", "none"])
async def test_prepared_executions_are_each_audited_under_every_durability_policy(
        gateway_factory, pg_server, sample_db_fresh, tmp_path, fsync):
    """asyncpg prepares once and executes many times: each execution (Bind) of a
    statement under PII policy gets its own decision record before it runs, whether
    records are fsynced one by one, in groups or not at all."""
    import asyncpg
    gw = _audited_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path, fsync)
    conn = await asyncpg.connect(gw.dsn(gw.dbname, user="ann"))
    try:
        stmt = await conn.prepare("SELECT id, email FROM customers WHERE id = $1")
        rows = [await stmt.fetchrow(i) for i in (3, 4, 5)]
    finally:
        await conn.close()
    assert [r["id"] for r in rows] == [3, 4, 5]
    assert not any(r["email"] == f"user{r['id']:02d}@example.invalid" for r in rows)   # masked
    gw.stop()
    files = sorted(gw.audit_dir.glob("*.jsonl"))
    assert verify(read_trail(files)).ok
    recs = list(iter_records(read_trail(files)))
    executions = [r for r in recs if r["type"] == "statement.decision" and r.get("user") == "ann"
                  and "FROM customers WHERE id = $1" in r["sql"]]
    assert len(executions) >= 3
    outcomes = [o for r in recs if r["type"] == "statement.complete" for o in outcomes_of(r)]
    assert {e["seq"] for e in executions} <= {o["decision_seq"] for o in outcomes}
