"""gateway.lineage: view columns traced to base-table columns."""
from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from analysis_schema import security_schema  # noqa: E402
from catalog.model import ColumnRef, RelationRef  # noqa: E402
from gateway.lineage import view_lineage, with_view_lineage  # noqa: E402
from gateway.schema import Column, LiveSchema, Relation  # noqa: E402


def C(t, c, s="public"):
    return ColumnRef(s, t, c)


def test_dba_views_trace_to_customers():
    schema = with_view_lineage(security_schema())
    contacts = schema.relation(RelationRef("public", "customer_contacts")).lineage
    assert contacts["email"] == {C("customers", "email"), C("customers_archive", "email")}
    assert contacts["id"] == {C("customers", "id"), C("customers_archive", "id")}
    report = schema.relation(RelationRef("public", "order_report")).lineage
    # what the view's join compares is part of every output (a join carries values)
    joined = {C("orders", "customer_id"), C("customers", "id"), C("customers_archive", "id")}
    assert report["customer_email"] == {C("customers", "email"), C("customers_archive", "email")} | joined
    assert report["amount"] == {C("orders", "amount")} | joined
    mv = schema.relation(RelationRef("public", "customer_city_mv")).lineage
    assert C("customers", "dob") in mv["dob"]
    # a view over a view: down to the table, not the intermediate view
    vv = schema.relation(RelationRef("scratch", "vv")).lineage
    assert vv["secret"] == {C("customers", "ssn"), C("customers_archive", "ssn")}
    assert schema.version == security_schema().version
    # tables are untouched
    assert schema.relation(RelationRef("public", "customers")).lineage == {}


def test_unattributable_view_maps_every_column_to_everything_it_touches():
    base = security_schema()
    odd = Relation(RelationRef("scratch", "odd"), "v", (Column("a", "text"), Column("b", "text")),
                   view_definition=" SELECT customers.id AS a,\n    scratch.mystery(customers.ssn) AS b\n   FROM public.customers;")
    schema = LiveSchema.of(list(base.relations.values()) + [odd], [f for fs in base.functions.values() for f in fs])
    lineage, why = view_lineage(schema, odd)
    assert why and "mystery" in why
    assert C("customers", "ssn") in lineage["a"] and C("customers", "ssn") in lineage["b"]


def test_postgresql_s_own_views_are_analysed_once_and_user_views_every_time(monkeypatch):
    """pg_catalog/information_schema views read only system catalogs: their lineage
    is kept between schema reads (re-analysing them cost ~0.2 s of the event loop
    per read, after every DDL). A user's view is analysed at every read, since
    what it reads may have changed; a system view whose definition changed is too."""
    import gateway.lineage as lineage_mod
    base = security_schema()
    sysview = Relation(RelationRef("pg_catalog", "pg_roles_like"), "v", (Column("rolname", "name"),),
                       view_definition=" SELECT pg_authid.rolname\n   FROM pg_catalog.pg_authid;")
    schema = LiveSchema.of(list(base.relations.values()) + [sysview],
                           [f for fs in base.functions.values() for f in fs])
    calls = []
    real = lineage_mod.view_lineages
    monkeypatch.setattr(lineage_mod, "view_lineages", lambda s, rel: calls.append(rel.ref) or real(s, rel))
    monkeypatch.setattr(lineage_mod, "_system_lineage", {})
    first = with_view_lineage(schema)
    again = with_view_lineage(schema)
    assert calls.count(sysview.ref) == 1
    assert calls.count(RelationRef("public", "customer_contacts")) == 2
    assert first.relation(sysview.ref).lineage == again.relation(sysview.ref).lineage
    assert again.relation(RelationRef("public", "customer_contacts")).lineage["email"] == {
        C("customers", "email"), C("customers_archive", "email")}
    changed = Relation(sysview.ref, "v", (Column("rolname", "name"),),
                       view_definition=" SELECT pg_authid.rolname\n   FROM pg_catalog.pg_authid\n  WHERE true;")
    with_view_lineage(LiveSchema.of(list(base.relations.values()) + [changed],
                                    [f for fs in base.functions.values() for f in fs]))
    assert calls.count(sysview.ref) == 2


SSN = {C("customers", "ssn"), C("customers_archive", "ssn")}


