"""gateway.catalog_scan: discovery on the real sample database."""
from __future__ import annotations

from pathlib import Path

import asyncpg

from catalog.loader import build_catalog, load_catalog_file
from catalog.model import RelationRef
from gateway.catalog_scan import sample_query, scan_database, write_proposal_file

EXAMPLE_CATALOG = Path(__file__).resolve().parents[2] / "examples" / "catalog.toml"
PII = {"full_name": "name", "email": "email", "phone": "phone", "ssn": "ssn", "dob": "dob",
       "card_number": "card_number"}
# Every PII column of tests/data/security (schema.sql + fixtures.sql). Inheritance
# children and partitions are covered through their parents (catalog derivation);
# customers_part is its own table (LIKE customers), so it is proposed itself.
EXPECTED = ({(f"public.customers.{c}", cat) for c, cat in PII.items()}
            | {(f"public.customers_part.{c}", cat) for c, cat in PII.items()}
            | {("public.orders.note", "free_text")})


async def _scan(dsn: str, **kw):
    conn = await asyncpg.connect(dsn)
    try:
        return await scan_database(conn, **kw)
    finally:
        await conn.close()


async def raw_values(dsn: str) -> set[str]:
    """Every value of every sampled table, as text, that is long enough to be
    recognisable (ids like '7' would match any digit)."""
    conn = await asyncpg.connect(dsn)
    try:
        values: set[str] = set()
        for table in ("customers", "orders", "customers_part"):
            for row in await conn.fetch(f"SELECT * FROM {table}"):
                values |= {str(v) for v in row.values() if v is not None and len(str(v)) >= 4}
        return values
    finally:
        await conn.close()


async def test_discovery_finds_every_pii_column_and_nothing_else(sample_db):
    proposals = await _scan(sample_db)
    assert {(str(p.column), p.category) for p in proposals} == EXPECTED
    proposed = {(p.column.table, p.column.column) for p in proposals}
    for table in ("customers", "orders"):
        for col in ("city", "amount", "id", "created_at", "customer_id"):
            assert (table, col) not in proposed
    for p in proposals:
        assert 0 < p.confidence <= 1 and p.evidence
    by_col = {str(p.column): p for p in proposals}
    # synthetic values: right shape, not issuable -> lower confidence, evidence says why
    assert any("area 000 is never issued" in e for e in by_col["public.customers.ssn"].evidence)
    assert by_col["public.customers.email"].confidence > by_col["public.customers.card_number"].confidence
    note = by_col["public.orders.note"].evidence
    assert any("contain a phone number" in e for e in note) and any("contain a card number" in e for e in note)


async def test_proposal_file_round_trips_and_holds_no_raw_value(sample_db, tmp_path):
    proposals = await _scan(sample_db)
    out = tmp_path / "proposals.toml"
    write_proposal_file(out, proposals, header="test scan")
    entries = load_catalog_file(out).entries
    assert {(str(e.column), e.category) for e in entries} == EXPECTED
    text = out.read_text()
    assert "# confidence: " in text and "# evidence: " in text and "# masked examples: " in text
    leaked = [v for v in await raw_values(sample_db) if v in text]
    assert leaked == []


async def test_example_catalog_covers_every_proposal(sample_db):
    proposals = await _scan(sample_db)
    catalog = build_catalog(load_catalog_file(EXAMPLE_CATALOG).entries, ())
    assert [str(p.column) for p in proposals if p.column not in catalog] == []


async def test_schema_filter_and_sample_size(sample_db):
    assert await _scan(sample_db, schemas=["scratch"]) == []
    small = await _scan(sample_db, sample_size=5)
    email = next(p for p in small if str(p.column) == "public.customers.email")
    assert any(e.startswith("5/5 ") for e in email.evidence)


async def test_large_tables_are_block_sampled(sample_db_fresh):
    conn = await asyncpg.connect(sample_db_fresh)
    try:
        await conn.execute("CREATE TABLE big AS SELECT g AS id, 'user' || g || '@example.invalid' AS contact "
                           "FROM generate_series(1, 30000) g; ANALYZE big")
        proposals = await scan_database(conn, sample_size=50, schemas=["public"])
    finally:
        await conn.close()
    contact = next(p for p in proposals if p.column.table == "big")
    assert contact.category == "email"
    assert any(e.endswith("pass e-mail address validation") and e.split("/")[1].startswith("50 ")
               for e in contact.evidence)


def test_sample_query_text():
    ref = RelationRef("public", 'Odd"Name')
    assert sample_query(ref, ["email"], 10, 200) == \
        'SELECT pg_catalog.left("email"::text, 1000) FROM "public"."Odd""Name" LIMIT 200'
    assert "TABLESAMPLE SYSTEM (1.000000)" in sample_query(ref, ["email"], 100_000, 200)


async def test_unreadable_tables_are_skipped_and_reported(sample_db_fresh):
    admin = await asyncpg.connect(sample_db_fresh)
    try:
        await admin.execute("CREATE TABLE secrets(email text); INSERT INTO secrets VALUES ('a@example.org')")
    finally:
        await admin.close()
    dsn = sample_db_fresh.replace(f"//{sample_db_fresh.user}@", "//gw_user@", 1)
    skipped: list = []
    conn = await asyncpg.connect(dsn)
    try:
        proposals = await scan_database(conn, skipped=skipped)
    finally:
        await conn.close()
    assert [(str(ref), reason.split(":")[0]) for ref, reason in skipped] == \
        [("public.secrets", "InsufficientPrivilegeError")]
    assert {(str(p.column), p.category) for p in proposals} == EXPECTED


async def test_column_comments_are_evidence(sample_db):
    note = next(p for p in await _scan(sample_db) if str(p.column) == "public.orders.note")
    assert "column comment mentions free_text" in note.evidence
