"""AnalysisCache: exact-text and literal-insensitive hits, and the cases that must
never share an entry."""
from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from catalog.model import ColumnRef, RelationRef
from gateway.analysis import AnalysisCache, StatementKind, analyze
from gateway.analysis.statements import crosscheck
from gateway.schema import Column, LiveSchema, Relation

DATA = pathlib.Path(__file__).resolve().parents[2] / "data"


def test_literal_insensitive_hit_carries_its_own_text(schema):
    cache = AnalysisCache()
    first = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1;", schema)
    again = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 987654;", schema)
    assert cache.hits_shape == 1 and cache.misses == 1
    assert again[0].sql == "SELECT abalance FROM pgbench_accounts WHERE aid = 987654"
    assert again[0].redacted_sql == first[0].redacted_sql == "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
    assert dataclasses.replace(again[0], sql=first[0].sql) == first[0]


def test_hit_keeps_leading_comment_and_whitespace_out_of_sql(schema):
    cache = AnalysisCache()
    cache.analyze("  /* app */ SELECT id FROM orders WHERE id = 1 ; ", schema)
    hit = cache.analyze("  /* app */ SELECT id FROM orders WHERE id = 22 ; ", schema)
    assert cache.hits_shape == 1
    assert hit[0].sql == analyze("  /* app */ SELECT id FROM orders WHERE id = 22 ; ", schema)[0].sql


@pytest.mark.parametrize("a,b", [
    # output aliases share a pg_query fingerprint but not a normalized text
    ("SELECT id AS ssn FROM customers ORDER BY ssn", "SELECT id AS x FROM customers ORDER BY ssn"),
    # positional references read the constant
    ("SELECT id, ssn FROM customers ORDER BY 1", "SELECT id, ssn FROM customers ORDER BY 2"),
    ("SELECT id, ssn FROM customers GROUP BY 1, 2 ORDER BY 1", "SELECT id, ssn FROM customers GROUP BY 1, 2 ORDER BY 2"),
    # object names in strings
    ("SELECT 'orders'::regclass", "SELECT 'customers'::regclass"),
    ("SELECT pg_relation_size('orders')", "SELECT pg_relation_size('customers')"),
    # bodies and values that are constants
    ("DO $$ BEGIN PERFORM 1; END $$", "DO $$ BEGIN PERFORM (SELECT ssn FROM customers); END $$"),
    ("SET search_path = public", "SET search_path = scratch"),
    ("COPY orders TO STDOUT", "COPY orders TO '/tmp/x'"),
    ("PREPARE p AS SELECT 1", "PREPARE p AS SELECT 2"),
    ("SELECT id FROM orders WHERE id = 1", "SELECT id FROM orders WHERE id = $1"),
])
def test_statements_that_differ_in_more_than_literals_never_share_an_entry(schema, a, b):
    cache = AnalysisCache()
    cache.analyze(a, schema)
    got = cache.analyze(b, schema)
    assert cache.hits_shape == 0
    assert got == analyze(b, schema)


def test_key_includes_search_path_schema_version_and_protocol(schema):
    cache = AnalysisCache()
    sql = "SELECT ssn FROM customers WHERE id = 1"
    cache.analyze(sql, schema, ("public",))
    cache.analyze(sql, schema, ("scratch", "public"))
    cache.analyze(sql, schema, ("public",), extended=True)
    other = LiveSchema.of([Relation(RelationRef("public", "customers"), "r", (Column("ssn", "text"), Column("id", "int4")))],
                          [f for fs in schema.functions.values() for f in fs])
    facts = cache.analyze(sql, other, ("public",))
    assert cache.misses == 4
    assert RelationRef("public", "customers_archive") not in facts[0].relations_read


def test_multi_statement_texts_use_the_exact_cache_only(schema):
    cache = AnalysisCache()
    cache.analyze("SELECT 1; SELECT ssn FROM customers WHERE id = 1", schema)
    got = cache.analyze("SELECT 1; SELECT ssn FROM customers WHERE id = 2", schema)
    assert cache.hits_shape == 0 and len(got) == 2
    assert cache.analyze("SELECT 1; SELECT ssn FROM customers WHERE id = 2", schema) is got


def test_eviction_is_bounded(schema):
    cache = AnalysisCache(maxsize=3)
    for i in range(10):
        cache.analyze(f"SELECT {i} AS c{i}", schema)
    assert len(cache._exact) <= 3 and len(cache._shape) <= 3


def test_cached_facts_equal_fresh_analysis_over_the_corpus(schema):
    """Every corpus statement, and a copy with its constants changed, gives through
    the cache exactly what a fresh analysis gives."""
    cache = AnalysisCache()
    lines = (DATA / "security" / "attack-corpus.jsonl").read_text().splitlines() + \
        (DATA / "analysis" / "attacks-extra.jsonl").read_text().splitlines()
    for line in lines:
        sql = json.loads(line)["sql"]
        for variant in (sql, sql.replace("'000", "'999").replace(" 1", " 4").replace("5", "6")):
            assert cache.analyze(variant, schema) == analyze(variant, schema), variant
    assert cache.hits_shape > 0


