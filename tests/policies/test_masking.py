"""Masking expressions executed on a real PostgreSQL: same names and types as the
unmasked column (asyncpg's prepared-statement attributes), and no original value
survives. Also the keyed pseudonym installed from gateway/rewrite/masking_functions.sql."""
from __future__ import annotations

import asyncpg
import pytest

from gateway.rewrite.pseudonym import install_statements, reference_pseudonym
from policies.masking import BUILTIN_STRATEGIES, mask_expression, quote_ident, validate_strategy
from policies.model import MaskStrategy

COLUMNS = [  # name, type_name (format_type spelling), a value
    ("t_text", "text", "'000-00-0007'"),
    ("t_varchar", "character varying(40)", "'user07@example.invalid'"),
    ("t_char", "character(11)", "'000-00-0007'"),
    ("t_phone", "text", "'+1-555-0107'"),
    ("t_card", "text", "'0000-0000-0000-0007'"),
    ("t_date", "date", "'1969-12-22'"),
    ("t_ts", "timestamp without time zone", "'1969-12-22 10:11:12'"),
    ("t_tstz", "timestamp with time zone", "'1969-12-22 10:11:12+00'"),
    ("t_int", "integer", "123457"),
    ("t_num", "numeric(10,2)", "98765.43"),
    ("t_json", "jsonb", "'{\"ssn\": \"000-00-0007\"}'"),
]
ORIGINALS = ["000-00-0007", "user07@example.invalid", "+1-555-0107", "0000-0000-0000-0007",
             "1969-12-22", "123457", "98765.43", "user07"]


@pytest.fixture
async def conn(fresh_db):
    c = await asyncpg.connect(fresh_db)
    cols = ", ".join(f"{n} {t}" for n, t, _ in COLUMNS)
    await c.execute(f"CREATE TABLE m ({cols})")
    await c.execute(f"INSERT INTO m VALUES ({', '.join(v for _, _, v in COLUMNS)})")
    await c.execute("INSERT INTO m DEFAULT VALUES")   # a row of NULLs
    try:
        yield c
    finally:
        await c.close()


def _select(strategy: MaskStrategy, pseudonym: bool = False) -> tuple[str, list[str]]:
    items, notes = [], []
    for name, type_name, _ in COLUMNS:
        m = mask_expression(quote_ident(name), type_name, strategy, pseudonym_installed=pseudonym)
        items.append(f"{m.sql} AS {quote_ident(name)}")
        if m.note:
            notes.append(m.note)
    return f"SELECT {', '.join(items)} FROM m", notes


def _attrs(stmt) -> list[tuple[str, str]]:
    return [(a.name, a.type.name) for a in stmt.get_attributes()]


def _assert_nothing_survives(rows) -> None:
    for row in rows:
        for value in row.values():
            text = str(value)
            for original in ORIGINALS:
                assert original not in text, f"{original!r} survived masking as {text!r}"


@pytest.mark.parametrize("name", sorted(BUILTIN_STRATEGIES))
async def test_strategy_keeps_names_and_types_and_hides_values(conn, name):
    strategy = BUILTIN_STRATEGIES[name]
    sql, _ = _select(strategy)
    masked = await conn.prepare(sql)
    plain = await conn.prepare("SELECT * FROM m")
    assert _attrs(masked) == _attrs(plain)
    rows = await masked.fetch()
    assert len(rows) == 2
    _assert_nothing_survives(rows)
    # NULL stays NULL for every strategy
    assert all(v is None for v in rows[1].values())


async def test_partial_email_keeps_domain_only(conn):
    sql, _ = _select(BUILTIN_STRATEGIES["partial_email"])
    row = (await conn.fetch(sql))[0]
    assert row["t_varchar"] == "***@example.invalid"
    assert row["t_text"] == "***"            # no '@': nothing kept
    assert row["t_int"] is None              # partial on a number: redacted


async def test_partial_keeps_last_chars_only_of_long_values(conn):
    sql, _ = _select(MaskStrategy("partial", {"keep": 4}))
    row = (await conn.fetch(sql))[0]
    assert row["t_card"] == "***0007"
    assert row["t_phone"] == "***0107"
    assert row["t_text"] == "***0007"


