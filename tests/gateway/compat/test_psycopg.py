"""psycopg 3 through the gateway gives exactly what it gives directly: text and
binary results, server-side cursors, COPY both ways, pipeline mode (with a failing
statement), prepared statements, LISTEN/NOTIFY."""
from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import sql

TYPES_QUERY = """
SELECT 1::int2, 2::int4, 3000000000::int8, 1.5::float4, 2.25::float8, 12345.6789::numeric,
       'text é 日本'::text, 'x'::char(3), 'vc'::varchar, '\\x00ff10'::bytea, true, NULL::int,
       '2024-02-29'::date, '12:34:56.789'::time, '2024-02-29 12:34:56.789+02'::timestamptz,
       '2024-02-29 12:34:56'::timestamp, '1 day 2 hours'::interval,
       '{"a": [1, 2, {"b": null}]}'::jsonb, '{"k": 1}'::json, ARRAY[1, NULL, 3]::int[],
       ARRAY['a', 'b c']::text[], 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid,
       '192.168.0.1/24'::inet, int4range(1, 10), 'Infinity'::numeric, '-Infinity'::float8
"""


def dsns(pg_server, gateway, dbname: str) -> dict[str, str]:
    return {"direct": pg_server.dsn(dbname), "gateway": gateway.dsn(dbname)}


def connect(dsn: str, **kw) -> psycopg.Connection:
    return psycopg.connect(dsn, sslmode="disable", **kw)


def on_both(pg_server, gateway, dbname, fn, **kw) -> dict:
    out = {}
    for name, dsn in dsns(pg_server, gateway, dbname).items():
        with connect(dsn, **kw) as conn:
            out[name] = fn(conn)
    assert out["direct"] == out["gateway"], out
    return out["direct"]


def test_text_and_binary_results(pg_server, gateway, sample_db):
    def run(conn):
        text = conn.execute(TYPES_QUERY).fetchall()
        binary = conn.cursor(binary=True).execute(TYPES_QUERY).fetchall()
        rows = conn.cursor(binary=True).execute("SELECT * FROM customers ORDER BY id").fetchall()
        params = conn.execute("SELECT %s::int + 1, %s::text || '!', %s::bytea, %b::numeric * 2",
                              (41, "hi", b"\x00\x01", 1.25)).fetchone()
        return text, binary, rows, params
    text, binary, rows, params = on_both(pg_server, gateway, sample_db.dbname, run)
    assert text == binary
    assert len(rows) >= 20 and params[0] == 42


def test_server_side_cursors(pg_server, gateway, sample_db):
    def run(conn):
        got = []
        with conn.transaction():
            with conn.cursor(name="customers_cur", scrollable=True) as cur:
                cur.itersize = 3
                cur.execute("SELECT id, full_name, email FROM customers ORDER BY id")
                got.append(cur.fetchone())
                got.append(cur.fetchmany(4))
                cur.scroll(0, mode="absolute")
                got.append(list(cur))
            with conn.cursor(name="bin_cur", binary=True, scrollable=True) as cur:
                cur.execute("SELECT g, g::text, g * 1.5 FROM generate_series(1, 2500) g")
                got.append(cur.fetchmany(1000)[-1])
                cur.scroll(-10)
                got.append(cur.fetchall()[:3])
        return got
    got = on_both(pg_server, gateway, sample_db.dbname, run)
    assert got[0][0] == 1 and len(got[2]) >= 20


