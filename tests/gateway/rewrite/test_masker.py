"""Pure rewriter tests: where subqueries are spliced, what is left alone, and when
the rewriter refuses (fail closed)."""
from __future__ import annotations

import pglast
import pytest

from catalog.model import ColumnRef, RelationRef
from gateway.rewrite import RewriteError, mask_statement, rewrite
from policies.model import MaskPlan, MaskStrategy
from tests.gateway.rewrite.sample_schema import sample_catalog, sample_schema

SCHEMA = sample_schema()
CATALOG = sample_catalog()
PLAN = MaskPlan({ref: MaskStrategy("redact") for ref in CATALOG.entries})
WRAP = '(SELECT "id", '
PATH = ("public",)


def masked(sql: str, plan: MaskPlan = PLAN) -> str:
    return mask_statement(sql, plan, SCHEMA, PATH)


def wrapped(sql: str, plan: MaskPlan = PLAN) -> tuple[RelationRef, ...]:
    return rewrite(sql, plan, SCHEMA, PATH).wrapped


def cust(n: int = 1) -> tuple[RelationRef, ...]:
    return (RelationRef("public", "customers"),) * n


def test_alias_and_column_alias_list_are_kept():
    out = masked("SELECT s FROM customers AS c(i, n, e, p, s) WHERE s LIKE '0%'")
    assert out.startswith("SELECT s FROM (SELECT ")
    assert out.endswith(' FROM "public"."customers") AS c(i, n, e, p, s) WHERE s LIKE \'0%\'')


def test_no_alias_gets_the_relation_name():
    out = masked("SELECT customers.ssn FROM customers")
    assert out.endswith('FROM "public"."customers") AS "customers"')


def test_every_column_in_order_masked_ones_cast_back():
    out = masked("SELECT * FROM customers")
    inner = out[out.index("(SELECT ") + 8: out.index(' FROM "public"."customers")')]
    target = pglast.parse_sql(f"SELECT {inner}")[0].stmt.targetList
    names = [t.name or t.val.fields[-1].sval for t in target]
    assert names == ["id", "full_name", "email", "phone", "ssn", "dob", "card_number", "city", "created_at"]
    assert [t.name is not None for t in target] == [False, True, True, True, True, True, True, False, False]
    assert 'CAST(NULL AS date) AS "dob"' in inner


@pytest.mark.parametrize("sql, count", [
    ("SELECT x FROM (SELECT ssn AS x FROM customers) t", 1),
    ("SELECT o.id, l.s FROM orders o CROSS JOIN LATERAL (SELECT c.ssn AS s FROM customers c WHERE c.id = o.customer_id) l", 1),
    ("SELECT 'x' UNION SELECT ssn FROM customers UNION SELECT email FROM public.customers", 2),
    ("VALUES ((SELECT string_agg(ssn, ',') FROM customers))", 1),
    ("SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn LIKE '0%')", 1),
    ("SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id JOIN customers d USING (id)", 2),
    ("SELECT EXISTS (SELECT 1 FROM customers c WHERE c.ssn = '000-00-0007')", 1),
    ("UPDATE orders SET note = 'x' FROM customers c WHERE c.id = orders.customer_id AND c.ssn LIKE '0%'", 1),
    ("DELETE FROM orders USING customers c WHERE c.id = orders.customer_id AND c.ssn LIKE '0%'", 1),
    ("EXPLAIN SELECT * FROM customers WHERE ssn LIKE '0%'", 1),
    ("DECLARE c1 CURSOR FOR SELECT * FROM customers", 1),
    ("PREPARE p1 AS SELECT ssn FROM customers WHERE id = $1", 1),
    ("COPY (SELECT ssn FROM customers) TO STDOUT", 1),
    ("TABLE customers", 1),
    ("TABLE ONLY customers UNION ALL TABLE customers_archive ORDER BY 1", 2),
    ("SELECT * FROM (TABLE customers) t", 1),
])
def test_read_positions_are_wrapped(sql, count):
    assert len(wrapped(sql)) == count
    assert len(pglast.parse_sql(masked(sql))) == 1


def test_cte_shadowing_a_table_is_not_wrapped_but_its_body_is():
    sql = "WITH customers AS (SELECT * FROM customers) SELECT ssn FROM customers"
    out = masked(sql)
    assert wrapped(sql) == cust(1)
    assert out.endswith(") SELECT ssn FROM customers")        # the CTE reference stays
    assert out.startswith("WITH customers AS (SELECT * FROM (SELECT ")


def test_cte_scoping_non_recursive_sees_earlier_siblings_only():
    sql = ("WITH a AS (SELECT * FROM customers), customers AS (SELECT * FROM a) "
           "SELECT * FROM customers, (WITH x AS (SELECT 1) SELECT * FROM customers) q")
    # only the real table inside `a` is wrapped; later names are CTE references
    assert wrapped(sql) == cust(1)
    sql = "WITH x AS (SELECT * FROM customers) SELECT * FROM x, customers"
    assert wrapped(sql) == cust(2)