def test_crosscheck_reports_tables_only_sqlglot_saw():
    assert crosscheck("SELECT * FROM a JOIN b ON true", {"a"}) == frozenset({"b"})
    assert crosscheck("SELECT * FROM \"A\" JOIN b ON true", {"A", "b"}) == frozenset()
    assert crosscheck("SELEC garbage", set()) == frozenset()    # a sqlglot failure is not a disagreement


def test_temp_relation_shadows_public(schema):
    temp = Relation(RelationRef("pg_temp", "orders"), "r", (Column("note", "text"),))
    shadowed = LiveSchema.of(list(schema.relations.values()) + [temp],
                             [f for fs in schema.functions.values() for f in fs])
    facts = analyze("SELECT note FROM orders", shadowed)[0]
    assert facts.column_refs == {ColumnRef("pg_temp", "orders", "note")}
    facts = analyze("SELECT note FROM public.orders", shadowed)[0]
    assert facts.column_refs == {ColumnRef("public", "orders", "note")}
    assert analyze("CREATE TEMP TABLE orders (note text)", schema)[0].creates == RelationRef("pg_temp", "orders")


def test_analyze_never_raises(schema):
    for sql in ["", ";", "SELECT", "\x00", "SELECT " + "(" * 5000 + "1" + ")" * 5000, "SELECT 'unterminated"]:
        facts = analyze(sql, schema)
        assert facts and all(f.kind in (StatementKind.EMPTY, StatementKind.UNKNOWN) or f.unknown is None for f in facts)


def test_statement_texts_are_sliced_by_byte_offsets(schema):
    sql = "SELECT 'é😀' AS a;\n  SELECT '漢字', ssn FROM customers ; -- trailing\nSELECT 3"
    facts = analyze(sql, schema)
    assert [f.sql for f in facts] == ["SELECT 'é😀' AS a", "SELECT '漢字', ssn FROM customers", "SELECT 3"]
    assert facts[1].redacted_sql == "SELECT $1, ssn FROM customers"
    cache = AnalysisCache()
    cache.analyze("  SELECT '漢字', ssn FROM customers ; ", schema)
    hit = cache.analyze("  SELECT 'ascii', ssn FROM customers ; ", schema)
    assert cache.hits_shape == 1 and hit[0].sql == "SELECT 'ascii', ssn FROM customers"


def test_session_temp_relation_makes_shadowed_names_unknown(schema):
    from gateway.analysis import with_temp_relations
    created = analyze("CREATE TEMP VIEW orders AS SELECT ssn AS note FROM customers", schema)[0].creates
    shadowed = with_temp_relations(schema, [created])
    assert shadowed.version != schema.version
    assert analyze("SELECT note FROM orders", shadowed)[0].is_unknown
    assert not analyze("SELECT note FROM public.orders", shadowed)[0].is_unknown


def test_dollar_user_in_search_path_is_unknown(schema):
    facts = analyze("SELECT id FROM orders", schema, ('"$user"'.strip('"'), "public"))[0]
    assert facts.is_unknown and "$user" in facts.unknown


def test_nul_character_is_unknown_and_never_shares_a_key(schema):
    cache = AnalysisCache()
    cache.analyze("SELECT 1", schema)
    for sql in ("SELECT 1\x00; SELECT ssn FROM customers", "SELECT 2\x00; SELECT ssn FROM customers"):
        facts = cache.analyze(sql, schema)
        assert len(facts) == 1 and facts[0].is_unknown and "NUL" in facts[0].unknown
    assert cache.hits_shape == 0


def test_parse_errors_do_not_repeat_literals(schema):
    for sql in ("SELECT * FROM customers WHERE ssn = '000-00-0007' LIMT 1",
                "SELECT 'unterminated 000-00-0007", "SELECT 1 FROM x WHERE y = '000-00-0007' '000-00-0008'"):
        facts = analyze(sql, schema)
        assert facts[0].unknown.startswith("parse error") and "000-00" not in facts[0].unknown, facts[0].unknown
        assert "000-00" not in facts[0].redacted_sql


@pytest.mark.parametrize("schema_name,name", [("public", "crosstab"), ("public", "connectby"),
                                              ("cron", "schedule"), ("public", "xpath_table")])
def test_extension_functions_that_run_sql_text_are_unknown(schema, schema_name, name):
    from gateway.schema import Function
    fn = Function(schema_name, name, ("text",), "SETOF record", "v", False, True, "f", "c")
    extended = LiveSchema.of(list(schema.relations.values()),
                             [f for fs in schema.functions.values() for f in fs] + [fn],
                             ("public", "cron"))
    facts = analyze(f"SELECT * FROM {schema_name}.{name}('SELECT ssn FROM customers') AS t(x text)", extended)[0]
    assert facts.is_unknown and name in facts.unknown
