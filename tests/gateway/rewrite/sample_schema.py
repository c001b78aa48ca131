"""A hand-built LiveSchema + Catalog of tests/data/security/schema.sql + fixtures.sql
(the parts the policy and rewrite tests need), so pure tests need no database."""
from __future__ import annotations

from pathlib import Path

from catalog.model import Catalog, CatalogEntry, ColumnRef, DEFAULT_SENSITIVITY, RelationRef
from gateway.schema import MATVIEW, PARTITIONED, TABLE, VIEW, Column, Function, LiveSchema, Relation

P = "public"
CUSTOMERS = RelationRef(P, "customers")
CUSTOMER_COLUMNS = (
    Column("id", "integer"), Column("full_name", "text"), Column("email", "text"),
    Column("phone", "text"), Column("ssn", "text"), Column("dob", "date"),
    Column("card_number", "text"), Column("city", "text"),
    Column("created_at", "timestamp with time zone"))
PII = {"full_name": "name", "email": "email", "phone": "phone", "ssn": "ssn", "dob": "dob",
       "card_number": "card_number"}


def _rel(name, kind, cols, parents=(), view_definition=None, lineage=None):
    return Relation(RelationRef(P, name), kind, tuple(cols), tuple(parents), view_definition, lineage or {})


def sample_schema() -> LiveSchema:
    c = {col.name: col for col in CUSTOMER_COLUMNS}
    rels = [
        _rel("customers", TABLE, CUSTOMER_COLUMNS),
        _rel("orders", TABLE, [Column("id", "integer"), Column("customer_id", "integer"),
                               Column("amount", "numeric"), Column("note", "text"),
                               Column("created_at", "timestamp with time zone")]),
        _rel("customers_archive", TABLE, CUSTOMER_COLUMNS, parents=(CUSTOMERS,)),
        _rel("customers_part", PARTITIONED, CUSTOMER_COLUMNS),
        _rel("customers_part_testville", TABLE, CUSTOMER_COLUMNS, parents=(RelationRef(P, "customers_part"),)),
        _rel("customer_contacts", VIEW, [c["id"], c["full_name"], c["email"], c["phone"]],
             view_definition=" SELECT customers.id, customers.full_name, customers.email, customers.phone"
                             "   FROM public.customers;",
             lineage={n: frozenset({ColumnRef(P, "customers", n)}) for n in ("id", "full_name", "email", "phone")}),
        _rel("order_report", VIEW, [Column("order_id", "integer"), Column("customer_email", "text"),
                                    Column("amount", "numeric"), Column("note", "text")],
             view_definition=" SELECT o.id AS order_id, c.email AS customer_email, o.amount, o.note"
                             "   FROM (public.orders o JOIN public.customers c ON ((c.id = o.customer_id)));"),
        _rel("customer_city_mv", MATVIEW, [c["city"], c["full_name"], c["dob"]],
             view_definition=" SELECT customers.city, customers.full_name, customers.dob FROM public.customers;"),
        _rel("city_names", VIEW, [c["city"]],
             view_definition=" SELECT DISTINCT customers.city FROM public.customers;",
             lineage={"city": frozenset({ColumnRef(P, "customers", "city")})}),
    ]
    funcs = [
        Function(P, "customer_lookup", ("integer",), "SETOF customers", "s", True, True, "f", "sql"),
        Function(P, "find_customer_ids", ("text",), "SETOF text", "v", True, True, "f", "plpgsql"),
        Function(P, "hstore", ("record",), "hstore", "s", False, False, "f", "c"),
        Function("pg_catalog", "upper", ("text",), "text", "i", False, False, "f", "internal"),
        Function("pg_catalog", "to_jsonb", ("anyelement",), "jsonb", "s", False, False, "f", "internal"),
        Function("pg_catalog", "query_to_xml", ("text", "boolean", "boolean", "text"), "xml", "v", False, False, "f", "internal"),
    ]
    return LiveSchema.of(rels, funcs, ("public",))


def sample_catalog() -> Catalog:
    """schema.sql's tags plus what the catalog derives for children and views."""
    entries = []
    for table in ("customers", "customers_archive", "customers_part_testville"):
        for col, cat in PII.items():
            entries.append(CatalogEntry(ColumnRef(P, table, col), cat, DEFAULT_SENSITIVITY[cat]))
    for view, cols in (("customer_contacts", {"full_name": "name", "email": "email", "phone": "phone"}),
                       ("order_report", {"customer_email": "email"}),
                       ("customer_city_mv", {"full_name": "name", "dob": "dob"})):
        for col, cat in cols.items():
            entries.append(CatalogEntry(ColumnRef(P, view, col), cat, DEFAULT_SENSITIVITY[cat]))
    return Catalog.of(entries)


FROZEN_SCHEMA = Path(__file__).resolve().parents[2] / "data" / "analysis" / "security_schema.json"


def security_schema() -> LiveSchema:
    """The real LiveSchema of schema.sql + fixtures.sql, frozen by the analyzer tests
    (tests/gateway/analysis/make_security_schema.py): every pg_catalog function too."""
    from gateway.policy_cli import schema_from_json
    return schema_from_json(FROZEN_SCHEMA.read_text(encoding="utf-8"))


def security_catalog(schema: LiveSchema) -> Catalog:
    """schema.sql's COMMENT tags, with the entries the catalog derives for children,
    partitions and views of that schema (catalog.loader.derive_catalog)."""
    from catalog.loader import derive_catalog
    base = Catalog.of(CatalogEntry(ColumnRef(P, "customers", col), cat, DEFAULT_SENSITIVITY[cat], source="comment")
                      for col, cat in PII.items())
    return derive_catalog(base, schema)
