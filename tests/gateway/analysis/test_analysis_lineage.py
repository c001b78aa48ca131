"""gateway.lineage: view columns traced to base-table columns."""
from __future__ import annotations

import pathlib
import sys

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