def test_copy_to_and_from(pg_server, gateway, sample_db_fresh):
    db = sample_db_fresh.dbname

    def run(conn):
        out = {}
        with conn.cursor() as cur:
            with cur.copy("COPY (SELECT * FROM customers ORDER BY id) TO STDOUT") as copy:
                out["text"] = b"".join(bytes(b) for b in copy)
            with cur.copy("COPY (SELECT id, full_name, dob FROM customers ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text", "date"])
                out["rows"] = list(copy.rows())
            table = f"copy_target_{conn.info.backend_pid}"
            cur.execute(sql.SQL("CREATE TEMP TABLE {} (id int, name text, payload bytea, n numeric)")
                        .format(sql.Identifier(table)))
            with cur.copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as copy:
                for i in range(3000):
                    copy.write_row((i, f"name-{i}\ttab", bytes([i % 256]) * 5, i / 7))
            with cur.copy(sql.SQL("COPY {} (id, name) FROM STDIN (FORMAT BINARY)").format(sql.Identifier(table))) as copy:
                copy.set_types(["int4", "text"])
                copy.write_row((-1, "binary row"))
            out["count"] = cur.execute(sql.SQL("SELECT count(*), sum(id), md5(string_agg(name || payload::text, ',' "
                                               "ORDER BY id)) FROM {}").format(sql.Identifier(table))).fetchone()
            # a failing COPY FROM (an exception inside the block sends CopyFail)
            with pytest.raises(psycopg.errors.QueryCanceled):
                with cur.copy(sql.SQL("COPY {} (id) FROM STDIN").format(sql.Identifier(table))) as copy:
                    copy.write_row((1,))
                    raise psycopg.errors.QueryCanceled("client gave up")
            conn.rollback()
            out["after"] = conn.execute("SELECT 1").fetchone()
        return out
    out = on_both(pg_server, gateway, db, run)
    assert out["count"][0] == 3001 and out["text"].count(b"\n") >= 20


def test_pipeline_mode_with_a_failing_statement(pg_server, gateway, fresh_db):
    def run(conn):
        conn.autocommit = True
        conn.execute("CREATE TABLE IF NOT EXISTS pipe(x int primary key)")
        conn.execute("TRUNCATE pipe")
        results = []
        try:
            with conn.pipeline() as p:
                c1 = conn.execute("INSERT INTO pipe VALUES (1) RETURNING x")
                c2 = conn.execute("SELECT %s::int * 2", (21,))
                conn.cursor().executemany("INSERT INTO pipe VALUES (%s)", [(2,), (3,)])
                p.sync()
                results += [c1.fetchone(), c2.fetchone()]
                conn.execute("INSERT INTO pipe VALUES (1)")           # duplicate key: fails
                conn.execute("SELECT 'never seen'")
                p.sync()
        except psycopg.errors.UniqueViolation as e:
            results.append(("error", e.sqlstate))
        with conn.pipeline():
            after = conn.execute("SELECT count(*) FROM pipe").fetchone()
        results.append(after)
        conn.execute("DROP TABLE pipe")
        return results
    results = on_both(pg_server, gateway, fresh_db.dbname, run)
    assert results == [(1,), (42,), ("error", "23505"), (3,)]


def test_prepared_statements(pg_server, gateway, sample_db):
    def run(conn):
        conn.prepare_threshold = 1
        out = [conn.execute("SELECT full_name FROM customers WHERE id = %s", (i,), prepare=True).fetchone()
               for i in range(1, 8)]
        out.append(conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] > 0)
        return out
    out = on_both(pg_server, gateway, sample_db.dbname, run)
    assert out[-1] is True and out[0] is not None


def test_errors_are_the_same(pg_server, gateway, sample_db):
    def run(conn):
        got = []
        for q in ("SELECT * FROM nope", "SELECT 1/0", "SELECT 'x'::int", "SELEC 1"):
            try:
                conn.execute(q)
            except psycopg.Error as e:
                d = e.diag
                got.append((type(e).__name__, e.sqlstate, d.message_primary, d.statement_position, d.severity))
                conn.rollback()
        return got
    got = on_both(pg_server, gateway, sample_db.dbname, run)
    assert [g[1] for g in got] == ["42P01", "22012", "22P02", "42601"]


def _listen_notify(listen_dsn: str, notify_dsn: str) -> list:
    received = []
    with connect(listen_dsn, autocommit=True) as listener, connect(notify_dsn, autocommit=True) as sender:
        listener.execute("LISTEN piigate_chan")
        # the pid a driver knows its session by (BackendKeyData), which is what
        # pg_backend_pid() says and what notifications name
        sender_pid = sender.info.backend_pid
        sender.execute("NOTIFY piigate_chan, 'hello é'")
        sender.execute("SELECT pg_notify('piigate_chan', repeat('x', 7000))")
        with sender.transaction():
            sender.execute("NOTIFY piigate_chan, 'in a transaction'")
        t0 = time.monotonic()
        for n in listener.notifies(timeout=10, stop_after=3):
            received.append((n.channel, n.payload, n.pid == sender_pid))
        assert time.monotonic() - t0 < 10
    return received


