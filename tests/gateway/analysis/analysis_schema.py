"""The LiveSchema the analyzer tests run against: tests/data/analysis/security_schema.json,
the introspected schema of a database loaded with tests/data/security/schema.sql and
fixtures.sql (regenerate with make_security_schema.py), plus a few hand-made
relations the corpus creates on the way (scratch.v) and pgbench's tables."""
from __future__ import annotations

import functools
import json
import pathlib

from catalog.model import RelationRef
from gateway.schema import Column, Function, LiveSchema, Relation

DATA = pathlib.Path(__file__).resolve().parents[2] / "data"

CUSTOMER_COLUMNS = ("id", "full_name", "email", "phone", "ssn", "dob", "card_number", "city", "created_at")


def _extra_relations() -> list[Relation]:
    def cols(*names):
        return tuple(Column(n, "text") for n in names)
    return [
        # CREATE VIEW scratch.v AS SELECT * FROM customers, as introspection then sees it
        Relation(RelationRef("scratch", "v"), "v", cols(*CUSTOMER_COLUMNS),
                 view_definition=" SELECT customers.id,\n    customers.full_name,\n    customers.email,\n"
                 "    customers.phone,\n    customers.ssn,\n    customers.dob,\n    customers.card_number,\n"
                 "    customers.city,\n    customers.created_at\n   FROM public.customers;"),
        # a view over a view, and a view renaming a column
        Relation(RelationRef("scratch", "vv"), "v", cols("ident", "secret"),
                 view_definition=" SELECT v.id AS ident,\n    v.ssn AS secret\n   FROM scratch.v;"),
        Relation(RelationRef("public", "pgbench_accounts"), "r", cols("aid", "bid", "abalance", "filler")),
        Relation(RelationRef("public", "pgbench_branches"), "r", cols("bid", "bbalance", "filler")),
        Relation(RelationRef("public", "pgbench_tellers"), "r", cols("tid", "bid", "tbalance", "filler")),
        Relation(RelationRef("public", "pgbench_history"), "r", cols("tid", "bid", "aid", "delta", "mtime", "filler")),
    ]


@functools.lru_cache(maxsize=1)
def security_schema() -> LiveSchema:
    raw = json.loads((DATA / "analysis" / "security_schema.json").read_text())
    rels = [Relation(RelationRef(r["schema"], r["name"]), r["kind"],
                     tuple(Column(n, t) for n, t in r["columns"]),
                     tuple(RelationRef(s, n) for s, n in r["parents"]), r["view_definition"])
            for r in raw["relations"]]
    fns = [Function(s, n, tuple(a), rt, v, sd, rs, k, lang) for s, n, a, rt, v, sd, rs, k, lang in raw["functions"]]
    return LiveSchema.of(rels + _extra_relations(), fns, tuple(raw["search_path"]))
