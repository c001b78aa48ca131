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
    return LiveSchema(relations, schema.functions, schema.search_path, schema.version)


__all__ = ["with_view_lineage", "view_lineage", "view_lineages", "ColumnRef"]
