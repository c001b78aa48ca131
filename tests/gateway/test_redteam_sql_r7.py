"""Red-team probes, round 7, as a user under PII policy without a grant (ann, the
tests/data/security sample schema): server files read by COPY, constraints that
compare a changed column with PII, other sessions' SQL. Same property as the
corpus: no catalogued value in any byte the client receives, and no answer that
depends on one."""
from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from .rawclient import errors
from .test_enforcement import POLICY, _client, _policy_config
from .test_redteam_sql import _leaked, _rows, rt_gateway  # noqa: F401  (rt_gateway: a fixture)

SSN7 = "000-00-0007"


def _superuser_policy_config(pg_server, dbname: str, tmp_path) -> str:
    """_policy_config, but the gateway reaches PostgreSQL as the test server's own
    (super)user, as a deployment may: what such a role can do, a statement it
    forwards can do."""
    from .conftest import gateway_toml
    (tmp_path / "policy.toml").write_text(POLICY)
    return gateway_toml(pg_server, users={"ann": ["analyst"], "dba": ["dba"]}, database=dbname,
                        extra=f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')


def test_copy_from_a_server_file_or_program_is_refused(gateway_factory, pg_server, sample_db_fresh, tmp_path):
    """COPY t FROM '<server file>' (or FROM PROGRAM) was decided as a write of t,
    which holds no catalogued column, and allowed: when the gateway's upstream role
    may read server files (a superuser, pg_read_server_files), a user under policy
    loaded whatever a file held (an export a DBA left, the server log with other
    sessions' statements and unique-violation details, a relation's data file) into
    a table and read it back with SELECT, unmasked: the SSN came back in clear
    (found by red-teaming). The analysis cannot attribute a file's content to any
    column, so COPY to or from a server file or program is now unknown, refused
    under policy like pg_read_file."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            pytest.skip("the test server's user is not a superuser")
        path = f"/tmp/piigate_rt7_{uuid.uuid4().hex}.txt"
        conn.execute(f"COPY (SELECT ssn FROM customers WHERE id = 7) TO '{path}'")
        conn.execute("CREATE TABLE lines (line text)")
    try:
        gw = gateway_factory(config_text=_superuser_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
        gw.dbname = sample_db_fresh.dbname
        msgs, leaked = _leaked(gw, [f"COPY lines FROM '{path}'", f"COPY lines (line) FROM PROGRAM 'cat {path}'",
                                    f"COPY lines TO '{path}.out'", "SELECT line FROM lines"])
        assert [e.sqlstate for e in errors(msgs)] == ["42501"] * 3, msgs
        assert _rows(msgs) == 0 and not leaked, leaked
    finally:
        with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
            conn.execute(f"COPY (SELECT 1) TO PROGRAM 'rm -f {path} {path}.out'")


CONSTRAINT_OBJECTS = """
ALTER TABLE customers ADD CONSTRAINT created_after_birth CHECK (created_at > dob);
CREATE VIEW customer_stamps AS SELECT id, created_at FROM customers;
CREATE TABLE accounts (id int PRIMARY KEY, region text, email text, note text, UNIQUE (region, email));
COMMENT ON COLUMN accounts.email IS 'pii:email';
INSERT INTO accounts SELECT id, 'eu', email, 'n' FROM customers WHERE id <= 10;
INSERT INTO accounts SELECT id + 100, 'us', email, 'n' FROM customers WHERE id = 7;
CREATE TABLE members (id int, nick text, ssn text);
COMMENT ON COLUMN members.ssn IS 'pii:ssn';
INSERT INTO members SELECT id, 'm' || id, ssn FROM customers;
ALTER TABLE members ADD CONSTRAINT ssn_not_test CHECK (ssn NOT LIKE '000-00-000%') NOT VALID;
GRANT SELECT, UPDATE ON customer_stamps, accounts, members TO gw_user;
"""


def test_a_constraint_comparing_a_changed_column_with_pii_is_a_predicate(gateway_factory, pg_server,
                                                                         sample_db_fresh, tmp_path):
    """With a DBA's CHECK (created_at > dob) on customers, UPDATE customers SET
    created_at = d WHERE id = 7 wrote no catalogued column and was allowed; it failed
    exactly when dob >= d, so two statements in a rolled-back transaction each gave
    one bit of the date of birth, and a binary search gave all of it (found by
    red-teaming: 1969-12-22 failed, 1969-12-23 passed). The same with a NOT VALID
    CHECK over the SSN (any UPDATE of a row evaluates it, so UPDATE members SET
    nick = nick failed exactly for the SSNs it names), through a view over the table, and
    with UNIQUE (region, email): moving row 7 to region 'us' conflicts exactly when
    a 'us' account has the same address. The live schema reads which columns each
    constraint and unique index compares; changing one counts as a predicate on the
    others (every UPDATE: on a NOT VALID CHECK's), so such writes are decided as
    writes that read PII: the answer no longer depends on the values. Writes of
    columns no constraint ties to PII are unchanged."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute(CONSTRAINT_OBJECTS)
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    probes = [
        ("UPDATE customers SET created_at = '1969-12-22' WHERE id = 7",
         "UPDATE customers SET created_at = '1969-12-23' WHERE id = 7"),
        ("UPDATE customer_stamps SET created_at = '1969-12-22' WHERE id = 7",
         "UPDATE customer_stamps SET created_at = '1969-12-23' WHERE id = 7"),
        ("UPDATE members SET nick = nick WHERE id = 7", "UPDATE members SET nick = nick WHERE id = 17"),
        ("UPDATE accounts SET region = 'us' WHERE id = 7", "UPDATE accounts SET region = 'us' WHERE id = 8"),
        ("INSERT INTO accounts (id, region) VALUES (7, 'us') ON CONFLICT (id) DO UPDATE SET region = 'us'",
         "INSERT INTO accounts (id, region) VALUES (8, 'us') ON CONFLICT (id) DO UPDATE SET region = 'us'"),
    ]
    for first, second in probes:
        outcomes = []
        for sql in (first, second):
            msgs, leaked = _leaked(gw, ["BEGIN", sql, "ROLLBACK"])
            assert not leaked, leaked
            outcomes.append([e.sqlstate for e in errors(msgs)])
        # the same answer for both, and a refusal by the gateway (not the server's 23514/23505)
        assert outcomes[0] == outcomes[1] == ["42501"], (first, outcomes)
    msgs, _ = _leaked(gw, ["BEGIN", "UPDATE accounts SET note = 'x' WHERE id = 7",
                           "UPDATE orders SET amount = amount + 1 WHERE id = 1",
                           "UPDATE customers SET id = id WHERE id = 7", "ROLLBACK"])
    assert not errors(msgs), errors(msgs)


ACTIVITY_VIEW = """
CREATE VIEW active_sql AS SELECT pid, state, query FROM pg_stat_activity;
GRANT SELECT ON active_sql TO gw_user;
"""


def test_other_sessions_sql_is_not_readable(rt_gateway, pg_server):  # noqa: F811
    """Every session reaches PostgreSQL as the same upstream role, so PostgreSQL
    shows each of them the others' statement text, literals and all. While an
    unrestricted session (through the gateway, as dba) runs a statement naming an
    SSN, the user under policy reads it through none of pg_stat_activity (joined,
    filtered, through a DBA's view), pg_stat_get_activity, pg_stat_get_backend_activity
    or pg_stat_ssl (probed: all refused, nothing leaked)."""
    from .conftest import PASSWORD
    with psycopg.connect(pg_server.dsn(rt_gateway.dbname), autocommit=True) as conn:
        conn.execute("DROP VIEW IF EXISTS active_sql")
        conn.execute(ACTIVITY_VIEW)
    done = threading.Event()

    def busy():
        with psycopg.connect(rt_gateway.dsn(rt_gateway.dbname, "dba", PASSWORD), autocommit=True) as c:
            c.execute(f"SELECT pg_sleep(3), ssn FROM customers WHERE ssn = '{SSN7}'")
        done.set()

    t = threading.Thread(target=busy, daemon=True)
    t.start()
    time.sleep(1.0)
    try:
        msgs, leaked = _leaked(rt_gateway, [
            "SELECT query FROM pg_stat_activity WHERE query LIKE '%pg_sleep%'",
            "SELECT a.query FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)",
            "SELECT query FROM pg_catalog.pg_stat_get_activity(NULL::int)",
            "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
            "SELECT query FROM active_sql", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%0007%'",
            "SELECT * FROM pg_stat_ssl"])
        assert not done.is_set(), "the other session's statement ended before the probes ran"
    finally:
        t.join(10)
    assert not leaked, leaked
    assert [e.sqlstate for e in errors(msgs)] == ["42501"] * 7, msgs


CODE_OBJECTS = f"""
CREATE FUNCTION is_vip(p text) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN RETURN p = '{SSN7}'; END $f$;
CREATE FUNCTION is_vip2(p text) RETURNS boolean LANGUAGE sql BEGIN ATOMIC SELECT p = '{SSN7}'; END;
CREATE TABLE vip_log (id int, who text);
CREATE TRIGGER vip_log_trg BEFORE UPDATE ON vip_log FOR EACH ROW WHEN (NEW.who = '{SSN7}')
  EXECUTE FUNCTION suppress_redundant_updates_trigger();
CREATE RULE vip_rule AS ON UPDATE TO vip_log WHERE NEW.who = '{SSN7}' DO INSTEAD NOTHING;
"""


def test_the_source_of_database_code_is_not_read_from_the_catalog(gateway_factory, pg_server, sample_db_fresh,
                                                                   tmp_path):
    """pg_get_functiondef, pg_get_viewdef, pg_get_ruledef and pg_get_triggerdef are
    refused under policy (code carries whatever literals its author wrote into it: a
    DBA's is_vip(p) RETURN p = '000-00-0007'), but the columns they read were not:
    SELECT prosrc FROM pg_proc returned that SSN in clear, and prosqlbody,
    pg_rewrite.ev_action/ev_qual and pg_trigger.tgqual/tgargs return the parse trees
    with the literal's bytes (found by red-teaming). Reading (or filtering on) those
    columns is now unknown, refused; pg_get_function_sqlbody is dangerous like
    pg_get_functiondef. The rest of the catalogs reads as before."""
    with psycopg.connect(sample_db_fresh, autocommit=True) as conn:
        conn.execute(CODE_OBJECTS)
    gw = gateway_factory(config_text=_policy_config(pg_server, sample_db_fresh.dbname, tmp_path))
    gw.dbname = sample_db_fresh.dbname
    probes = ["SELECT prosrc FROM pg_proc WHERE proname = 'is_vip'",
              "SELECT proname FROM pg_proc WHERE prosrc LIKE '%0007%'",
              "SELECT p FROM pg_proc p WHERE proname = 'is_vip2'",
              "SELECT prosqlbody::text FROM pg_proc WHERE proname = 'is_vip2'",
              "SELECT pg_get_function_sqlbody('is_vip2'::regproc)",
              "SELECT ev_qual, ev_action FROM pg_rewrite WHERE rulename = 'vip_rule'",
              "SELECT tgqual FROM pg_trigger WHERE tgname = 'vip_log_trg'",
              "SELECT * FROM pg_trigger WHERE tgname = 'vip_log_trg'"]
    msgs, leaked = _leaked(gw, probes)
    assert [e.sqlstate for e in errors(msgs)] == ["42501"] * len(probes), msgs
    assert not leaked and _rows(msgs) == 0, leaked
    # the parse trees print a text constant's bytes as numbers
    client = _client(gw)
    try:
        for sql in probes:
            client.query(sql)
        assert " ".join(str(b) for b in SSN7.encode()).encode() not in client.received
    finally:
        client.close()
    msgs, _ = _leaked(gw, ["SELECT proname, prokind, provolatile FROM pg_proc WHERE proname = 'is_vip'",
                           "SELECT tgname, tgenabled FROM pg_trigger WHERE tgname = 'vip_log_trg'",
                           "SELECT rulename FROM pg_rewrite WHERE rulename = 'vip_rule'",
                           "SELECT pg_get_function_identity_arguments('is_vip'::regproc)"])
    assert not errors(msgs), errors(msgs)
    assert _rows(msgs) == 4
