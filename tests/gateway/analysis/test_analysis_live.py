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


EXPRESSIONS = [
    "c.ssn", "upper(c.email)", "c.phone || c.full_name", "(c).dob", "c", "row_to_json(c)", "ROW(c.*)",
    "ssn(c)", "CASE WHEN c.ssn > '0' THEN 1 END", "coalesce(c.card_number, '')", "(SELECT c.email)",
    "ARRAY[c.ssn]", "to_jsonb(c)->>'ssn'", "c::text", "(c.*)::text", "hstore(c)", "c.tableoid::int + length(c.ssn)",
]
CONTEXTS = [
    "SELECT {e} FROM customers c",
    "SELECT 1 FROM customers c WHERE ({e}) IS NOT NULL",
    "SELECT count(*) FROM customers c GROUP BY {e}",
    "SELECT 1 FROM customers c ORDER BY ({e})::text",
    "SELECT x FROM (SELECT {e} AS x FROM customers c) s",
    "WITH w AS (SELECT {e} AS x FROM customers c) SELECT x FROM w",
    "WITH w AS (SELECT {e} AS x FROM customers c) SELECT count(*) FROM w",
    "SELECT s.x FROM orders o, LATERAL (SELECT {e} AS x FROM customers c WHERE c.id = o.customer_id) s",
    "SELECT (SELECT ({e})::text FROM customers c LIMIT 1)",
    "SELECT 1 WHERE EXISTS (SELECT {e} FROM customers c)",
    "SELECT x FROM (SELECT ({e})::text AS x FROM customers c UNION ALL SELECT note FROM orders) u",
    "SELECT jsonb_agg({e}) FROM customers c",
    "SELECT max(({e})::text) OVER (PARTITION BY c.city) FROM customers c",
    "SELECT 1 FROM customers c JOIN orders o ON ({e}) IS NOT NULL",
    "UPDATE orders SET note = (SELECT ({e})::text FROM customers c LIMIT 1)",
    "DELETE FROM orders WHERE note = (SELECT ({e})::text FROM customers c LIMIT 1)",
    "INSERT INTO orders(note) SELECT ({e})::text FROM customers c",
    "SELECT * FROM (SELECT c.* FROM customers c) c WHERE ({e}) IS NOT NULL",
    "SELECT x FROM customers c, LATERAL (SELECT {e}) AS l(x)",
    "SELECT {e} FROM customers_archive c",
    "SELECT {e} FROM customers c JOIN orders o ON o.customer_id = c.id",
    "SELECT string_agg(({e})::text, ',' ORDER BY ({e})::text) FROM customers c",
    "WITH RECURSIVE r(n, x) AS (SELECT 1, NULL::text UNION ALL SELECT n + 1, "
    "(SELECT ({e})::text FROM customers c OFFSET n LIMIT 1) FROM r WHERE n < 3) SELECT x FROM r",
    "SELECT u FROM customers c, unnest(ARRAY[({e})::text]) u",
    "SELECT 1 FROM customers c HAVING bool_or(({e}) IS NULL)",
    "SELECT DISTINCT ON (({e})::text) c.id FROM customers c",
    "SELECT ({e})::text FROM customers c UNION SELECT 'x' ORDER BY 1",
    "SELECT id FROM customers c WHERE c.id IN (SELECT length(({e})::text) FROM customers c)",
    "UPDATE customers c SET city = c.city WHERE ({e}) IS NULL RETURNING c.id",
    "SELECT t FROM (SELECT {e} FROM customers c) t",
]


