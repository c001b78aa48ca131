"""Object definitions under PII policy: psql's \\d and the pg_get_*def functions work
for a user without a grant, with every literal a DBA wrote into a view, trigger,
rule, index, constraint or default replaced by '***' (gateway.rewrite.definitions).
They used to be refused outright (\\d of any table called pg_get_triggerdef) or,
for indexes, constraints and defaults, passed with the literals in clear."""
from __future__ import annotations

import os
import subprocess

import psycopg
import pytest

from gateway.embedded import find_pg_tool

from .conftest import PASSWORD
from .rawclient import errors
from .test_enforcement import _policy_config, catalogued_values
from .test_redteam_sql import _client, _leaked, _rows

SSN7 = "000-00-0007"
DOB = "1969-12-22"

DBA_OBJECTS = f"""
CREATE VIEW vip_contacts AS SELECT id, city FROM customers WHERE ssn <> '{SSN7}' AND city <> 'it''s';
CREATE TABLE vip_log (id int, who text DEFAULT '{SSN7}', born date CHECK (born <> DATE '{DOB}'),
                      "it's" text);
CREATE INDEX vip_log_who ON vip_log (who) WHERE who <> '{SSN7}';
CREATE TRIGGER vip_log_trg BEFORE UPDATE ON vip_log FOR EACH ROW WHEN (NEW.who = '{SSN7}')
  EXECUTE FUNCTION suppress_redundant_updates_trigger();
CREATE RULE vip_rule AS ON UPDATE TO vip_log WHERE NEW.who = '{SSN7}' DO INSTEAD NOTHING;
CREATE VIEW vip_quoted AS SELECT "it's" || '{SSN7}' AS q FROM vip_log;
GRANT SELECT ON vip_contacts, vip_log, vip_quoted TO gw_user;
"""


