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