def test_recursive_cte_self_reference_is_not_wrapped():
    sql = ("WITH RECURSIVE customers(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM customers WHERE n < 3) "
           "SELECT * FROM customers")
    assert wrapped(sql) == ()
    assert masked(sql) == sql


def test_only_and_legacy_star_and_parenthesised_only():
    assert 'FROM ONLY "public"."customers") c' in masked("SELECT c.ssn FROM ONLY customers c")
    assert 'FROM ONLY "public"."customers") AS "customers"' in masked("SELECT * FROM ONLY (public.customers)")
    out = masked("SELECT * FROM customers * WHERE id = 1")
    assert out.endswith('FROM "public"."customers") AS "customers" WHERE id = 1')


def test_identifiers_quoted_unicode_and_case():
    assert wrapped('SELECT * FROM U&"\\0063ustomers"') == cust(1)
    assert wrapped('SELECT EMAIL, "ssn" FROM PUBLIC.CUSTOMERS') == cust(1)
    with pytest.raises(RewriteError, match="not in the live schema"):
        masked('SELECT * FROM "Customers"')


def test_non_ascii_text_before_the_relation():
    sql = "SELECT 'héllo ✓' AS greeting, ssn FROM customers WHERE city <> 'Zürich'"
    out = masked(sql)
    assert out.startswith("SELECT 'héllo ✓' AS greeting, ssn FROM (SELECT ")
    assert out.endswith("AS \"customers\" WHERE city <> 'Zürich'")


def test_children_and_views():
    assert wrapped("SELECT ssn FROM customers_archive") == (RelationRef("public", "customers_archive"),)
    assert wrapped("SELECT * FROM customer_contacts") == (RelationRef("public", "customer_contacts"),)
    out = masked("SELECT * FROM customer_contacts")
    assert 'FROM "public"."customer_contacts") AS "customer_contacts"' in out
    assert '"id", CAST(' in out
    # a view over PII columns that exposes none of them is left alone
    assert wrapped("SELECT * FROM city_names") == ()


def test_child_masked_through_parent_plan_only():
    plan = MaskPlan({ColumnRef("public", "customers", "ssn"): MaskStrategy("redact")})
    out = masked("SELECT * FROM customers_archive", plan)
    assert "CAST(CASE WHEN \"ssn\" IS NULL THEN NULL ELSE '[redacted]' END AS text) AS \"ssn\"" in out
    # descendants' entries apply to the parent unless ONLY
    plan = MaskPlan({ColumnRef("public", "customers_archive", "ssn"): MaskStrategy("redact")})
    assert wrapped("SELECT * FROM customers", plan) == cust(1)
    assert wrapped("SELECT * FROM ONLY customers", plan) == ()


def test_view_without_attribution_is_refused():
    plan = MaskPlan({ColumnRef("public", "customers", "email"): MaskStrategy("redact")})
    # order_report reads customers, but this plan says nothing of its columns and it has no lineage
    with pytest.raises(RewriteError, match="view public.order_report"):
        masked("SELECT * FROM order_report", plan)


@pytest.mark.parametrize("sql, message", [
    ("UPDATE customers SET city = city WHERE id <= 5 RETURNING ssn, email", "target of a write"),
    ("INSERT INTO customers(id, full_name, city) VALUES (1, 'x', 'y') RETURNING customers.*", "target of a write"),
    ("WITH u AS (UPDATE customers SET city = city RETURNING email) SELECT * FROM u", "target of a write"),
    ("DELETE FROM customers WHERE ssn = '000-00-0007'", "target of a write"),
    ("MERGE INTO customers c USING orders o ON o.customer_id = c.id WHEN MATCHED THEN DO NOTHING", "target of a write"),
    ("COPY customers TO STDOUT", "target of a write"),
    ("SELECT * FROM customers TABLESAMPLE SYSTEM (50)", "does not model"),
    ("LOCK TABLE customers", "does not model"),
    ("SELECT * FROM nosuch", "not in the live schema"),
    ("SELECT * FROM otherdb.public.customers", "cross-database"),
    ("SELECT 1; SELECT ssn FROM customers", "exactly one statement"),
    ("SELECT\u00a0ssn FROM", "does not parse"),
])
def test_refusals(sql, message):
    with pytest.raises(RewriteError, match=message):
        masked(sql)


def test_nothing_to_mask_returns_the_statement_unchanged():
    for sql in ("SELECT id, amount FROM orders", "SELECT 1", "BEGIN", "SHOW search_path"):
        assert masked(sql) == sql
    assert masked("SELECT * FROM customers", MaskPlan({})) == "SELECT * FROM customers"


def test_search_path_decides_which_relation_is_wrapped():
    with pytest.raises(RewriteError):
        rewrite("SELECT * FROM customers", PLAN, SCHEMA, ("scratch",))   # not visible: unknown


