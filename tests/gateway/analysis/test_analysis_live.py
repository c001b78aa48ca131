"""The analyzer against a real PostgreSQL (the security sample database).

1. The corpus holds against a LiveSchema introspected live (gateway.introspect),
   not only against the frozen snapshot.
2. Differential test with PostgreSQL's own column-privilege check: for every
   corpus statement the analyzer fully attributes, a role granted exactly the
   columns the facts name (SELECT for any read, INSERT/UPDATE for WRITTEN, DELETE
   for written relations) must be able to EXPLAIN it. PostgreSQL checks the
   privilege of every column a statement references anywhere (whole-row references
   need all of them), so "permission denied" means the facts missed a column.
"""
from __future__ import annotations

import uuid

import asyncpg
import pytest

from gateway.analysis import StatementKind, Usage, analyze
from gateway.introspect import load_live_schema
from test_analysis_attacks import CORPUS, Session, _reached

from catalog.model import ColumnRef

MANAGED = ("customers", "orders", "customers_archive", "customers_part", "customers_part_testville",
           "customer_contacts", "order_report", "customer_city_mv")
SYSTEM = {"tableoid", "ctid", "xmin", "xmax", "cmin", "cmax"}
CHECKED = {StatementKind.SELECT, StatementKind.INSERT, StatementKind.UPDATE, StatementKind.DELETE,
           StatementKind.MERGE}


@pytest.fixture(scope="module")
async def live(sample_db):
    conn = await asyncpg.connect(str(sample_db))
    try:
        yield conn, await load_live_schema(conn)
    finally:
        await conn.close()


async def test_corpus_against_live_introspection(live):
    _, schema = live
    failures = []
    for entry in CORPUS:
        session = Session(schema)
        for pre in entry.get("pre", ()):
            session.run(pre)
        facts = session.run(entry["sql"], extended=bool(entry.get("params")))
        if any(f.is_unknown for f in facts):
            continue
        missing = {ColumnRef.parse(c) for c in entry["reaches"]} - _reached(facts)
        if missing:
            failures.append((entry["id"], sorted(map(str, missing))))
    assert not failures


async def test_postgres_column_privileges_agree_with_the_facts(live):
    conn, schema = live
    role = f"piigate_colcheck_{uuid.uuid4().hex[:10]}"
    await conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
    checked, denied = 0, []
    try:
        for entry in CORPUS:
            if entry.get("pre") or entry.get("params") or "scratch." in entry["sql"]:
                continue
            all_facts = analyze(entry["sql"], schema)
            if len(all_facts) != 1:
                continue
            f = all_facts[0]
            if f.kind not in CHECKED or f.is_unknown:
                continue
            if any(u.column.column in SYSTEM for u in f.columns):
                continue    # system columns need the table-level privilege: not checkable this way
            grants = []
            for u in f.columns:
                c = u.column
                if c.schema != "public" or c.table not in MANAGED or c.column in SYSTEM:
                    continue
                if u.usages - {Usage.WRITTEN}:
                    grants.append(f'GRANT SELECT ("{c.column}") ON public."{c.table}" TO "{role}"')
                if Usage.WRITTEN in u.usages:
                    grants.append(f'GRANT INSERT ("{c.column}"), UPDATE ("{c.column}") ON public."{c.table}" TO "{role}"')
            # a relation read with no column (SELECT 1 FROM t, count(*)) needs
            # SELECT on any one column: grant its last one
            with_cols = {(u.column.schema, u.column.table) for u in f.columns}
            for r in f.relations_read:
                rel = schema.relation(r)
                if r.schema == "public" and r.name in MANAGED and (r.schema, r.name) not in with_cols and rel:
                    grants.append(f'GRANT SELECT ("{rel.columns[-1].name}") ON public."{r.name}" TO "{role}"')
            for r in f.relations_written:
                if r.schema == "public" and r.name in MANAGED:
                    grants.append(f'GRANT DELETE ON public."{r.name}" TO "{role}"')
            tx = conn.transaction()
            await tx.start()
            try:
                for g in grants:
                    await conn.execute(g)
                await conn.execute(f'SET LOCAL ROLE "{role}"')
                try:
                    await conn.execute("EXPLAIN " + f.sql)
                    checked += 1
                except asyncpg.InsufficientPrivilegeError as e:
                    if any(f" {t}" in str(e) for t in MANAGED):
                        denied.append((entry["id"], entry["sql"], str(e)))
                    checked += 1
                except asyncpg.PostgresError:
                    pass    # syntax newer than this server, functions it lacks, ...
            finally:
                await tx.rollback()
    finally:
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    assert checked > 100, checked
    assert not denied, "\n".join(f"{i}: {sql} -> {err}" for i, sql, err in denied)