async def _privileges_agree(conn, schema, role: str, sql: str):
    """None when PostgreSQL rejects the text even for a superuser (not checkable);
    else the permission error a role granted exactly the facts' columns gets ("" for none)."""
    all_facts = analyze(sql, schema)
    if len(all_facts) != 1:
        return None
    f = all_facts[0]
    if f.kind not in CHECKED or f.is_unknown or any(u.column.column in SYSTEM for u in f.columns):
        return None
    grants = []
    for u in f.columns:
        c = u.column
        if c.schema != "public" or c.table not in MANAGED:
            continue
        if u.usages - {Usage.WRITTEN}:
            grants.append(f'GRANT SELECT ("{c.column}") ON public."{c.table}" TO "{role}"')
        if Usage.WRITTEN in u.usages:
            grants.append(f'GRANT INSERT ("{c.column}"), UPDATE ("{c.column}") ON public."{c.table}" TO "{role}"')
    # a relation read with no column (SELECT 1 FROM t, count(*)) needs SELECT on
    # any one column: grant its last one
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
        try:
            await conn.execute("EXPLAIN " + f.sql)
        except asyncpg.PostgresError:
            return None     # syntax newer than this server, functions it lacks, ...
        for g in grants:
            await conn.execute(g)
        await conn.execute(f'SET LOCAL ROLE "{role}"')
        try:
            await conn.execute("EXPLAIN " + f.sql)
        except asyncpg.InsufficientPrivilegeError as e:
            if any(f" {t}" in str(e) for t in MANAGED):
                return str(e)
        return ""
    finally:
        await tx.rollback()


async def _check_all(conn, schema, texts):
    role = f"piigate_colcheck_{uuid.uuid4().hex[:10]}"
    await conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
    checked, denied = 0, []
    try:
        for sql in texts:
            err = await _privileges_agree(conn, schema, role, sql)
            if err is None:
                continue
            checked += 1
            if err:
                denied.append(f"{sql} -> {err}")
    finally:
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    return checked, denied


async def test_postgres_column_privileges_agree_with_the_facts(live):
    conn, schema = live
    texts = [e["sql"] for e in CORPUS
             if not (e.get("pre") or e.get("params") or "scratch." in e["sql"])]
    checked, denied = await _check_all(conn, schema, texts)
    assert checked > 100, checked
    assert not denied, "\n".join(denied)


async def test_generated_attacks_agree_with_postgres_privileges(live):
    """Every reaching expression in every context: PostgreSQL's privilege check is the oracle."""
    conn, schema = live
    texts = [ctx.format(e=e) for ctx in CONTEXTS for e in EXPRESSIONS]
    checked, denied = await _check_all(conn, schema, texts)
    assert checked > len(texts) // 2, checked
    assert not denied, "\n".join(denied)


async def test_view_analysis_covers_pg_depend(live):
    """PostgreSQL records, for every view, each column its definition references
    (pg_depend on the view's rewrite rule). For every such view (information_schema's
    and the sample's), the analysis of its definition must touch each one."""
    conn, schema = live
    rows = await conn.fetch("""
        SELECT vn.nspname AS vschema, v.relname AS vname, tn.nspname AS tschema, t.relname AS tname,
               a.attname
        FROM pg_depend d
        JOIN pg_rewrite r ON r.oid = d.objid
        JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace
        JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjsubid > 0 AND v.relkind IN ('v', 'm') AND v.oid <> d.refobjid""")
    from catalog.model import RelationRef
    from gateway.analysis.queries import Walk, VIEW_SEARCH_PATH
    expected: dict = {}
    for r in rows:
        expected.setdefault(RelationRef(r["vschema"], r["vname"]), set()).add(
            ColumnRef(r["tschema"], r["tname"], r["attname"]))
    missed, checked = {}, 0
    for ref, cols in expected.items():
        rel = schema.relation(ref)
        walk = Walk(schema, VIEW_SEARCH_PATH)
        walk.expand_view(rel)
        if walk.reasons:
            continue
        checked += 1
        lacking = cols - set(walk.uses)
        if lacking:
            missed[str(ref)] = sorted(map(str, lacking))
    # initdb's own views are pinned (no pg_depend rows): information_schema's and ours remain
    assert checked >= 30, checked
    assert not missed, missed