@pytest.fixture
def def_gateway(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute(DBA_OBJECTS)
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    return gw


def _values(msgs) -> list[list]:
    """The DataRows' column values (bytes, None for NULL)."""
    out = []
    for m in msgs:
        if getattr(m, "type", None) != b"D":
            continue
        body, row, pos = m.body, [], 2
        for _ in range(int.from_bytes(body[:2], "big")):
            n = int.from_bytes(body[pos:pos + 4], "big", signed=True)
            pos += 4
            row.append(None if n < 0 else body[pos:pos + n])
            pos += max(n, 0)
        out.append(row)
    return out


def test_definitions_come_back_with_their_literals_redacted(def_gateway):
    probes = ["SELECT pg_get_viewdef('vip_contacts'::regclass)",
              "SELECT pg_catalog.pg_get_viewdef('vip_quoted'::regclass, true) AS d",
              "SELECT tgname, pg_get_triggerdef(oid, true) FROM pg_trigger WHERE tgname = 'vip_log_trg'",
              "SELECT pg_get_ruledef(oid) FROM pg_rewrite WHERE rulename = 'vip_rule'",
              "SELECT pg_get_indexdef('vip_log_who'::regclass)",
              "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'vip_log'::regclass",
              "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'vip_log'::regclass",
              # a predicate over a definition sees the redacted text: no oracle
              "SELECT count(*) FROM pg_rewrite WHERE pg_get_ruledef(oid) LIKE '%0007%'"]
    msgs, leaked = _leaked(def_gateway, probes)
    assert not leaked, leaked
    assert not errors(msgs), errors(msgs)
    rows = _values(msgs)
    text = " ".join(v.decode() for row in rows for v in row if v is not None)
    assert SSN7 not in text and DOB not in text
    assert "'***'" in text
    by_probe = {m: r for m, r in zip(probes, rows)}
    assert b"'***'" in by_probe[probes[0]][0] and b"ssn <>" in by_probe[probes[0]][0]
    # a quote inside an identifier does not open a literal
    assert b'"it\'s"' in by_probe[probes[1]][0] and b"'***'" in by_probe[probes[1]][0]
    assert rows[-1] == [b"0"]


def test_names_and_types_of_definition_columns_are_kept(def_gateway, sample_db_fresh):
    through = f"postgresql://ann:{PASSWORD}@127.0.0.1:{def_gateway.port}/{def_gateway.dbname}"
    sql = ("SELECT pg_get_viewdef('vip_contacts'::regclass), pg_get_indexdef('vip_log_who'::regclass) AS i, "
           "pg_get_function_arguments('pg_catalog.lpad(text, integer, text)'::regprocedure)")
    with psycopg.connect(through) as gw_conn, psycopg.connect(sample_db_fresh) as direct:
        a = gw_conn.execute(sql)
        b = direct.execute(sql)
        assert [(d.name, d.type_code) for d in a.description] == [(d.name, d.type_code) for d in b.description]
        row = a.fetchone()
        assert row[2] == b.fetchone()[2]          # no literal in it: unchanged
        assert row[0] is not None and SSN7 not in row[0]
        # NULL for what is not a view stays NULL
        assert gw_conn.execute("SELECT pg_get_viewdef(0::oid)").fetchone()[0] is None


def test_an_unrestricted_user_sees_definitions_as_written(def_gateway):
    client = _client(def_gateway, user="dba")
    try:
        msgs = client.query("SELECT pg_get_viewdef('vip_contacts'::regclass)")
    finally:
        client.close()
    assert SSN7.encode() in _values(msgs)[0][0]


def test_system_views_that_show_definitions_are_redacted(def_gateway):
    """information_schema.columns (column_default), pg_views, pg_indexes,
    information_schema.views/triggers call the definition functions inside their own
    definitions: the reference to the view is wrapped so those columns are redacted."""
    probes = ["SELECT column_name, column_default FROM information_schema.columns WHERE table_name = 'vip_log'",
              "SELECT * FROM information_schema.columns WHERE table_name = 'vip_log'",
              "SELECT viewname, definition FROM pg_views WHERE viewname = 'vip_contacts'",
              "SELECT c.definition FROM pg_catalog.pg_views AS c WHERE c.viewname = 'vip_quoted'",
              "SELECT indexdef FROM pg_indexes WHERE indexname = 'vip_log_who'",
              "SELECT definition FROM pg_rules WHERE rulename = 'vip_rule'",
              "SELECT table_name, view_definition FROM information_schema.views WHERE table_name = 'vip_contacts'",
              "SELECT trigger_name, action_condition FROM information_schema.triggers",
              "SELECT count(*) FROM information_schema.columns WHERE column_default LIKE '%0007%'"]
    msgs, leaked = _leaked(def_gateway, probes)
    assert not leaked, leaked
    assert not errors(msgs), errors(msgs)
    text = " ".join(v.decode() for row in _values(msgs) for v in row if v is not None)
    assert SSN7 not in text and text.count("'***'") >= 4, text
    assert _values(msgs)[-1] == [b"0"]


def test_definitions_read_through_a_dba_view_are_refused(def_gateway, sample_db_fresh):
    # a view of the DBA's over pg_views calls pg_get_viewdef out of reach of a wrapper
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute("CREATE VIEW view_sources AS SELECT viewname, definition FROM pg_views; "
                     "GRANT SELECT ON view_sources TO gw_user")
    client = _client(def_gateway, user="dba")
    try:
        client.query("CREATE TABLE refresh_me (i int)")          # DDL through the gateway: schema re-read
    finally:
        client.close()
    msgs, leaked = _leaked(def_gateway, ["SELECT definition FROM view_sources WHERE viewname = 'vip_contacts'"])
    assert not leaked and _rows(msgs) == 0
    assert [e.sqlstate for e in errors(msgs)] == ["42501"]
    assert "pg_get_viewdef('v'::regclass)" in (errors(msgs)[0].fields.get("H") or "")


@pytest.mark.parametrize("command", ["\\d vip_log", "\\d+ vip_log", "\\d+ vip_contacts", "\\d customers",
                                     "\\d+ customers", "\\di+", "\\dv"])
def test_psql_describe_commands_work_under_policy(def_gateway, command):
    psql = find_pg_tool("psql")
    env = dict(os.environ, PGPASSWORD=PASSWORD)
    run = subprocess.run([psql, "-X", "-h", "127.0.0.1", "-p", str(def_gateway.port), "-U", "ann",
                          "-d", def_gateway.dbname, "-c", command], capture_output=True, text=True, env=env,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert not [v for v in catalogued_values() if v in out + run.stderr]
    if command.startswith("\\d vip_log") or command.startswith("\\d+ vip_log"):
        assert "vip_log_trg" in out and "vip_log_who" in out and "'***'" in out
    if command == "\\d+ vip_contacts":
        assert "View definition" in out and "'***'" in out


def test_definitions_are_redacted_wherever_the_statement_reads_them(def_gateway):
    """Prepared (SQL PREPARE, the extended protocol), in a cursor, in FROM, in a CTE,
    under an alias list: every way of reading a definition gets the redacted text."""
    client = _client(def_gateway)
    msgs = []
    try:
        for sql in ["PREPARE d AS SELECT pg_get_viewdef('vip_contacts'::regclass)", "EXECUTE d",
                    "BEGIN", "DECLARE k CURSOR FOR SELECT pg_get_indexdef('vip_log_who'::regclass)",
                    "FETCH ALL FROM k", "COMMIT",
                    "SELECT x.d FROM pg_get_viewdef('vip_contacts'::regclass) AS x(d)",
                    "WITH v AS (SELECT pg_get_ruledef(oid) AS r FROM pg_rewrite WHERE rulename = 'vip_rule') "
                    "SELECT r FROM v",
                    "SELECT c.relname, d FROM pg_class c, LATERAL pg_get_viewdef(c.oid) AS d "
                    "WHERE c.relname = 'vip_contacts'"]:
            msgs.extend(client.query(sql))
        msgs.extend(client.extended("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                                    "WHERE conrelid = 'vip_log'::regclass AND contype = $1", ["c"]))
        client.drain(0.1)
        received = bytes(client.received)
    finally:
        client.close()
    assert not errors(msgs), errors(msgs)
    assert SSN7.encode() not in received and DOB.encode() not in received
    rows = _values(msgs)
    assert len(rows) == 6 and all(b"'***'" in row[-1] for row in rows), rows
