"""Mask a statement by splicing subqueries over PII relations (pure).

Approach: splice, don't regenerate. The statement is parsed with pglast
(PostgreSQL's own parser). Every ``RangeVar`` in a *read position* (FROM, JOIN,
subqueries, CTE bodies, LATERAL, set operations, UPDATE ... FROM, DELETE ... USING,
MERGE ... USING) that resolves to a relation holding masked columns has its text
span replaced by::

    (SELECT "id", <masked full_name> AS "full_name", ... FROM [ONLY] "public"."customers") AS "customers"

Every column of the relation, in order, same names, same types. The original alias
(and its column alias list) is kept, because only the relation-name span is
replaced; without an alias the relation name is added as alias so ``customers.ssn``
keeps resolving. Everything else in the statement is left byte for byte, so what is
forwarded is what was analysed, and every use of a column (WHERE, JOIN, ORDER BY,
aggregates, whole-row values, RETURNING) only ever sees masked values.

Which relations are wrapped and with what:
- a table: the plan's strategies for its columns, plus those of its inheritance
  ancestors (same column names) and, unless ``ONLY``, of its descendants (their rows
  come back through the parent's columns);
- a view or materialized view: wrapped the same way. Its masked output columns are
  the plan's entries for the view itself (the catalog derives view columns) and the
  columns whose ``lineage`` reaches a masked base column. A view that reaches a
  masked relation but for which neither is known cannot be wrapped safely: that is a
  ``RewriteError`` (wrapping is airtight only when we know which outputs carry PII;
  inlining the definition would change whose privileges apply, so we do not).

It raises ``RewriteError`` whenever it cannot be sure: a masked relation as the
target of INSERT/UPDATE/DELETE/MERGE/COPY (decided as writes, never masked), in any
position it does not model (TABLESAMPLE, LOCK, SELECT INTO ...), an unresolvable
relation, a view it cannot see into, or a result that does not re-parse as exactly
one statement. The gateway then denies: fail closed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

from pglast import ast, parse_sql, parser

from catalog.model import ColumnRef, RelationRef
from gateway.schema import MATVIEW, VIEW, LiveSchema, Relation
from policies.masking import MaskedExpression, mask_expression, quote_ident
from policies.model import MaskPlan, MaskStrategy


class RewriteError(Exception):
    """The statement cannot be masked with certainty; the gateway must deny it."""


#: (parent node type, field) pairs where a RangeVar is read and may be wrapped
_READ_POSITIONS = {
    ("SelectStmt", "fromClause"), ("UpdateStmt", "fromClause"), ("DeleteStmt", "usingClause"),
    ("JoinExpr", "larg"), ("JoinExpr", "rarg"), ("MergeStmt", "sourceRelation"),
}
_WRITE_TARGETS = {("InsertStmt", "relation"), ("UpdateStmt", "relation"),
                  ("DeleteStmt", "relation"), ("MergeStmt", "relation"), ("CopyStmt", "relation")}


@dataclass(frozen=True, slots=True)
class Splice:
    start: int       # character offsets into the statement text
    end: int
    text: str
    relation: RelationRef


@dataclass(frozen=True, slots=True)
class RewriteResult:
    sql: str
    wrapped: tuple[RelationRef, ...]
    notes: tuple[str, ...]


def mask_statement(sql: str, plan: MaskPlan, schema: LiveSchema, search_path: Iterable[str],
                   *, pseudonym_installed: bool = False) -> str:
    """The statement with every relation holding masked columns replaced by a masking
    subquery. Raises ``RewriteError`` when it cannot be sure."""
    return rewrite(sql, plan, schema, search_path, pseudonym_installed=pseudonym_installed).sql


def rewrite(sql: str, plan: MaskPlan, schema: LiveSchema, search_path: Iterable[str],
            *, pseudonym_installed: bool = False) -> RewriteResult:
    """Like ``mask_statement`` but also says what was wrapped and any strategy fallbacks."""
    return _Rewriter(sql, plan, schema, tuple(search_path), pseudonym_installed).run()


class _Rewriter:
    def __init__(self, sql: str, plan: MaskPlan, schema: LiveSchema,
                 search_path: tuple[str, ...], pseudonym_installed: bool):
        self.sql = sql
        self.plan = plan
        self.schema = schema
        self.search_path = search_path
        self.pseudonym = pseudonym_installed
        self.masked_relations = {c.relation for c in plan.columns}
        self.splices: list[Splice] = []
        self.notes: list[str] = []
        self._tokens: list | None = None

    # --- driver ----------------------------------------------------------------
    def run(self) -> RewriteResult:
        stmt = self._parse_one(self.sql, "the statement")
        self.walk(stmt, None, None, frozenset())
        if not self.splices:
            return RewriteResult(self.sql, (), tuple(self.notes))
        out = self.sql
        for s in sorted(self.splices, key=lambda s: s.start, reverse=True):
            out = out[:s.start] + s.text + out[s.end:]
        self._parse_one(out, "the rewritten statement")
        return RewriteResult(out, tuple(s.relation for s in sorted(self.splices, key=lambda s: s.start)),
                             tuple(self.notes))

    def _parse_one(self, sql: str, what: str) -> ast.Node:
        try:
            stmts = parse_sql(sql)
        except Exception as e:  # pglast.parser.ParseError and friends
            raise RewriteError(f"{what} does not parse: {e}") from None
        if len(stmts) != 1:
            raise RewriteError(f"{what} must be exactly one statement, found {len(stmts)}")
        return stmts[0].stmt

    # --- tree walk with CTE scoping --------------------------------------------
    def walk(self, node: object, parent: ast.Node | None, fname: str | None,
             ctes: frozenset[str]) -> None:
        if isinstance(node, (list, tuple)):
            for x in node:
                self.walk(x, parent, fname, ctes)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.RangeVar):
            self.range_var(node, parent, fname, ctes)
            return
        with_clause = getattr(node, "withClause", None) if not isinstance(node, ast.WithClause) else None
        if isinstance(with_clause, ast.WithClause):
            ctes = self.with_clause(with_clause, ctes)
        for name in node.__slots__:
            if name == "withClause" and with_clause is not None:
                continue
            self.walk(getattr(node, name, None), node, name, ctes)

    def with_clause(self, w: ast.WithClause, outer: frozenset[str]) -> frozenset[str]:
        """Walk the CTE bodies with the names each can see; return the names the
        statement body sees. Non-recursive: a CTE sees the earlier ones only (its
        own name inside its body is the real table). Recursive: all of them."""
        names = [c.ctename for c in (w.ctes or ())]
        scope = set(outer)
        for c in (w.ctes or ()):
            visible = frozenset(outer | set(names)) if w.recursive else frozenset(scope)
            self.walk(c.ctequery, c, "ctequery", visible)
            scope.add(c.ctename)
        return frozenset(outer | set(names))

    # --- one relation reference ------------------------------------------------
    def range_var(self, rv: ast.RangeVar, parent: ast.Node | None, fname: str | None,
                  ctes: frozenset[str]) -> None:
        if rv.schemaname is None and rv.catalogname is None and rv.relname in ctes:
            return  # a CTE reference: its body was walked (and masked) on its own
        position = (type(parent).__name__ if parent is not None else "", fname or "")
        if rv.catalogname is not None:
            raise RewriteError(f"cross-database reference {rv.catalogname}.{rv.schemaname}.{rv.relname}")
        rel = self.schema.resolve(rv.relname, rv.schemaname, self.search_path)
        if rel is None:
            if position == ("IntoClause", "rel") or position[0] in ("CreateStmt", "ViewStmt", "CreateTableAsStmt"):
                return  # a name being created, not read
            raise RewriteError(f"relation {_display(rv)} is not in the live schema; "
                               "cannot tell whether it holds PII")
        strategies = self.strategies_for(rel, inh=bool(rv.inh))
        if not strategies:
            return
        if position in _WRITE_TARGETS:
            raise RewriteError(f"{rel.ref} holds masked columns and is the target of a write: "
                               "writes of PII are decided as writes (approval), never masked")
        if position not in _READ_POSITIONS:
            raise RewriteError(f"{rel.ref} holds masked columns in a position the rewriter does not "
                               f"model ({position[0]}.{position[1]})")
        start, end = self.span(rv)
        body = self.subquery(rel, strategies, only=not rv.inh)
        text = body if rv.alias is not None else f"{body} AS {quote_ident(rel.ref.name)}"
        table_kw = self.table_keyword_before(start)
        if table_kw is not None:
            # `TABLE customers` is `SELECT * FROM customers`: say it that way around the wrapper
            start, text = table_kw, f"SELECT * FROM {text}"
        self.splices.append(Splice(start, end, text, rel.ref))

    def strategies_for(self, rel: Relation, inh: bool) -> dict[str, MaskStrategy]:
        """Column name -> strategy for the relation's columns that must be masked."""
        names = set(rel.column_names)
        out: dict[str, MaskStrategy] = {}

        def add(ref: RelationRef) -> None:
            for col, strat in self.plan.for_relation(ref).items():
                if col in names:
                    out.setdefault(col, strat)
                elif ref == rel.ref:
                    raise RewriteError(f"mask plan names {ref}.{col} but the live schema has no such "
                                       "column; refresh the schema")

        add(rel.ref)
        for anc in self.ancestors(rel):
            add(anc)
        if inh:
            for desc in self.descendants(rel):
                add(desc.ref)
        if rel.kind in (VIEW, MATVIEW):
            for col, bases in (rel.lineage or {}).items():
                hits = [b for b in bases if isinstance(b, ColumnRef) and b in self.plan.columns]
                if hits and col in names:
                    out.setdefault(col, self.plan.columns[sorted(hits)[0]])
            lineage_complete = bool(rel.lineage) and all(n in rel.lineage for n in names)
            attributed = bool(self.plan.for_relation(rel.ref)) or lineage_complete
            if not attributed and self.view_reaches_masked(rel, set()):
                raise RewriteError(f"view {rel.ref} reads masked relations but neither the catalog nor "
                                   "the view lineage says which of its columns carry PII")
        return out

    def ancestors(self, rel: Relation) -> Iterator[RelationRef]:
        seen: set[RelationRef] = set()
        todo = list(rel.parents)
        while todo:
            r = todo.pop()
            if r in seen:
                continue
            seen.add(r)
            yield r
            parent = self.schema.relation(r)
            if parent is not None:
                todo.extend(parent.parents)

    def descendants(self, rel: Relation) -> Iterator[Relation]:
        seen: set[RelationRef] = set()
        todo = list(self.schema.children(rel.ref))
        while todo:
            r = todo.pop()
            if r.ref in seen:
                continue
            seen.add(r.ref)
            yield r
            todo.extend(self.schema.children(r.ref))

    def view_reaches_masked(self, rel: Relation, seen: set[RelationRef]) -> bool:
        """Whether a view's definition names (directly or through views) a relation
        with masked columns. Over-approximates: CTE names are not scoped here."""
        if rel.ref in seen:
            return False
        seen.add(rel.ref)
        if rel.view_definition is None:
            raise RewriteError(f"view {rel.ref} has no known definition; cannot tell whether it reads PII")
        try:
            stmts = parse_sql(rel.view_definition)
        except Exception as e:
            raise RewriteError(f"definition of view {rel.ref} does not parse: {e}") from None
        for rv in _range_vars(stmts):
            base = self.schema.resolve(rv.relname, rv.schemaname, (rel.ref.schema,) + self.schema.search_path)
            if base is None:
                continue
            if base.ref in self.masked_relations or any(a in self.masked_relations for a in self.ancestors(base)):
                return True
            if any(d.ref in self.masked_relations for d in self.descendants(base)):
                return True
            if base.kind in (VIEW, MATVIEW) and self.view_reaches_masked(base, seen):
                return True
        return False

    # --- text ------------------------------------------------------------------
    def subquery(self, rel: Relation, strategies: Mapping[str, MaskStrategy], only: bool) -> str:
        items = []
        for col in rel.columns:
            q = quote_ident(col.name)
            strat = strategies.get(col.name)
            if strat is None:
                items.append(q)
                continue
            m: MaskedExpression = mask_expression(q, col.type_name, strat, pseudonym_installed=self.pseudonym)
            if m.note:
                self.notes.append(f"{rel.ref}.{col.name}: {m.note}")
            items.append(f"{m.sql} AS {q}")
        target = f"{quote_ident(rel.ref.schema)}.{quote_ident(rel.ref.name)}"
        return f"(SELECT {', '.join(items) or 'NULL'} FROM {'ONLY ' if only else ''}{target})"

    @property
    def tokens(self) -> list:
        if self._tokens is None:
            try:
                self._tokens = list(parser.scan(self.sql))
            except Exception as e:
                raise RewriteError(f"the statement does not scan: {e}") from None
        return self._tokens

    def table_keyword_before(self, start: int) -> int | None:
        """Start of a ``TABLE`` keyword right before the relation span, if any."""
        toks = self.tokens
        idx = next((i for i, t in enumerate(toks) if t.start == start), None)
        if idx is not None and idx >= 1 and toks[idx - 1].name == "TABLE":
            return toks[idx - 1].start
        return None

    def span(self, rv: ast.RangeVar) -> tuple[int, int]:
        """Character span of ``[ONLY [(]] [schema.]name [)] [*]`` for a RangeVar.
        pglast reports locations as character offsets, like its scanner."""
        toks = self.tokens
        idx = next((i for i, t in enumerate(toks) if t.start == rv.location), None)
        if idx is None:
            raise RewriteError(f"cannot locate relation {_display(rv)} in the statement text")
        end_i = idx
        while end_i + 2 < len(toks) and toks[end_i + 1].name == "ASCII_46":
            end_i += 2
        start = toks[idx].start
        end = toks[end_i].end + 1
        if not rv.inh:
            if idx >= 1 and toks[idx - 1].name == "ONLY":
                start = toks[idx - 1].start
            elif idx >= 2 and toks[idx - 1].name == "ASCII_40" and toks[idx - 2].name == "ONLY":
                if end_i + 1 >= len(toks) or toks[end_i + 1].name != "ASCII_41":
                    raise RewriteError(f"cannot find the end of ONLY ( {_display(rv)} )")
                start = toks[idx - 2].start
                end = toks[end_i + 1].end + 1
            else:
                raise RewriteError(f"cannot find ONLY before {_display(rv)}")
        elif end_i + 1 < len(toks) and toks[end_i + 1].name == "ASCII_42":
            end = toks[end_i + 1].end + 1     # legacy `table *` (include descendants)
        return start, end


def _display(rv: ast.RangeVar) -> str:
    return ".".join(p for p in (rv.catalogname, rv.schemaname, rv.relname) if p)


def _range_vars(node: object) -> Iterator[ast.RangeVar]:
    if isinstance(node, (list, tuple)):
        for x in node:
            yield from _range_vars(x)
    elif isinstance(node, ast.RangeVar):
        yield node
    elif isinstance(node, ast.Node):
        for name in node.__slots__:
            yield from _range_vars(getattr(node, name, None))