def test_plan_naming_a_missing_column_is_refused():
    plan = MaskPlan({ColumnRef("public", "customers", "no_such"): MaskStrategy("redact")})
    with pytest.raises(RewriteError, match="no such column"):
        masked("SELECT * FROM customers", plan)


def test_table_statement_becomes_select_star_from_the_wrapper():
    out = masked("TABLE customers")
    assert out.startswith("SELECT * FROM (SELECT ") and out.endswith('AS "customers"')


def test_pseudonym_is_detected_from_the_live_schema():
    from gateway.rewrite import pseudonym_available
    from gateway.schema import Function, LiveSchema
    plan = MaskPlan({ColumnRef("public", "customers", "email"): MaskStrategy("hash")})
    assert "piigate.pseudonym" not in masked("SELECT email FROM customers", plan)
    with_fn = LiveSchema.of(SCHEMA.relations.values(), [
        Function("piigate", "pseudonym", ("text",), "text", "s", True, False, "f", "sql")], ("public",))
    assert pseudonym_available(with_fn)
    assert "piigate.pseudonym(" in mask_statement("SELECT email FROM customers", plan, with_fn, PATH)
    # an impostor that is not SECURITY DEFINER is not trusted
    impostor = LiveSchema.of(SCHEMA.relations.values(), [
        Function("piigate", "pseudonym", ("text",), "text", "s", False, False, "f", "sql")], ("public",))
    assert not pseudonym_available(impostor)


def test_verification_pass_catches_a_reference_left_outside_the_wrappers():
    from gateway.rewrite.masker import _Rewriter
    sql = "SELECT ssn FROM customers c, customers d"
    r = _Rewriter(sql, PLAN, SCHEMA, PATH, False)
    r.walk(r._parse_one(sql, "x"), None, None, frozenset())
    assert len(r.splices) == 2
    r._verify("SELECT 1")            # both spliced: the skeleton holds no masked reference
    r.splices.pop()                  # simulate a splice the walk forgot
    with pytest.raises(RewriteError, match="still reads public.customers outside a masking subquery"):
        r._verify("SELECT 1")


def test_results_are_cached_only_for_equal_inputs():
    a = rewrite("SELECT ssn FROM customers", PLAN, SCHEMA, PATH)
    assert rewrite("SELECT ssn FROM customers", MaskPlan(dict(PLAN.columns)), SCHEMA, PATH) is a
    other = MaskPlan({ref: MaskStrategy("null") for ref in CATALOG.entries})
    b = rewrite("SELECT ssn FROM customers", other, SCHEMA, PATH)
    assert b is not a and "CAST(NULL AS text) AS \"ssn\"" in b.sql
    assert rewrite("SELECT ssn FROM customers", PLAN, SCHEMA, ("public", "scratch")) is not a


def test_for_update_of_names_the_wrapper():
    out = masked("SELECT id FROM customers c JOIN orders o ON o.customer_id = c.id FOR UPDATE OF c, o")
    assert out.endswith(") c JOIN orders o ON o.customer_id = c.id FOR UPDATE OF c, o")
    out = masked("SELECT id FROM customers WHERE ssn = 'x' FOR SHARE OF customers")
    assert out.endswith("AS \"customers\" WHERE ssn = 'x' FOR SHARE OF customers")


@pytest.mark.parametrize("first, second", [
    ("SELECT email FROM customers WHERE id = 1", "SELECT email FROM customers WHERE id = 123456"),
    ("SELECT c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id = 7 AND o.amount > 1.5",
     "SELECT c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id = 70000 AND o.amount > 100.25"),
    ("SELECT ssn FROM customers WHERE email = 'a''b' AND id IN (1, 2)",
     "SELECT ssn FROM customers WHERE email = 'x' AND id IN (300, 4)"),
    ("SELECT 'customers', ssn FROM customers", "SELECT 'orders; select ssn from customers', ssn FROM customers"),
    ("SELECT * FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn LIKE '0%') LIMIT 5",
     "SELECT * FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn LIKE '999%') LIMIT 50"),
    ("SELECT 1 + 2", "SELECT 30 + 4"),
])
def test_texts_of_one_shape_are_rewritten_as_each_would_be_alone(first, second, monkeypatch):
    """A point query with a new literal each time is rewritten once per shape: the
    second text comes from the first's template and equals its own full rewrite."""
    from gateway.rewrite import masker
    masker._TEMPLATES.clear()
    rewrite(first, PLAN, SCHEMA, PATH)
    full = masker._Rewriter.run
    with monkeypatch.context() as m:
        m.setattr(masker._Rewriter, "run", lambda self: pytest.fail("rewritten again, not from the shape"))
        from_shape = rewrite(second, PLAN, SCHEMA, PATH)
    alone = full(masker._Rewriter(second, PLAN, SCHEMA, PATH, masker.pseudonym_available(SCHEMA)))
    assert from_shape == alone
