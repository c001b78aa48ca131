"""Scopes and range items of the query walker (pure values).

A query level's ``Scope`` holds its FROM items (``RangeItem``), each exposing
ordered output columns (``Out``) with the set of base ``ColumnRef`` s each
column's value derives from; CTEs visible at that level hang on the scope.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from catalog.model import ColumnRef
from gateway.analysis.facts import Usage

EMPTY: frozenset = frozenset()
RETURNED = frozenset({Usage.RETURNED})
PREDICATE = frozenset({Usage.PREDICATE})
JOIN = frozenset({Usage.JOIN})
GROUP_ORDER = frozenset({Usage.GROUP_ORDER})
OTHER = frozenset({Usage.OTHER})
WRITTEN = frozenset({Usage.WRITTEN})

SYSTEM_COLUMNS = ("tableoid", "ctid", "xmin", "xmax", "cmin", "cmax")
VIEW_DEPTH_LIMIT = 16
#: views are stored by pg_get_viewdef() while search_path is pg_catalog only
#: (gateway.introspect), so their text resolves against that path
VIEW_SEARCH_PATH = ("pg_catalog",)

#: system relations whose rows carry other tables' values (planner statistics
#: sample column values; pg_stat_activity holds other sessions' SQL with literals)
SENSITIVE_SYSTEM_RELATIONS = frozenset({
    "pg_statistic", "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs",
    "pg_statistic_ext_data", "pg_stat_activity", "pg_stat_statements",
    "pg_largeobject",
})

#: system columns holding the source or stored parse tree of database code: function
#: bodies, view and rule actions, trigger conditions and arguments. They are what
#: pg_get_functiondef, pg_get_viewdef, pg_get_ruledef and pg_get_triggerdef show
#: (refused as dangerous), and carry whatever literals a DBA wrote into that code
SENSITIVE_SYSTEM_COLUMNS = frozenset(ColumnRef("pg_catalog", t, c) for t, c in (
    ("pg_proc", "prosrc"), ("pg_proc", "prosqlbody"), ("pg_rewrite", "ev_action"),
    ("pg_rewrite", "ev_qual"), ("pg_trigger", "tgqual"), ("pg_trigger", "tgargs"),
))
SENSITIVE_COLUMN_RELATIONS = frozenset(c.relation for c in SENSITIVE_SYSTEM_COLUMNS)


@dataclass(slots=True)
class Out:
    """One output column of a query level: its name and where its value comes from."""
    name: str | None
    sources: frozenset


@dataclass(slots=True)
class RangeItem:
    refname: str | None                 # alias or relation/CTE name; None: unnamed subquery
    cols: list[Out]
    schema: str | None = None           # unaliased RangeVar: allows schema.table.col
    open_sources: frozenset | None = None   # column names unknown (record functions)
    system: tuple | None = None         # relations whose system columns (ctid, ...) this item has

    def lookup(self, name: str) -> frozenset | None:
        found = None
        for c in self.cols:
            if c.name == name:
                found = c.sources if found is None else found | c.sources
        if found is None and self.system is not None:
            found = _system_column(self.system, name)
        if found is None and self.open_sources is not None:
            return self.open_sources
        return found

    def all_sources(self) -> frozenset:
        s = frozenset().union(*(c.sources for c in self.cols)) if self.cols else frozenset()
        if self.open_sources is not None:
            s |= self.open_sources
        return s


@dataclass(slots=True)
class Cte:
    name: str
    cols: list[Out]


@dataclass(slots=True)
class Scope:
    items: list
    parent: "Scope | None" = None
    ctes: dict = field(default_factory=dict)

    def find_cte(self, name: str) -> Cte | None:
        s = self
        while s is not None:
            c = s.ctes.get(name)
            if c is not None:
                return c
            s = s.parent
        return None


def _relnames(node) -> set:
    """Unqualified relation names anywhere under a parse node."""
    out: set = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, dict):
            if isinstance(n.get("relname"), str) and "schemaname" not in n:
                out.add(n["relname"])
            todo.extend(n.values())
        elif isinstance(n, list):
            todo.extend(n)
    return out


def _system_column(refs: tuple, name: str) -> frozenset | None:
    if name not in SYSTEM_COLUMNS:
        return None
    return frozenset(ColumnRef(r.schema, r.name, name) for r in refs)


def _sval(node: dict) -> str | None:
    s = node.get("String")
    return s.get("sval", "") if s is not None else None


def _names(lst) -> list[str]:
    return [_sval(n) or "" for n in (lst or ())]