def test_listen_notify_between_two_gateway_connections(pg_server, gateway, fresh_db):
    direct = _listen_notify(pg_server.dsn(fresh_db.dbname), pg_server.dsn(fresh_db.dbname))
    through = _listen_notify(gateway.dsn(fresh_db.dbname), gateway.dsn(fresh_db.dbname))
    assert through == direct
    assert [r[1][:8] for r in direct] == ["hello é", "xxxxxxxx", "in a transaction"[:8]]


def test_notification_arrives_while_idle_in_a_blocking_wait(gateway, fresh_db):
    """The notification reaches a listener that is not sending anything (the relay
    forwards upstream bytes as they come, not only in answer to a query)."""
    with connect(gateway.dsn(fresh_db.dbname), autocommit=True) as listener:
        listener.execute("LISTEN later")
        def send():
            time.sleep(0.5)
            with connect(gateway.dsn(fresh_db.dbname), autocommit=True) as s:
                s.execute("NOTIFY later, 'ping'")
        t = threading.Thread(target=send)
        t.start()
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=1)]
        t.join()
    assert got == [("later", "ping")]


def test_self_notification_pid_matches_the_clients_backend_pid(gateway, fresh_db):
    with connect(gateway.dsn(fresh_db.dbname), autocommit=True) as conn:
        conn.execute("LISTEN self")
        conn.execute("NOTIFY self, 'me'")
        (n,) = list(conn.notifies(timeout=5, stop_after=1))
        assert n.pid == conn.info.backend_pid


def test_parameter_status_changes_reach_the_client(pg_server, gateway, fresh_db):
    def run(conn):
        conn.autocommit = True
        before = conn.info.parameter_status("application_name")
        conn.execute("SET application_name = 'changed by SET'")
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        conn.execute("SET DateStyle = 'German'")
        return (before, conn.info.parameter_status("application_name"), str(conn.info.timezone),
                conn.info.parameter_status("DateStyle"), conn.execute("SELECT '2024-01-02'::date::text").fetchone())
    got = on_both(pg_server, gateway, fresh_db.dbname, run)
    assert got[1:] == ("changed by SET", "Asia/Tokyo", "German, DMY", ("02.01.2024",))


def test_big_values_with_a_raised_message_limit(pg_server, gateway_factory, fresh_db):
    """Values above the default 1 MiB message limit need server.max_message_size raised
    (the default protects the gateway's memory); with it, 5 MB round-trips unchanged."""
    gw = gateway_factory(server_extra="max_message_size = 16777216")
    blob = bytes(range(256)) * (5 * 1024 * 1024 // 256)

    def run(conn):
        conn.autocommit = True
        conn.execute("CREATE TEMP TABLE big(b bytea, t text)")
        conn.execute("INSERT INTO big VALUES (%b, %s)", (blob, "x" * 3_000_000))
        b, t = conn.execute("SELECT b, t FROM big").fetchone()
        return b == blob, len(t)
    out = {}
    for name, dsn in (("direct", pg_server.dsn(fresh_db.dbname)), ("gateway", gw.dsn(fresh_db.dbname))):
        with connect(dsn) as conn:
            out[name] = run(conn)
    assert out["direct"] == out["gateway"] == (True, 3_000_000)


def test_huge_errors_and_many_notices(pg_server, gateway, fresh_db):
    """Error and notice messages far bigger than a socket read, and thousands of them,
    arrive whole and in order."""
    def run(conn):
        conn.autocommit = True
        notices = []
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
        conn.execute("DO $$ BEGIN FOR i IN 1..3000 LOOP RAISE NOTICE 'n%', i; END LOOP; END $$")
        try:
            conn.execute("DO $$ BEGIN RAISE EXCEPTION '%', repeat('é', 400000) "
                         "USING DETAIL = repeat('d', 300000); END $$")
        except psycopg.errors.RaiseException as e:
            err = (e.sqlstate, len(e.diag.message_primary), len(e.diag.message_detail))
        return len(notices), notices[0], notices[-1], err, conn.execute("SELECT 'ok'").fetchone()
    got = on_both(pg_server, gateway, fresh_db.dbname, run)
    assert got == (3000, ("NOTICE", "n1"), ("NOTICE", "n3000"), ("P0001", 400000, 300000), ("ok",))
