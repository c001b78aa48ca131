"""View lineage: which base-table columns each view column derives from (pure).

``with_view_lineage(schema)`` analyses every view's and materialized view's
definition with the SQL analyzer and returns a LiveSchema whose view relations
carry ``Relation.lineage``: output column name -> frozenset of base ColumnRefs
(columns of tables, partitions, foreign tables and materialized views; never of
plain views, which are expanded down to what they read). The catalog uses it to
mark a view column sensitive when it derives from a catalogued column, and the
masker to mask it. A join or a filter carries values as well (a lookup row joined
on a PII column equals it): the columns a view's joins and filters compare count
for every output column. So do the columns it groups, orders, de-duplicates or
windows by (lead(g) OVER (ORDER BY ssn) is the candidate next to the SSN), and
they are the view's ``row_lineage`` too: which rows it yields, how many and in
which order, which no masking of its outputs can hide (the masker refuses such a
view where one of them is masked).

Fail closed: when a definition cannot be fully attributed (an unknown function,
a relation missing from the schema, ...), every output column of that view is
given every base column the definition touches, in any clause.
"""
from __future__ import annotations

import dataclasses

from catalog.model import ColumnRef, RelationRef
from gateway.analysis.facts import Usage
from gateway.analysis.queries import VIEW_SEARCH_PATH, Walk
from gateway.schema import MATVIEW, VIEW, LiveSchema, Relation


def view_lineage(schema: LiveSchema, rel: Relation) -> tuple[dict[str, frozenset], str | None]:
    """The lineage of one view, and why it is over-approximated (None when exact)."""
    lineage, _rows, why = view_lineages(schema, rel)
    return lineage, why


def view_lineages(schema: LiveSchema, rel: Relation) -> tuple[dict[str, frozenset], frozenset, str | None]:
    """The lineage of one view, its row lineage (the base columns that decide its
    rows, their number and order) and why it is over-approximated (None when exact)."""
    walk = Walk(schema, VIEW_SEARCH_PATH)
    outs = walk.expand_view(rel)

    def base(refs) -> frozenset:
        out = set()
        for c in refs:
            r = schema.relation(RelationRef(c.schema, c.table))
            if c.table == rel.ref.name and c.schema == rel.ref.schema:
                continue
            if r is None or r.kind != VIEW:
                out.add(c)
        return frozenset(out)

    if walk.reasons or outs is None:
        everything = base(walk.uses)
        return ({c.name: everything for c in rel.columns}, everything,
                "; ".join(walk.reasons) or "no definition")
    # A join or a filter carries values too: JOIN zips z ON z.zip = c.zip_code makes
    # z.zip the customer's zip code, and rows generated for every digit and kept where
    # they equal substr(c.ssn, k, 1) spell the SSN. The view runs over the clear
    # values, so every column it outputs is given the columns its joins and filters
    # compare (the masker then masks those outputs when one of them is masked).
    # Grouping, ordering, DISTINCT and windows choose values as well: a view of
    # candidates 000-00-0000..9999 and the customers' SSNs, each candidate given
    # lead(g) OVER (ORDER BY v) or count(*) OVER (PARTITION BY v), names the SSN
    # by a column that derives from the candidates alone.
    # and a set-returning function's arguments decide how many rows there are
    # (generate_series(1, substr(ssn, 10, 2)::int) yields 7 rows for 000-00-0007)
    compared = base(c for c, us in walk.uses.items() if us & _COMPARING) | base(walk.row_sources)
    return ({c.name: base(outs[i].sources) | compared for i, c in enumerate(rel.columns)},
            compared, None)


#: usages that decide which rows a query yields, how many, in which order, or which
#: value a window function picks (LIMIT/OFFSET and TABLESAMPLE arguments are
#: recorded as predicates, window frame offsets as ordering)
_COMPARING = frozenset({Usage.PREDICATE, Usage.JOIN, Usage.GROUP_ORDER})


#: PostgreSQL's own views read only system catalogs, which do not change under a
#: running server and are never catalogued: their lineage is the same at every
#: schema read. Re-analysing the ~140 of them took ~0.2 s of the event loop per read,
#: and a read follows every DDL (a migration creating 1,000 tables stalled every
#: session). Keyed by name, definition and columns, so a changed view is analysed again.
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_system_lineage: dict[tuple, dict[str, frozenset]] = {}


