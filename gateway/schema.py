"""The live schema of the upstream database, as a pure value.

Filled by ``gateway.introspect`` (asyncpg, I/O) and read by the analyzer and the
rewriter (pure). Names are as PostgreSQL stores them (case-folded already).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from catalog.model import RelationRef

# pg_class.relkind values we model
TABLE, PARTITIONED, VIEW, MATVIEW, FOREIGN = "r", "p", "v", "m", "f"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_name: str          # format_type(): 'text', 'integer', 'timestamp with time zone', ...
    type_oid: int = 0


@dataclass(frozen=True, slots=True)
class Relation:
    ref: RelationRef
    kind: str                                   # TABLE, PARTITIONED, VIEW, MATVIEW, FOREIGN
    columns: tuple[Column, ...]                 # in attnum order, dropped columns excluded
    parents: tuple[RelationRef, ...] = ()       # INHERITS parents / partition parent
    view_definition: str | None = None          # pg_get_viewdef() for views and matviews
    #: for views/matviews: output column name -> base columns it derives from
    #: (from the view's own analysis; filled by introspection when known); for
    #: tables: generated column name -> the columns it is computed from
    lineage: Mapping[str, frozenset] = field(default_factory=dict)
    #: for views/matviews: the base columns that decide which rows the view yields,
    #: how many and in which order (its WHERE/JOIN/HAVING, GROUP BY, DISTINCT,
    #: ORDER BY, LIMIT, window PARTITION/ORDER, set-operation comparisons). Masking
    #: the view's outputs cannot hide what those decided (a count of its rows, their
    #: order), so the masker refuses a view whose row lineage holds a masked column
    row_lineage: frozenset = frozenset()
    #: for tables: column name -> the database functions that may set its value on a
    #: write (a column DEFAULT or generated expression calling a SQL/PL or SECURITY
    #: DEFINER function; every column of a table with a BEFORE/INSTEAD OF row trigger
    #: running one): values of unknown origin, which the catalog treats as PII
    set_by: Mapping[str, frozenset] = field(default_factory=dict)
    #: the relation has rules on INSERT, UPDATE or DELETE (CREATE RULE ... DO ALSO/
    #: INSTEAD <commands>): a write to it runs, and may return, statements it does not say
    write_rules: bool = False
    #: for partitioned tables: the columns of the partition key (every column when
    #: the key has an expression). A partition holds the rows whose key lies in its
    #: bound: reading one says that much about them
    partition_key: frozenset = frozenset()
    #: for views/matviews: the output columns that are a base column's value as it is
    #: (a bare column reference down to a table): only those may be masked by a
    #: strategy that shows part of the value (partial, year, round, bucket); for a
    #: computed one (reverse(phone), '@' || email) that part is another part
    exact_columns: frozenset = frozenset()
    #: for tables with row-level security: the columns (of any table) its policies'
    #: expressions read. They choose which rows a reader sees, over clear values
    row_filter: frozenset = frozenset()
    #: for tables: column name -> the columns its foreign keys reference (it holds
    #: their values: orders.customer_email REFERENCES customers(email) is an e-mail)
    references: Mapping[str, frozenset] = field(default_factory=dict)
    #: for tables: column name -> the other columns of this table that a CHECK,
    #: UNIQUE, PRIMARY KEY, EXCLUDE or FOREIGN KEY constraint (or a unique index)
    #: compares it with. Changing the column makes PostgreSQL compare the new value
    #: with the row's clear values of those (CHECK (created_at > dob): whether
    #: UPDATE ... SET created_at = d fails says whether dob < d). Key "": the
    #: columns of NOT VALID CHECK constraints, which any UPDATE of a row evaluates
    constrained_with: Mapping[str, frozenset] = field(default_factory=dict)

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True, slots=True)
class Function:
    schema: str
    name: str
    arg_types: tuple[str, ...]
    result_type: str
    volatility: str          # 'i' immutable, 's' stable, 'v' volatile
    security_definer: bool
    returns_set: bool
    kind: str = "f"          # 'f' function, 'p' procedure, 'a' aggregate, 'w' window
    language: str = "internal"


@dataclass(frozen=True)
class LiveSchema:
    """Relations and functions visible to the gateway's upstream role.

    ``version`` changes whenever the content changes; caches key on it.
    """
    relations: Mapping[RelationRef, Relation] = field(default_factory=dict)
    functions: Mapping[str, tuple[Function, ...]] = field(default_factory=dict)  # by bare name
    search_path: tuple[str, ...] = ("public",)   # the upstream role's effective default
    version: str = "empty"

    @classmethod
    def of(cls, relations: Iterable[Relation], functions: Iterable[Function] = (),
           search_path: tuple[str, ...] = ("public",)) -> "LiveSchema":
        import hashlib
        rels = {r.ref: r for r in relations}
        funcs: dict[str, list[Function]] = {}
        for f in functions:
            funcs.setdefault(f.name, []).append(f)
        h = hashlib.sha256()
        for ref in sorted(rels):
            r = rels[ref]
            h.update(f"{ref}|{r.kind}|{','.join(c.name + ':' + c.type_name for c in r.columns)}"
                     f"|{r.parents}|{r.view_definition}\n".encode())
            if r.constrained_with:
                h.update(f"constrained {sorted((k, sorted(v)) for k, v in r.constrained_with.items())}\n".encode())
            if r.references:
                h.update(f"references {sorted((k, sorted(map(str, v))) for k, v in r.references.items())}\n".encode())
            if r.row_filter:
                h.update(f"row filter {sorted(map(str, r.row_filter))}\n".encode())
            if r.partition_key:
                h.update(f"partition key {sorted(r.partition_key)}\n".encode())
            if r.write_rules:
                h.update(b"write rules\n")
            if r.set_by:
                h.update(f"{sorted((k, sorted(v)) for k, v in r.set_by.items())}\n".encode())
        for name in sorted(funcs):
            for f in funcs[name]:
                h.update(f"{f.schema}.{f.name}({f.arg_types})|{f.volatility}|{f.security_definer}\n".encode())
        h.update(repr(search_path).encode())
        return cls(rels, {k: tuple(v) for k, v in funcs.items()}, tuple(search_path), h.hexdigest()[:16])

    def relation(self, ref: RelationRef) -> Relation | None:
        return self.relations.get(ref)

    def resolve(self, name: str, schema: str | None, search_path: Iterable[str]) -> Relation | None:
        """Resolve a relation name as PostgreSQL would: explicit schema, else the
        first schema on ``search_path`` that has it (pg_catalog is searched first
        unless the path names it)."""
        if schema is not None:
            return self.relations.get(RelationRef(schema, name))
        path = list(search_path)
        if "pg_catalog" not in path:
            path.insert(0, "pg_catalog")
        for s in path:
            rel = self.relations.get(RelationRef(s, name))
            if rel is not None:
                return rel
        return None

    def children(self, ref: RelationRef) -> tuple[Relation, ...]:
        return tuple(r for r in self.relations.values() if ref in r.parents)

    def functions_named(self, name: str) -> tuple[Function, ...]:
        return self.functions.get(name, ())
