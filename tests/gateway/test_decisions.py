"""gateway.decisions: statement kinds to actions, facts to DecisionRequest."""
from __future__ import annotations

import pytest

from catalog.model import Catalog, CatalogEntry, ColumnRef, RelationRef, Sensitivity
from gateway.analysis.facts import ColumnUse, StatementFacts, StatementKind as K, Usage
from gateway.decisions import action_of, build_request
from gateway.schema import Function, LiveSchema
from policies.model import Action, GrantView, Principal, RequestContext

CUST = RelationRef("public", "customers")
SSN = ColumnRef("public", "customers", "ssn")
CITY = ColumnRef("public", "customers", "city")
EMAIL = ColumnRef("public", "customers", "email")
CATALOG = Catalog.of([CatalogEntry(SSN, "ssn", Sensitivity.CRITICAL), CatalogEntry(EMAIL, "email", Sensitivity.MEDIUM)])
SELECT_SSN = StatementFacts(K.SELECT, "SELECT ssn, city FROM customers", fingerprint="fp",
                            relations_read=frozenset({CUST}),
                            columns=(ColumnUse(SSN, frozenset({Usage.RETURNED})),
                                     ColumnUse(CITY, frozenset({Usage.PREDICATE}))))


@pytest.mark.parametrize("kind, action", [
    (K.SELECT, Action.READ), (K.INSERT, Action.WRITE), (K.UPDATE, Action.WRITE), (K.MERGE, Action.WRITE),
    (K.COPY_FROM, Action.WRITE), (K.DELETE, Action.DELETE), (K.COPY_TO, Action.EXPORT), (K.DDL, Action.DDL),
    (K.UTILITY, Action.DDL), (K.CALL, Action.CALL), (K.DO, Action.CALL), (K.SESSION, Action.SESSION),
    (K.LISTEN, Action.SESSION), (K.SET, Action.READ), (K.TRANSACTION, Action.READ), (K.EMPTY, Action.READ),
    (K.UNKNOWN, Action.UNKNOWN),
])
def test_action_of_kind(kind, action):
    assert action_of(StatementFacts(kind, "x")) is action


def test_wrappers_take_the_inner_action():
    update = StatementFacts(K.UPDATE, "UPDATE customers SET city = 'x'", relations_written=frozenset({CUST}))
    assert action_of(StatementFacts(K.EXPLAIN, "EXPLAIN ANALYZE UPDATE ...", command="EXPLAIN ANALYZE", inner=update)) is Action.WRITE
    assert action_of(StatementFacts(K.EXPLAIN, "EXPLAIN UPDATE ...", command="EXPLAIN", inner=update)) is Action.READ
    assert action_of(StatementFacts(K.EXPLAIN, "EXPLAIN (ANALYZE) UPDATE customers SET city = 'x'", inner=update)) is Action.WRITE
    assert action_of(StatementFacts(K.CURSOR, "DECLARE c CURSOR FOR ...", inner=SELECT_SSN)) is Action.READ
    assert action_of(StatementFacts(K.PREPARE, "PREPARE p AS UPDATE ...", inner=update)) is Action.WRITE
    assert action_of(StatementFacts(K.EXPLAIN, "EXPLAIN ???", inner=StatementFacts(K.UNKNOWN, "???"))) is Action.UNKNOWN
    assert action_of(StatementFacts(K.CURSOR, "FETCH 1 FROM c")) is Action.READ
    assert action_of(StatementFacts(K.CURSOR, "FETCH 1 FROM nowhere", unknown="cursor not declared")) is Action.UNKNOWN


def test_select_with_writing_cte_is_a_write():
    facts = StatementFacts(K.SELECT, "WITH u AS (UPDATE ...) SELECT * FROM u", relations_written=frozenset({CUST}))
    assert action_of(facts) is Action.WRITE


def test_build_request_fills_categories_relation_columns_and_context():
    grant = GrantView("g", "ann", Action.READ, frozenset({SSN}), expires_at=10.0)
    ctx = RequestContext(client_addr="10.0.0.1", now=5.0)
    req = build_request(SELECT_SSN, CATALOG, Principal("ann", frozenset({"analyst"})), ctx, [grant])
    assert req.action is Action.READ and req.fingerprint == "fp" and req.statement_kind == "select"
    by_col = {c.column: c for c in req.columns}
    assert by_col[SSN].category == "ssn" and by_col[SSN].sensitivity == Sensitivity.CRITICAL
    assert by_col[SSN].usages == {"returned"}
    assert by_col[CITY].category is None and by_col[CITY].usages == {"predicate"}
    assert [c.column for c in req.pii] == [SSN]
    assert {c.column for c in req.relation_columns} == {SSN, EMAIL}   # every catalogued column of customers
    assert req.grants == (grant,) and req.context is ctx and req.relations == {CUST}


def test_build_request_uses_the_inner_statement_and_keeps_unknown():
    declare = StatementFacts(K.CURSOR, "DECLARE c CURSOR FOR SELECT ssn, city FROM customers", inner=SELECT_SSN)
    req = build_request(declare, CATALOG, Principal("ann"))
    assert [c.column for c in req.pii] == [SSN] and req.statement_kind == "cursor"
    wrapped_unknown = StatementFacts(K.EXPLAIN, "EXPLAIN ...", unknown="options not understood", inner=SELECT_SSN)
    assert build_request(wrapped_unknown, CATALOG, Principal("ann")).unknown == "options not understood"


def test_risky_functions_need_the_schema():
    schema = LiveSchema.of([], [
        Function("public", "customer_lookup", ("integer",), "SETOF customers", "s", True, True, "f", "sql"),
        Function("public", "hstore", ("record",), "hstore", "s", False, False, "f", "c"),
        Function("public", "my_sql_fn", ("text",), "text", "s", False, False, "f", "sql"),
        Function("pg_catalog", "upper", ("text",), "text", "i", False, False, "f", "internal"),
    ])
    facts = StatementFacts(K.SELECT, "...", functions=frozenset(
        {"public.customer_lookup", "public.hstore", "public.my_sql_fn", "pg_catalog.upper"}))
    req = build_request(facts, CATALOG, Principal("ann"), schema=schema)
    assert req.risky_functions == {"public.customer_lookup", "public.my_sql_fn"}
    assert build_request(facts, CATALOG, Principal("ann")).risky_functions == frozenset()


def test_enforce_forwards_allow_rewrites_mask_and_fails_closed():
    from gateway.analysis import analyze
    from gateway.decisions import enforce
    from policies import default_policy
    from policies.model import Effect
    from tests.gateway.rewrite.sample_schema import security_catalog, security_schema

    schema = security_schema()
    catalog = security_catalog(schema)
    policy = default_policy()

    def run(sql):
        (facts,) = analyze(sql, schema, ("public",))
        return enforce(facts, catalog, schema, policy, Principal("eve"), RequestContext(now=1.0))

    e = run("SELECT amount FROM orders")
    assert e.decision.effect is Effect.ALLOW and e.sql == "SELECT amount FROM orders"
    e = run("SELECT email FROM customers WHERE id = 1")
    assert e.decision.effect is Effect.MASK and e.sql.startswith("SELECT email FROM (SELECT ")
    e = run("SELECT ssn FROM customers TABLESAMPLE SYSTEM (10)")
    assert (e.decision.effect, e.decision.rule, e.sql) == (Effect.DENY, "rewrite:cannot-mask", None)
    assert "cannot be masked with certainty" in e.decision.message and e.decision.sqlstate == "42501"
    e = run("COPY customers TO STDOUT")
    assert e.decision.effect is Effect.DENY and e.sql is None
