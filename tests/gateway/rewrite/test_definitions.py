"""gateway.rewrite.definitions: which calls are wrapped, and how (pure; what the
wrapper returns is checked against PostgreSQL in tests/gateway/test_definitions.py)."""
from __future__ import annotations

import pytest

from gateway.rewrite.definitions import DefinitionError, redact_definitions, wrap


def test_an_unaliased_call_is_wrapped_and_keeps_its_column_name():
    out = redact_definitions("SELECT pg_get_viewdef('v'::regclass)")
    call = "pg_get_viewdef('v'::regclass)"
    assert out.sql == "SELECT " + wrap(call) + ' AS "pg_get_viewdef"'
    assert out.functions == {"pg_catalog.pg_get_viewdef"}


def test_an_aliased_call_keeps_its_alias():
    out = redact_definitions("SELECT pg_catalog.pg_get_indexdef(i.indexrelid, 0, true) AS d FROM pg_index i")
    assert out.sql == f"SELECT {wrap('pg_catalog.pg_get_indexdef(i.indexrelid, 0, true)')} AS d FROM pg_index i"


def test_calls_outside_the_select_list_are_wrapped_too():
    sql = "SELECT count(*) FROM pg_rewrite WHERE pg_get_ruledef(oid) LIKE '%x%' ORDER BY pg_get_expr(a, b)"
    out = redact_definitions(sql)
    assert out.sql.count("AS piigate_def)") == 2         # two wrappers
    assert "AS \"pg_get_ruledef\"" not in out.sql
    assert out.functions == {"pg_catalog.pg_get_ruledef", "pg_catalog.pg_get_expr"}


def test_positions_after_multibyte_text_are_found():
    out = redact_definitions("SELECT 'é€', pg_get_constraintdef(oid) FROM pg_constraint")
    assert out.sql.startswith("SELECT 'é€', (SELECT CASE")
    assert wrap("pg_get_constraintdef(oid)") in out.sql


def test_statements_without_definitions_are_unchanged():
    sql = "SELECT relname FROM pg_class WHERE relname = 'pg_get_viewdef'"
    assert redact_definitions(sql).sql == sql
    assert redact_definitions(sql).functions == frozenset()


def test_a_function_of_that_name_in_another_schema_is_left_to_the_analysis():
    sql = "SELECT myschema.pg_get_viewdef(1)"
    assert redact_definitions(sql).sql == sql


@pytest.mark.parametrize("sql", [
    "SELECT pg_get_expr(pg_get_viewdef(1), 0)",          # nested: one wrapper would hide the other
    "SELECT 1; SELECT pg_get_viewdef(1)",
    "SELECT pg_get_viewdef(",
])
def test_what_cannot_be_redacted_with_certainty_is_an_error(sql):
    with pytest.raises(DefinitionError):
        redact_definitions(sql)