def with_view_lineage(schema: LiveSchema) -> LiveSchema:
    """A copy of ``schema`` whose views and materialized views carry their lineage."""
    relations = dict(schema.relations)
    for ref, rel in schema.relations.items():
        if rel.kind in (VIEW, MATVIEW):
            if ref.schema in _SYSTEM_SCHEMAS:
                key = (ref, rel.view_definition, rel.column_names)
                hit = _system_lineage.get(key)
                if hit is None:
                    if len(_system_lineage) > 4096:       # another server version's views
                        _system_lineage.clear()
                    hit = _system_lineage[key] = view_lineages(schema, rel)[:2]
                lineage, rows = hit
            else:
                lineage, rows, _ = view_lineages(schema, rel)
            relations[ref] = dataclasses.replace(rel, lineage=lineage, row_lineage=rows)
    exact: dict = {}
    for ref, rel in schema.relations.items():
        if rel.kind in (VIEW, MATVIEW) and ref.schema not in _SYSTEM_SCHEMAS:
            relations[ref] = dataclasses.replace(relations[ref], exact_columns=exact_columns(schema, rel, exact))
    return LiveSchema(relations, schema.functions, schema.search_path, schema.version)


_TABLE_KINDS = frozenset({"r", "p", "f", MATVIEW})


def exact_columns(schema: LiveSchema, rel: Relation, memo: dict | None = None, depth: int = 0) -> frozenset:
    """The output columns of a view that are a base column's value unchanged: its
    select-list item is a bare column reference to a table, partition, foreign table
    or materialized view of its FROM clause (or to an exact column of a view there).
    Anything else (an expression, a subquery, a CTE, a set operation, a definition
    that does not parse) is not exact."""
    memo = {} if memo is None else memo
    if rel.ref in memo:
        return memo[rel.ref]
    memo[rel.ref] = frozenset()          # a cycle, or depth: nothing is exact
    if depth > 16 or not rel.view_definition:
        return frozenset()
    try:
        import orjson
        from pglast import parser
        stmts = orjson.loads(parser.parse_sql_json(rel.view_definition)).get("stmts", [])
        sel = stmts[0]["stmt"]["SelectStmt"] if len(stmts) == 1 else None
    except Exception:  # noqa: BLE001 - anything unreadable is not exact
        sel = None
    if not sel or sel.get("op", "SETOP_NONE") != "SETOP_NONE" or sel.get("withClause") or sel.get("valuesLists"):
        return frozenset()
    items: dict[str, Relation] = {}

    def add(node) -> bool:
        (kind, b), = node.items()
        if kind == "RangeVar":
            r = schema.resolve(b.get("relname", ""), b.get("schemaname"), ("pg_catalog",))
            if r is None:
                return False
            name = (b.get("alias") or {}).get("aliasname") or r.ref.name
            if name in items:
                return False
            items[name] = r
            return True
        if kind == "JoinExpr" and not b.get("alias") and not b.get("usingClause") and not b.get("isNatural"):
            return add(b["larg"]) and add(b["rarg"])
        return False

    if not all(add(f) for f in sel.get("fromClause", ())):
        return frozenset()
    targets = sel.get("targetList", ())
    if len(targets) != len(rel.columns):
        return frozenset()
    out = set()
    for col, t in zip(rel.columns, targets):
        cr = t.get("ResTarget", {}).get("val", {}).get("ColumnRef")
        fields = [f.get("String", {}).get("sval") for f in (cr or {}).get("fields", ())]
        if not fields or None in fields or len(fields) > 2:
            continue
        if len(fields) == 2:
            cands = [items[fields[0]]] if fields[0] in items else []
        else:
            cands = [r for r in items.values() if r.column(fields[0]) is not None]
        if len(cands) != 1 or cands[0].column(fields[-1]) is None:
            continue
        r = cands[0]
        if r.kind in _TABLE_KINDS or (r.kind == VIEW and fields[-1] in exact_columns(schema, r, memo, depth + 1)):
            out.add(col.name)
    memo[rel.ref] = frozenset(out)
    return memo[rel.ref]


__all__ = ["with_view_lineage", "view_lineage", "view_lineages", "exact_columns", "ColumnRef"]
