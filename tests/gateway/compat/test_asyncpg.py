"""asyncpg through the gateway gives exactly what it gives directly: prepared
statements, binary codecs for many types (and type introspection for custom ones),
transactions with savepoints, cursors, copy_records_to_table, copy_from_query."""
from __future__ import annotations

import datetime
import decimal
import io
import json
import uuid

import asyncpg
import pytest


async def on_both(pg_server, gateway, dbname, fn):
    out = {}
    for name, dsn in (("direct", pg_server.dsn(dbname)), ("gateway", gateway.dsn(dbname))):
        conn = await asyncpg.connect(dsn, ssl=False)
        try:
            out[name] = await fn(conn)
        finally:
            await conn.close()
    assert out["direct"] == out["gateway"], out
    return out["direct"]


async def test_prepared_statements(pg_server, gateway, sample_db):
    async def run(conn):
        stmt = await conn.prepare("SELECT id, full_name, dob FROM customers WHERE id = ANY($1::int[]) ORDER BY id")
        attrs = [(a.name, a.type.name) for a in stmt.get_attributes()]
        params = [p.name for p in stmt.get_parameters()]
        rows = [tuple(r) for r in await stmt.fetch([1, 3, 5])]
        again = [tuple(r) for r in await stmt.fetch([2])]
        one = await stmt.fetchval([4], column=1)
        explain = await conn.prepare("SELECT $1::text || $2::text")
        joined = [await explain.fetchval(str(i), "x") for i in range(20)]   # reused many times
        return attrs, params, rows, again, one, joined
    attrs, params, rows, *_ = await on_both(pg_server, gateway, sample_db.dbname, run)
    assert attrs == [("id", "int4"), ("full_name", "text"), ("dob", "date")]
    assert params == ["int4[]"] and [r[0] for r in rows] == [1, 3, 5]


VALUES = [
    ("int2", 32767), ("int4", -2147483648), ("int8", 9223372036854775807),
    ("float4", 1.5), ("float8", -2.25e300),
    ("numeric", decimal.Decimal("-12345678901234567890.123456789")), ("numeric", decimal.Decimal("0.000001")),
    ("text", "é 日本 \x01 'quoted'"), ("varchar", ""), ("bytea", bytes(range(256))),
    ("bool", False), ("date", datetime.date(1, 1, 1)), ("date", datetime.date(9999, 12, 31)),
    ("timestamptz", datetime.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=datetime.timezone.utc)),
    ("timestamp", datetime.datetime(1970, 1, 1)), ("time", datetime.time(23, 59, 59, 1)),
    ("interval", datetime.timedelta(days=-3, seconds=5, microseconds=7)),
    ("json", json.dumps({"a": [1, 2.5, None, "x"]})), ("jsonb", json.dumps({"nested": {"k": [True]}})),
    ("int4[]", [1, None, 3]), ("text[]", ["a", "b,c", "", None]), ("int8[]", []),
    ("uuid", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("inet", __import__("ipaddress").ip_interface("10.1.2.3/8")),
    ("int4range", asyncpg.Range(1, 10)), ("point", asyncpg.Point(1.5, -2)),
]


async def test_binary_codecs_round_trip(pg_server, gateway, sample_db):
    sql = "SELECT " + ", ".join(f"${i + 1}::{t}" for i, (t, _) in enumerate(VALUES))

    async def run(conn):
        row = await conn.fetchrow(sql, *[v for _, v in VALUES])
        types = await conn.fetchrow("SELECT " + ", ".join(f"pg_typeof(${i + 1}::{t})::text"
                                                        for i, (t, _) in enumerate(VALUES)),
                                    *[v for _, v in VALUES])
        return tuple(row), tuple(types)
    row, _types = await on_both(pg_server, gateway, sample_db.dbname, run)
    for (t, sent), got in zip(VALUES, row):
        if t == "json" or t == "jsonb":
            assert json.loads(got) == json.loads(sent)
        elif t == "float4":
            assert got == pytest.approx(sent)
        else:
            assert got == sent, t


async def test_custom_types_are_introspected(pg_server, gateway, fresh_db):
    admin = await asyncpg.connect(pg_server.dsn(fresh_db.dbname))
    try:
        await admin.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); "
                            "CREATE TYPE pair AS (a int, b text); CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    finally:
        await admin.close()

    async def run(conn):
        row = await conn.fetchrow("SELECT $1::mood, $2::pair, $3::posint, ARRAY['ok', 'happy']::mood[]",
                                  "happy", (1, "one"), 7)
        try:
            await conn.fetchval("SELECT $1::posint", -1)
        except asyncpg.CheckViolationError as e:
            err = e.sqlstate
        return tuple(row[0:1]) + (tuple(row[1]), row[2], row[3], err)
    got = await on_both(pg_server, gateway, fresh_db.dbname, run)
    assert got == ("happy", (1, "one"), 7, ["ok", "happy"], "23514")


