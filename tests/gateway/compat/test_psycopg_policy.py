"""psycopg 3 (with its bundled libpq, 17 or later) through a gateway with a policy and
an audit trail, as a user the policy lets do everything: every statement is analysed,
decided and audited, and the client sees exactly what it sees directly. These are the
protocol paths psycopg's own suite leans on that a policy session tracks: a cursor
declared in SQL then described and closed as a portal, prepared statements closed
with the Close message (libpq 17's PQclosePrepared, which psycopg uses to evict its
prepared cache), pipelines with flush requests and an error, and single-row and
chunked streaming. (libpq calls that block while holding the GIL, such as
PQdescribePortal or PQcancel, would stop the gateway's thread in this process: the
tests wait on the socket instead, and leave cancelling to test_server.py.)"""
from __future__ import annotations

import select

import psycopg
import pytest
from psycopg import pq

POLICY = """
[defaults]
pii_read = "mask"
unknown = "deny"

[[rule]]
name = "dba-unrestricted"
roles = ["dba"]
actions = ["*"]
categories = ["*"]
effect = "allow"
"""


@pytest.fixture
def policy_gateway(gateway_factory, tmp_path):
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "audit").mkdir()
    return gateway_factory(users={"alice": ["dba"]}, extra=f"""
[policy]
file = "{tmp_path / 'policy.toml'}"

[audit]
sinks = ["file"]
file = "{tmp_path / 'audit' / 'audit.jsonl'}"
""")


def on_both(pg_server, gw, dbname, fn):
    out = {}
    for name, dsn in (("direct", pg_server.dsn(dbname)), ("gateway", gw.dsn(dbname))):
        with psycopg.connect(dsn, sslmode="disable") as conn:
            out[name] = fn(conn)
    assert out["direct"] == out["gateway"], out
    return out["direct"]


def call(pg: pq.abc.PGconn, send: str, *args) -> tuple:
    """One libpq call through its send_* form, waiting on the socket: the blocking
    forms of some (PQdescribePortal, PQclosePrepared...) keep the GIL, which would
    stop the gateway's thread in this process."""
    getattr(pg, f"send_{send}")(*args)
    res = next_result(pg)
    while next_result(pg) is not None:
        pass
    return result(res)


def next_result(pg: pq.abc.PGconn):
    """PQgetResult once the answer is in (so it never blocks)."""
    while pg.flush():
        select.select([], [pg.socket], [], 5)
    while pg.is_busy():
        select.select([pg.socket], [], [], 5)
        pg.consume_input()
    return pg.get_result()


def result(res) -> tuple:
    return (pq.ExecStatus(res.status).name, res.error_field(pq.DiagnosticField.SQLSTATE), res.nfields,
            [res.get_value(i, 0) for i in range(res.ntuples)] if res.nfields else None)


def test_sql_cursor_described_and_closed_as_a_portal(pg_server, policy_gateway, fresh_db):
    def run(conn):
        pg = conn.pgconn
        out = [call(pg, "query", b"BEGIN"),
               call(pg, "query", b'DECLARE "pc" CURSOR FOR SELECT generate_series(1, 4)'),
               call(pg, "describe_portal", b"pc"),
               call(pg, "query", b'FETCH 2 FROM "pc"'),
               call(pg, "close_portal", b"pc"),
               call(pg, "query", b'FETCH 2 FROM "pc"'),      # 34000: closed by the Close message
               call(pg, "query", b"ROLLBACK")]
        with conn.transaction():                            # psycopg's named cursor on it
            conn.execute('DECLARE "stolen" CURSOR FOR SELECT generate_series(1, 3)')
            out.append(conn.cursor("stolen").fetchall())
        return out
    out = on_both(pg_server, policy_gateway, fresh_db.dbname, run)
    assert out[3][3] == [b"1", b"2"] and out[5][1] == b"34000" and out[-1] == [(1,), (2,), (3,)]


def test_prepared_statements_closed_by_the_close_message(pg_server, policy_gateway, fresh_db):
    def run(conn):
        pg = conn.pgconn
        out = [call(pg, "prepare", b"s1", b"SELECT $1::int + 1"), call(pg, "query_prepared", b"s1", [b"41"]),
               call(pg, "close_prepared", b"s1"), call(pg, "query_prepared", b"s1", [b"41"]),   # 26000
               call(pg, "query", b"ROLLBACK"),
               call(pg, "query", b"PREPARE s2 AS SELECT $1::int * 3"), call(pg, "query_prepared", b"s2", [b"5"]),
               call(pg, "close_prepared", b"s2"), call(pg, "query", b"EXECUTE s2(1)"),         # 26000
               call(pg, "query", b"ROLLBACK")]
        conn.prepare_threshold, conn.prepared_max = 0, 2           # psycopg evicts with Close
        out.append([conn.execute(f"SELECT {i} + %s", (1,)).fetchone() for i in (1, 2, 3, 4, 1)])
        out.append(conn.execute("SELECT statement FROM pg_prepared_statements ORDER BY 1").fetchall())
        return out
    out = on_both(pg_server, policy_gateway, fresh_db.dbname, run)
    assert out[1][3] == [b"42"] and out[3][1] == b"26000" and out[8][1] == b"26000"
    assert ("SELECT 2 + $1",) not in out[-1] and ("SELECT 1 + $1",) in out[-1]     # evicted, kept


def test_pipeline_with_flush_requests_and_an_error(pg_server, policy_gateway, fresh_db):
    def run(conn):
        conn.autocommit = True
        pg = conn.pgconn
        pg.enter_pipeline_mode()
        pg.send_query_params(b"SELECT $1::int", [b"1"])
        pg.send_flush_request()
        pg.send_prepare(b"ps", b"SELECT $1::text")
        pg.send_query_prepared(b"ps", [b"x"])
        pg.send_close_prepared(b"ps")
        pg.send_query_params(b"SELECT 1/0", None)
        pg.send_query_params(b"SELECT 2", None)                 # skipped: the pipeline aborted
        pg.pipeline_sync()
        pg.send_query_params(b"SELECT 3", None)
        pg.pipeline_sync()
        out, syncs = [], 0
        while syncs < 2:
            res = next_result(pg)
            if res is not None:
                out.append(result(res))
                syncs += res.status == pq.ExecStatus.PIPELINE_SYNC
        pg.exit_pipeline_mode()
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int * 2", (i,), prepare=True) for i in range(4)]
        out.append([c.fetchone() for c in curs])
        return out
    out = on_both(pg_server, policy_gateway, fresh_db.dbname, run)
    assert [o[0] for o in out[:-1]].count("PIPELINE_ABORTED") == 1 and out[-1] == [(0,), (2,), (4,), (6,)]


def test_single_row_and_chunked_streaming(pg_server, policy_gateway, fresh_db):
    def run(conn):
        return (sum(r[0] for r in conn.cursor().stream("SELECT generate_series(1, 1000)")),
                sum(r[0] for r in conn.cursor().stream("SELECT generate_series(1, 1000)", size=64)),
                conn.execute("SELECT 'after'").fetchone())
    assert on_both(pg_server, policy_gateway, fresh_db.dbname, run) == (500500, 500500, ("after",))