@pytest.mark.parametrize("body, rows_by_ssn", [
    # what decides which rows a view yields, how many and in which order
    ("SELECT id FROM public.customers WHERE ssn LIKE '000%'", True),
    ("SELECT id FROM public.customers ORDER BY ssn", True),
    ("SELECT min(id) AS id FROM public.customers GROUP BY ssn", True),
    ("SELECT DISTINCT ON (ssn) id FROM public.customers", True),
    ("SELECT id, rank() OVER (ORDER BY ssn) AS r FROM public.customers", True),
    ("SELECT id, count(*) OVER (PARTITION BY ssn) AS r FROM public.customers", True),
    ("SELECT id, sum(id) OVER (ORDER BY id ROWS BETWEEN (SELECT length(ssn) FROM public.customers LIMIT 1) "
     "PRECEDING AND CURRENT ROW) AS r FROM public.customers", True),
    ("SELECT g AS id FROM pg_catalog.generate_series(1, 9) g LIMIT (SELECT length(ssn) FROM public.customers LIMIT 1)",
     True),
    ("SELECT ssn AS id FROM public.customers INTERSECT SELECT '1'", True),
    ("SELECT g AS id FROM public.customers c, pg_catalog.generate_series(1, pg_catalog.length(c.ssn)) g", True),
    ("SELECT pg_catalog.unnest(pg_catalog.string_to_array(ssn, '0')) AS id FROM public.customers", True),
    ("SELECT string_agg(email, ',' ORDER BY ssn) AS id FROM public.customers", True),
    # what does not: the values it outputs, joins and filters on ids, UNION ALL, ordering by non-PII
    ("SELECT ssn AS id FROM public.customers", False),
    ("SELECT c.id FROM public.customers c JOIN public.orders o ON o.customer_id = c.id WHERE c.id > 3", False),
    ("SELECT ssn AS id FROM public.customers UNION ALL SELECT note FROM public.orders", False),
    ("SELECT ssn AS id FROM public.customers ORDER BY city LIMIT 5", False),
    ("SELECT g AS id FROM pg_catalog.generate_series(1, 9) g", False),
])
def test_a_views_row_lineage_is_what_chooses_counts_or_orders_its_rows(body, rows_by_ssn):
    base = security_schema()
    view = Relation(RelationRef("scratch", "rows"), "v", (Column("id", "text"),), view_definition=body)
    schema = with_view_lineage(LiveSchema.of(list(base.relations.values()) + [view],
                                             [f for fs in base.functions.values() for f in fs]))
    rel = schema.relation(view.ref)
    assert bool(SSN & rel.row_lineage) is rows_by_ssn, rel.row_lineage
    if rows_by_ssn:      # and every output carries what chose it (masked where it is masked)
        assert SSN <= rel.lineage["id"], rel.lineage


def test_only_a_bare_column_of_a_table_is_an_exact_view_column():
    base = security_schema()
    view = Relation(RelationRef("scratch", "handles"), "v",
                    tuple(Column(n, "text") for n in ("id", "e", "handle", "sub")),
                    view_definition=" SELECT c.id, c.email AS e, '@' || c.email AS handle, s.x AS sub\n"
                                    "   FROM public.customers c JOIN (SELECT email AS x FROM public.customers) s"
                                    " ON true;")
    plain = Relation(RelationRef("scratch", "plain"), "v", tuple(Column(n, "text") for n in ("id", "e", "handle")),
                     view_definition=" SELECT c.id, c.email AS e, '@' || c.email AS handle FROM public.customers c;")
    over = Relation(RelationRef("scratch", "over"), "v", tuple(Column(n, "text") for n in ("e", "handle")),
                    view_definition=" SELECT p.e, p.handle FROM scratch.plain p;")
    schema = with_view_lineage(LiveSchema.of(list(base.relations.values()) + [view, plain, over],
                                             [f for fs in base.functions.values() for f in fs]))
    assert schema.relation(view.ref).exact_columns == frozenset()      # a subquery in FROM: nothing is sure
    assert schema.relation(plain.ref).exact_columns == {"id", "e"}
    assert schema.relation(over.ref).exact_columns == {"e"}
    assert schema.relation(RelationRef("public", "order_report")).exact_columns == {
        "order_id", "customer_email", "amount", "note"}