async def test_transactions_and_savepoints(pg_server, gateway, fresh_db):
    async def run(conn):
        await conn.execute("CREATE TEMP TABLE tx(x int)")
        async with conn.transaction():
            await conn.execute("INSERT INTO tx VALUES (1)")
            try:
                async with conn.transaction():                      # a savepoint
                    await conn.execute("INSERT INTO tx VALUES (2)")
                    await conn.execute("SELECT 1/0")
            except asyncpg.DivisionByZeroError:
                pass
            async with conn.transaction():
                await conn.execute("INSERT INTO tx VALUES (3)")
        try:
            async with conn.transaction(isolation="serializable", readonly=True):
                await conn.execute("CREATE TABLE not_in_read_only(x int)")   # temp tables are allowed
        except asyncpg.ReadOnlySQLTransactionError as e:
            ro = e.sqlstate
        tr = conn.transaction()
        await tr.start()
        await conn.execute("INSERT INTO tx VALUES (5)")
        in_tx = conn.is_in_transaction()
        await tr.rollback()
        return [r["x"] for r in await conn.fetch("SELECT x FROM tx ORDER BY x")], ro, in_tx, conn.is_in_transaction()
    got = await on_both(pg_server, gateway, fresh_db.dbname, run)
    assert got == ([1, 3], "25006", True, False)


async def test_cursors(pg_server, gateway, sample_db):
    async def run(conn):
        out = []
        async with conn.transaction():
            async for r in conn.cursor("SELECT g, md5(g::text) FROM generate_series(1, 1000) g", prefetch=37):
                if r[0] % 100 == 0:
                    out.append(tuple(r))
            cur = await conn.cursor("SELECT id, email FROM customers ORDER BY id")
            out.append([tuple(r) for r in await cur.fetch(5)])
            await cur.forward(3)
            out.append(tuple(await cur.fetchrow()))
        return out
    out = await on_both(pg_server, gateway, sample_db.dbname, run)
    assert len(out) == 12 and out[0][0] == 100


async def test_copy_records_and_copy_from_query(pg_server, gateway, fresh_db):
    records = [(i, f"name {i}", decimal.Decimal(i) / 8, datetime.date(2020, 1, 1) + datetime.timedelta(days=i),
                None if i % 7 == 0 else bytes([i % 256]) * 3) for i in range(5000)]

    async def run(conn):
        await conn.execute("CREATE TEMP TABLE recs(id int, name text, amount numeric, d date, b bytea)")
        status = await conn.copy_records_to_table("recs", records=records)
        buf = io.BytesIO()
        status_out = await conn.copy_from_query("SELECT * FROM recs WHERE id < $1 ORDER BY id", 300,
                                                output=buf, format="csv")
        binary = io.BytesIO()
        await conn.copy_from_table("recs", output=binary, format="binary")
        back = io.BytesIO(buf.getvalue())
        await conn.execute("CREATE TEMP TABLE recs2 (LIKE recs)")
        status_in = await conn.copy_to_table("recs2", source=back, format="csv")
        agg = await conn.fetchrow("SELECT count(*), sum(id), sum(amount), md5(string_agg(b::text, ',' ORDER BY id)) "
                                  "FROM recs")
        return status, status_out, buf.getvalue(), len(binary.getvalue()), status_in, tuple(agg)
    got = await on_both(pg_server, gateway, fresh_db.dbname, run)
    assert got[0] == "COPY 5000" and got[1] == "COPY 300" and got[4] == "COPY 300"
    assert got[5][0] == 5000


async def test_executemany_and_errors(pg_server, gateway, fresh_db):
    async def run(conn):
        await conn.execute("CREATE TEMP TABLE em(x int primary key, y text)")
        await conn.executemany("INSERT INTO em VALUES ($1, $2)", [(i, str(i)) for i in range(500)])
        try:
            await conn.executemany("INSERT INTO em VALUES ($1, $2)", [(1000, "a"), (1, "dup")])
        except asyncpg.UniqueViolationError as e:
            err = (e.sqlstate, e.constraint_name, e.table_name)
        return await conn.fetchval("SELECT count(*) FROM em"), err
    got = await on_both(pg_server, gateway, fresh_db.dbname, run)
    assert got == (500, ("23505", "em_pkey", "em"))
