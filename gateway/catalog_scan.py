"""Discovery against a live database (asyncpg, I/O): sample each column, ask the
pure detectors in ``catalog.discovery`` for proposals, write the proposal file.

What is sampled: ordinary and partitioned tables outside pg_catalog,
information_schema and pg_toast (a partitioned table is sampled through its
parent). Inheritance children and partitions are sampled only for the columns
their parents do not have: the others are covered by ``derive_catalog`` once the
parent is catalogued. Views and materialized views are not sampled for the same
reason (their rows come from base tables). Foreign tables are not sampled: a
scan must not reach other servers.

Everything runs in one read-only transaction with a statement timeout, values are
read as text (``DateStyle = ISO`` so dates parse), each cut at 1000 characters.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Iterable

from catalog.discovery import Proposal, propose, proposals_to_toml, type_family
from catalog.model import RelationRef

_SKIP_SCHEMAS = ("pg_catalog", "information_schema")

_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.reltuples::float8,
       ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS columns,
       ARRAY(SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS types,
       ARRAY(SELECT pg_catalog.col_description(c.oid, a.attnum) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS comments,
       ARRAY(SELECT pa.attname FROM pg_catalog.pg_inherits i
             JOIN pg_catalog.pg_attribute pa ON pa.attrelid = i.inhparent
             WHERE i.inhrelid = c.oid AND pa.attnum > 0 AND NOT pa.attisdropped) AS inherited
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname <> ALL($1::text[])
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND ($2::text[] IS NULL OR n.nspname = ANY($2::text[]))
ORDER BY n.nspname, c.relname
"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sample_query(ref: RelationRef, columns: list[str], reltuples: float, sample_size: int) -> str:
    """SELECT of ``columns`` as text: all rows up to ``sample_size`` for small
    tables, a block sample (TABLESAMPLE SYSTEM) for large ones so a scan of a big
    table does not read it all."""
    cols = ", ".join(f"pg_catalog.left({quote_ident(c)}::text, 1000)" for c in columns)
    source = f"{quote_ident(ref.schema)}.{quote_ident(ref.name)}"
    if reltuples > sample_size * 20:
        percent = min(100.0, 100.0 * sample_size * 5 / reltuples)
        source += f" TABLESAMPLE SYSTEM ({percent:.6f})"
    return f"SELECT {cols} FROM {source} LIMIT {int(sample_size)}"


async def scan_database(conn, sample_size: int = 200, schemas: Iterable[str] | None = None,
                        skipped: list[tuple[RelationRef, str]] | None = None,
                        today: date | None = None) -> list[Proposal]:
    """Sample every column of every table (optionally only in ``schemas``) and
    return the proposals, ordered by column. Tables the role cannot read are
    skipped and, when ``skipped`` is given, listed there with the reason."""
    import asyncpg

    today = today or date.today()
    wanted = list(schemas) if schemas else None
    proposals: list[Proposal] = []
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        await conn.execute("SET LOCAL statement_timeout = '30s'")
        tables = await conn.fetch(_TABLES_SQL, list(_SKIP_SCHEMAS), wanted)
        for _oid, nsp, rel, reltuples, columns, types, comments, inherited in tables:
            ref = RelationRef(nsp, rel)
            own = [(c, t, note) for c, t, note in zip(columns, types, comments)
                   if c not in set(inherited) and type_family(t) != "other"]
            if not own:
                continue
            query = sample_query(ref, [c for c, _, _ in own], reltuples, sample_size)
            try:
                async with conn.transaction():  # a savepoint: one unreadable table is not fatal
                    rows = await conn.fetch(query)
                    if not rows and reltuples > sample_size * 20:
                        # an unlucky block sample: read the first rows instead
                        rows = await conn.fetch(sample_query(ref, [c for c, _, _ in own], 0, sample_size))
            except asyncpg.PostgresError as exc:
                if skipped is not None:
                    skipped.append((ref, f"{type(exc).__name__}: {exc}"))
                continue
            for i, (col, type_name, note) in enumerate(own):
                p = propose(ref, col, type_name, [r[i] for r in rows], today=today, comment=note)
                if p is not None:
                    proposals.append(p)
    return sorted(proposals, key=lambda p: p.column)


def write_proposal_file(path: str | Path, proposals: Iterable[Proposal], header: str = "") -> None:
    """Write the proposals as a catalog-file TOML for review (see
    ``catalog.discovery.proposals_to_toml``)."""
    Path(path).write_text(proposals_to_toml(proposals, header), encoding="utf-8")
