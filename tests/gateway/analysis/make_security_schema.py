"""Regenerate tests/data/analysis/security_schema.json: the LiveSchema of a
database loaded with tests/data/security/schema.sql + fixtures.sql, read by
gateway.introspect and frozen as data so the analyzer tests stay pure.

Run by hand (needs a PostgreSQL superuser DSN, creates and drops its own
database):  .venv/bin/python -m tests.gateway.analysis.make_security_schema DSN
"""
from __future__ import annotations

import asyncio
import json
import pathlib
import sys
import uuid

import asyncpg

from gateway.introspect import load_live_schema

DATA = pathlib.Path(__file__).resolve().parents[2] / "data"


async def main(dsn: str) -> None:
    db = f"piigate_analysis_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{db}"')
    try:
        conn = await asyncpg.connect(dsn, database=db)
        try:
            for f in ("schema.sql", "fixtures.sql"):
                await conn.execute((DATA / "security" / f).read_text())
            schema = await load_live_schema(conn)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{db}"')
        await admin.close()
    out = {
        "search_path": list(schema.search_path),
        "relations": [
            {"schema": r.ref.schema, "name": r.ref.name, "kind": r.kind,
             "columns": [[c.name, c.type_name] for c in r.columns],
             "parents": [[p.schema, p.name] for p in r.parents],
             "view_definition": r.view_definition}
            for r in sorted(schema.relations.values(), key=lambda r: r.ref)],
        "functions": [
            [f.schema, f.name, list(f.arg_types), f.result_type, f.volatility,
             f.security_definer, f.returns_set, f.kind, f.language]
            for fs in sorted(schema.functions.values(), key=lambda fs: fs[0].name)
            for f in fs],
    }
    path = DATA / "analysis" / "security_schema.json"
    path.write_text(json.dumps(out, separators=(",", ":")).replace('],[', '],\n['))
    print(f"wrote {path}: {len(out['relations'])} relations, {len(out['functions'])} functions")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"))