async def test_year_and_numeric_generalisation(conn):
    import datetime
    row = (await conn.fetch(_select(BUILTIN_STRATEGIES["year"])[0]))[0]
    assert row["t_date"] == datetime.date(1969, 1, 1)
    assert row["t_ts"] == datetime.datetime(1969, 1, 1)
    assert row["t_tstz"].year in (1968, 1969) and row["t_tstz"].month in (1, 12)
    row = (await conn.fetch(_select(MaskStrategy("round", {"digits": -3}))[0]))[0]
    assert row["t_int"] == 123000 and str(row["t_num"]) == "99000.00"
    row = (await conn.fetch(_select(MaskStrategy("bucket", {"width": 1000}))[0]))[0]
    assert row["t_int"] == 123000


async def test_hash_without_function_falls_back_to_redact_and_says_so(conn):
    sql, notes = _select(BUILTIN_STRATEGIES["hash"])
    assert notes and all("redact" in n for n in notes)
    row = (await conn.fetch(sql))[0]
    assert row["t_text"] == "[redacted]"


async def test_hash_pseudonym_is_keyed_deterministic_and_key_stays_out_of_query_text(conn):
    key = b"test-key-0123456789-abcdefghijklmnop"
    for stmt in install_statements(key):
        await conn.execute(stmt)
    sql, notes = _select(BUILTIN_STRATEGIES["hash"], pseudonym=True)
    assert "piigate.pseudonym" in sql and key.hex() not in sql and "test-key" not in sql
    masked = await conn.prepare(sql)
    assert _attrs(masked) == _attrs(await conn.prepare("SELECT * FROM m"))
    row = (await masked.fetch())[0]
    assert row["t_text"] == reference_pseudonym(key, "000-00-0007")
    # same value, same pseudonym (char(11) keeps its type, so its pseudonym is cut to 11)
    assert row["t_char"] == row["t_text"][:11]
    assert await conn.fetchval("SELECT count(DISTINCT piigate.pseudonym(v)) FROM "
                               "(VALUES ('a'), ('a'), ('b')) AS x(v)") == 2
    _assert_nothing_survives([row])
    # the key table is unreadable by an ordinary role; the function still works for it
    role = "piigate_mask_probe"
    await conn.execute(f"DROP ROLE IF EXISTS {role}")
    await conn.execute(f"CREATE ROLE {role}")
    try:
        await conn.execute(f"GRANT SELECT ON m TO {role}")
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            assert await conn.fetchval("SELECT piigate.pseudonym('x')") == reference_pseudonym(key, "x")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT * FROM piigate.pseudonym_key")
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.execute(f"REVOKE ALL ON m FROM {role}")
        await conn.execute(f"DROP ROLE {role}")


class _Rollback(Exception):
    pass


def test_expressions_qualify_every_function():
    import re
    for name, strategy in BUILTIN_STRATEGIES.items():
        for type_name in ("text", "date", "integer"):
            sql = mask_expression('"c"', type_name, strategy, pseudonym_installed=True).sql
            for call in re.findall(r'([\w."]+)\s*\(', sql):
                assert call.upper() in ("CAST", "OPERATOR") or call.startswith(("pg_catalog.", "piigate.")), (name, call, sql)
            # a negative numeric literal is folded into the constant by the grammar: no operator
            bare = re.sub(r"OPERATOR\(pg_catalog\.[^)]+\)|'[^']*'|, -\d+\)", "", sql)
            assert not re.search(r"[=<>*/+-]", bare), (name, sql)


@pytest.mark.parametrize("strategy, problem", [
    (MaskStrategy("scramble"), "unknown kind"),
    (MaskStrategy("partial", {"keep": 0}), "keep"),
    (MaskStrategy("round", {"digits": "2"}), "digits"),
    (MaskStrategy("bucket", {"width": -5}), "width"),
    (MaskStrategy("redact", {"colour": "red"}), "unknown parameter"),
])
def test_validate_strategy(strategy, problem):
    assert problem in (validate_strategy(strategy) or "")
