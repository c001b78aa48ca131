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
  So is a view whose ``row_lineage`` (what its WHERE, joins, GROUP BY, ORDER BY,
  LIMIT, windows compare) holds a masked column: the number and order of its rows
  were decided over clear values, and no mask of its outputs hides them.

It raises ``RewriteError`` whenever it cannot be sure: a masked relation as the
target of INSERT/UPDATE/DELETE/MERGE/COPY (decided as writes, never masked), in any
position it does not model (TABLESAMPLE, LOCK, SELECT INTO ...), an unresolvable
relation, a view it cannot see into, or a result that does not re-parse as exactly
one statement. The gateway then denies: fail closed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Iterator, Mapping

from pglast import ast, parser

from catalog.model import ColumnRef, RelationRef
from gateway.analysis.cache import simple_key, simple_literals
from gateway.schema import MATVIEW, VIEW, LiveSchema, Relation
from policies.masking import MaskedExpression, mask_expression, quote_ident
from policies.model import MaskPlan, MaskStrategy


#: strategies that show part of the value (or a coarser value): sound for a column's
#: own value only
_PARTIAL_STRATEGIES = frozenset({"partial", "year", "round", "bucket"})


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
    body: str = ""   # the masking subquery inside ``text``


@dataclass(frozen=True, slots=True)
class RewriteResult:
    sql: str
    wrapped: tuple[RelationRef, ...]
    notes: tuple[str, ...]


def mask_statement(sql: str, plan: MaskPlan, schema: LiveSchema, search_path: Iterable[str],
                   *, pseudonym_installed: bool | None = None) -> str:
    """The statement with every relation holding masked columns replaced by a masking
    subquery. Raises ``RewriteError`` when it cannot be sure. ``pseudonym_installed``
    None: detected from the live schema (``piigate.pseudonym(text)``, SECURITY DEFINER)."""
    return rewrite(sql, plan, schema, search_path, pseudonym_installed=pseudonym_installed).sql


def rewrite(sql: str, plan: MaskPlan, schema: LiveSchema, search_path: Iterable[str],
            *, pseudonym_installed: bool | None = None) -> RewriteResult:
    """Like ``mask_statement`` but also says what was wrapped and any strategy fallbacks."""
    if pseudonym_installed is None:
        pseudonym_installed = pseudonym_available(schema)
    path = tuple(search_path)
    # The result is a pure function of these: repeated statements (prepared by
    # drivers, ORMs, pools) are rewritten once.
    key = (sql, _plan_key(plan), schema.version, path, pseudonym_installed)
    hit = _RESULTS.get(key)
    if hit is not None and schema.version != "empty":
        return hit
    shape = simple_key(sql) if schema.version != "empty" else None
    if shape is not None:
        template = _TEMPLATES.get((shape, *key[1:]))
        if template is not None:
            return template.apply(sql)
    rewriter = _Rewriter(sql, plan, schema, path, pseudonym_installed)
    result = rewriter.run()
    if len(_RESULTS) >= 2048:
        _RESULTS.clear()
    _RESULTS[key] = result
    if shape is not None:
        template = _Template.build(sql, rewriter.splices, result)
        if template is not None:
            if len(_TEMPLATES) >= 2048:
                _TEMPLATES.clear()
            _TEMPLATES[(shape, *key[1:])] = template
    return result


@dataclass(frozen=True, slots=True)
class _Template:
    """The rewrite of every text of one literal-insensitive shape (analysis.cache.
    simple_key), e.g. a point query with a new id each time: texts of one shape differ
    only in their constants, and no constant lies inside a splice (a relation
    reference), so the first text's splices, placed relative to the constant before
    each, apply to all of them, and the result parses as the first one's did (which
    _Rewriter verified). The analysis cache already decides by this same key."""
    literals: int                                   # how many constants the shape has
    splices: tuple[tuple[int, int, int, str], ...]  # (constants before, start, end after the last of them, text)
    result: RewriteResult

    @staticmethod
    def build(sql: str, splices: list[Splice], result: RewriteResult) -> "_Template | None":
        lits = simple_literals(sql)
        out = []
        for sp in sorted(splices, key=lambda sp: sp.start):
            before = 0
            for a, b in lits:
                if b <= sp.start:
                    before += 1
                elif a < sp.end:
                    return None                     # a constant inside a splice: no template
            anchor = lits[before - 1][1] if before else 0
            out.append((before, sp.start - anchor, sp.end - anchor, sp.text))
        return _Template(len(lits), tuple(out), result)

    def apply(self, sql: str) -> RewriteResult:
        lits = simple_literals(sql)
        if len(lits) != self.literals:      # cannot happen for one key; never guess
            raise RewriteError("internal: a statement does not fit its shape's rewrite")
        if not self.splices:
            return RewriteResult(sql, self.result.wrapped, self.result.notes)
        pieces = []
        pos = 0
        for before, start, end, text in self.splices:
            anchor = lits[before - 1][1] if before else 0
            pieces.append(sql[pos:anchor + start])
            pieces.append(text)
            pos = anchor + end
        pieces.append(sql[pos:])
        return RewriteResult("".join(pieces), self.result.wrapped, self.result.notes)


def pseudonym_available(schema: LiveSchema) -> bool:
    """Whether the upstream has ``piigate.pseudonym(text)`` installed as shipped
    (SECURITY DEFINER, so the key table stays unreadable to callers)."""
    return any(f.schema == "piigate" and f.arg_types == ("text",) and f.security_definer
               for f in schema.functions_named("pseudonym"))


class _Rewriter:
    def __init__(self, sql: str, plan: MaskPlan, schema: LiveSchema,
                 search_path: tuple[str, ...], pseudonym_installed: bool):
        self.sql = sql
        self.plan = plan
        self.schema = schema
        self.search_path = search_path
        self.pseudonym = pseudonym_installed
        self.by_relation = _plan_index(plan)
        self.masked_relations = set(self.by_relation)
        self.splices: list[Splice] = []
        self.notes: list[str] = []
        self._tokens: list | None = None
        self._ascii = sql.isascii()
        self._utf8 = b"" if self._ascii else sql.encode("utf-8")

    # --- driver ----------------------------------------------------------------
    def run(self) -> RewriteResult:
        stmt = self._parse_one(self.sql, "the statement")
        self.walk(stmt, None, None, frozenset())
        if not self.splices:
            return RewriteResult(self.sql, (), tuple(self.notes))
        out = self.sql
        for s in sorted(self.splices, key=lambda s: s.start, reverse=True):
            out = out[:s.start] + s.text + out[s.end:]
        self._verify(out)
        return RewriteResult(out, tuple(s.relation for s in sorted(self.splices, key=lambda s: s.start)),
                             tuple(self.notes))

    def _parse_one(self, sql: str, what: str) -> dict:
        # pglast's JSON parse tree is ~10x cheaper to get than its Python AST objects
        try:
            stmts = json.loads(parser.parse_sql_json(sql)).get("stmts", [])
        except Exception as e:  # pglast.parser.ParseError and friends
            raise RewriteError(f"{what} does not parse: {e}") from None
        if len(stmts) != 1:
            raise RewriteError(f"{what} must be exactly one statement, found {len(stmts)}")
        node = stmts[0]["stmt"]
        ((kind, body),) = node.items()
        return {"@": kind, **body}

    def _verify(self, out: str) -> None:
        """Re-read the result with PostgreSQL's parser. It must be exactly one
        statement; and with every masking subquery replaced by ``(SELECT NULL)``, no
        reference to a relation with masked columns may remain anywhere in it. The
        second check finds relation references in the parser's JSON text with a
        pattern (every RangeVar has a "relname"), independently of the tree walk that
        chose the splices: no positions, no scoping but CTE names."""
        # Each masking subquery was checked to parse on its own when it was built
        # (_subquery); the skeleton proves the statement around it parses as one.
        skeleton = self.sql
        for s in sorted(self.splices, key=lambda s: s.start, reverse=True):
            skeleton = skeleton[:s.start] + s.text.replace(s.body, "(SELECT NULL)", 1) + skeleton[s.end:]
        try:
            text = parser.parse_sql_json(skeleton)
        except Exception as e:
            raise RewriteError(f"the rewritten statement does not parse: {e}") from None
        if text.count('{"stmt":') != 1:
            raise RewriteError("the rewritten statement must be exactly one statement")
        if '"lockedRels"' in text:
            text = _strip_locked_rels(text)
        cte_names = set(_CTE_NAME.findall(text)) if '"ctename"' in text else set()
        for m in _RANGE_VAR.finditer(text):
            schema_name, relname = _json_str(m["sch"]), _json_str(m["rel"])
            if schema_name is None and relname in {_json_str(c) for c in cte_names}:
                continue
            if m["cat"] is not None:
                raise RewriteError("the rewritten statement holds a cross-database reference")
            rel = self.schema.resolve(relname, schema_name, self.search_path)
            if rel is not None and self.strategies_for(rel, inh=m["inh"] == "true"):
                raise RewriteError(f"the rewritten statement still reads {rel.ref} outside a masking subquery")

    # --- tree walk with CTE scoping --------------------------------------------
    # JSON nodes: a field declared as a generic Node* holds {"Type": {...}}; a field
    # declared with a specific type (RangeVar*, WithClause*, SelectStmt*) holds the
    # bare {...}. _typed() turns both into {"@": "Type", ...} using pglast's slot types.
    def walk(self, node: object, parent: str | None, fname: str | None, ctes: frozenset[str]) -> None:
        if isinstance(node, list):
            for x in node:
                self.walk(x, parent, fname, ctes)
            return
        typed = _typed(node, parent, fname)
        if typed is None:
            return
        kind, body = typed
        if kind in _LEAVES:
            return
        if kind == "RangeVar":
            self.range_var(body, parent, fname, ctes)
            return
        with_clause = body.get("withClause") if kind != "WithClause" else None
        if with_clause is not None:
            ctes = self.with_clause(with_clause, ctes)
        for name, value in body.items():
            if name == "withClause" and with_clause is not None:
                continue
            if isinstance(value, (dict, list)):
                self.walk(value, kind, name, ctes)

    def with_clause(self, w: dict, outer: frozenset[str]) -> frozenset[str]:
        """Walk the CTE bodies with the names each can see; return the names the
        statement body sees. Non-recursive: a CTE sees the earlier ones only (its
        own name inside its body is the real table). Recursive: all of them."""
        ctes = [c["CommonTableExpr"] for c in w.get("ctes", [])]
        names = [c["ctename"] for c in ctes]
        recursive = bool(w.get("recursive"))
        scope = set(outer)
        for c in ctes:
            visible = frozenset(outer | set(names)) if recursive else frozenset(scope)
            self.walk(c.get("ctequery"), "CommonTableExpr", "ctequery", visible)
            scope.add(c["ctename"])
        return frozenset(outer | set(names))

    # --- one relation reference ------------------------------------------------
    def range_var(self, rv: dict, parent: str | None, fname: str | None, ctes: frozenset[str]) -> None:
        relname, schemaname, catalogname = rv.get("relname"), rv.get("schemaname"), rv.get("catalogname")
        if schemaname is None and catalogname is None and relname in ctes:
            return  # a CTE reference: its body was walked (and masked) on its own
        position = (parent or "", fname or "")
        if position == ("LockingClause", "lockedRels"):
            return  # FOR UPDATE OF <name> names a FROM item (our wrapper keeps its name)
        if catalogname is not None:
            raise RewriteError(f"cross-database reference {catalogname}.{schemaname}.{relname}")
        rel = self.schema.resolve(relname, schemaname, self.search_path)
        if rel is None:
            if position == ("IntoClause", "rel") or position[0] in ("CreateStmt", "ViewStmt", "CreateTableAsStmt"):
                return  # a name being created, not read
            raise RewriteError(f"relation {_display(rv)} is not in the live schema; "
                               "cannot tell whether it holds PII")
        inh = bool(rv.get("inh"))
        strategies = self.strategies_for(rel, inh=inh)
        if not strategies:
            return
        if position in _WRITE_TARGETS:
            raise RewriteError(f"{rel.ref} holds masked columns and is the target of a write: "
                               "writes of PII are decided as writes (approval), never masked")
        if position not in _READ_POSITIONS:
            raise RewriteError(f"{rel.ref} holds masked columns in a position the rewriter does not "
                               f"model ({position[0]}.{position[1]})")
        start, end = self.span(rv, inh)
        body = self.subquery(rel, strategies, only=not inh)
        text = body if rv.get("alias") is not None else f"{body} AS {quote_ident(rel.ref.name)}"
        table_kw = self.table_keyword_before(start)
        if table_kw is not None:
            # `TABLE customers` is `SELECT * FROM customers`: say it that way around the wrapper
            start, text = table_kw, f"SELECT * FROM {text}"
        self.splices.append(Splice(start, end, text, rel.ref, body))

    def strategies_for(self, rel: Relation, inh: bool) -> dict[str, MaskStrategy]:
        """Column name -> strategy for the relation's columns that must be masked."""
        names = set(rel.column_names)
        out: dict[str, MaskStrategy] = {}

        def add(ref: RelationRef) -> None:
            for col, strat in self.by_relation.get(ref, {}).items():
                if col in names:
                    out.setdefault(col, strat)
                elif ref == rel.ref:
                    raise RewriteError(f"mask plan names {ref}.{col} but the live schema has no such "
                                       "column; refresh the schema")

        add(rel.ref)
        self._refuse_row_filter(rel)
        if inh:
            for desc in self.descendants(rel):
                self._refuse_row_filter(desc)
        for anc in self.ancestors(rel):
            add(anc)
            # a partition holds the rows whose key lies in its bound (by dob decade, by
            # an SSN prefix): its rows tell the key, masked or not
            parent = self.schema.relation(anc)
            for k in (parent.partition_key if parent is not None else ()):
                if (ColumnRef(anc.schema, anc.name, k) in self.plan.columns
                        or ColumnRef(rel.ref.schema, rel.ref.name, k) in self.plan.columns):
                    raise RewriteError(f"{rel.ref} is a partition of {anc} by the masked column {k}: "
                                       "which rows it holds tells their value; read the partitioned table")
        if inh:
            for desc in self.descendants(rel):
                add(desc.ref)
        if rel.kind not in (VIEW, MATVIEW):
            # a generated column (reverse(email)) or one a DBA's function fills in is a
            # computed value: a strategy showing part of it shows another part
            for col in (set(rel.lineage or ()) | set(rel.set_by or ())) & out.keys():
                if out[col].name in _PARTIAL_STRATEGIES:
                    out[col] = MaskStrategy("redact")
        if rel.kind in (VIEW, MATVIEW):
            for col, bases in (rel.lineage or {}).items():
                hits = [b for b in bases if isinstance(b, ColumnRef) and b in self.plan.columns]
                if hits and col in names:
                    out.setdefault(col, self.plan.columns[sorted(hits)[0]])
            # which rows the view yields, how many and in which order were decided over
            # the clear values (WHERE substr(ssn, 8)::int >= g, LIMIT by a digit of it,
            # ORDER BY ssn among candidates): masking its outputs hides none of that
            chosen = sorted(str(b) for b in rel.row_lineage
                            if isinstance(b, ColumnRef) and b in self.plan.columns)
            if chosen:
                raise RewriteError(f"view {rel.ref} chooses, counts or orders its rows by masked column(s) "
                                   f"{', '.join(chosen)}: masking its columns cannot hide what that tells")
            # a strategy that shows part of a value shows another part of a computed one
            # (the last four of reverse(phone) are the first four of the phone; what
            # follows '@' in '@' || email is its local part): only a column that is a
            # base column's value unchanged keeps it, any other is redacted
            for col, strat in list(out.items()):
                if strat.name in _PARTIAL_STRATEGIES and col not in rel.exact_columns:
                    out[col] = MaskStrategy("redact")
            lineage_complete = bool(rel.lineage) and all(n in rel.lineage for n in names)
            attributed = rel.ref in self.by_relation or lineage_complete
            if not attributed and self.view_reaches_masked(rel, set()):
                raise RewriteError(f"view {rel.ref} reads masked relations but neither the catalog nor "
                                   "the view lineage says which of its columns carry PII")
        return out

    def _refuse_row_filter(self, rel: Relation) -> None:
        """Row-level security whose policies read a masked column (USING (customer_id
        IN (SELECT id FROM customers WHERE ssn LIKE current_setting('app.q')))) chooses
        the rows a reader sees by the clear value: no mask of the outputs hides that."""
        chosen = sorted(str(c) for c in rel.row_filter if c in self.plan.columns)
        if chosen:
            raise RewriteError(f"{rel.ref} has row-level security policies reading masked column(s) "
                               f"{', '.join(chosen)}: the rows it returns would tell them")

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
            tree = json.loads(parser.parse_sql_json(rel.view_definition))
        except Exception as e:
            raise RewriteError(f"definition of view {rel.ref} does not parse: {e}") from None
        for rv in _range_vars(tree.get("stmts", []), None, None):
            base = self.schema.resolve(rv.get("relname"), rv.get("schemaname"),
                                       (rel.ref.schema,) + self.schema.search_path)
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
        key = (rel.ref, rel.columns, tuple(sorted((c, s.name, tuple(sorted(s.params.items())))
                                                          for c, s in strategies.items())),
               only, self.pseudonym)
        try:
            text, notes = _SUBQUERIES[key]
        except (KeyError, TypeError):
            text, notes = self._subquery(rel, strategies, only)
            try:
                if len(_SUBQUERIES) > 4096:
                    _SUBQUERIES.clear()
                _SUBQUERIES[key] = (text, notes)
            except TypeError:
                pass   # unhashable parameters: just not cached
        self.notes.extend(notes)
        return text

    def _subquery(self, rel: Relation, strategies: Mapping[str, MaskStrategy], only: bool) -> tuple[str, tuple[str, ...]]:
        items, notes = [], []
        for col in rel.columns:
            q = quote_ident(col.name)
            strat = strategies.get(col.name)
            if strat is None:
                items.append(q)
                continue
            m: MaskedExpression = mask_expression(q, col.type_name, strat, pseudonym_installed=self.pseudonym)
            if m.note:
                notes.append(f"{rel.ref}.{col.name}: {m.note}")
            items.append(f"{m.sql} AS {q}")
        target = f"{quote_ident(rel.ref.schema)}.{quote_ident(rel.ref.name)}"
        body = f"(SELECT {', '.join(items) or 'NULL'} FROM {'ONLY ' if only else ''}{target})"
        try:
            ok = len(parser.split(f"SELECT * FROM {body} AS x", with_parser=True)) == 1
        except Exception:
            ok = False
        if not ok:
            raise RewriteError(f"the masking subquery for {rel.ref} does not parse (column types: "
                               + ", ".join(c.type_name for c in rel.columns) + ")")
        return body, tuple(notes)

    def char_offset(self, byte_offset: int) -> int:
        if byte_offset < 0:
            raise RewriteError("a relation reference has no location in the statement text")
        if self._ascii:
            return byte_offset
        return len(self._utf8[:byte_offset].decode("utf-8", errors="strict"))

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

    def span(self, rv: dict, inh: bool) -> tuple[int, int]:
        """Character span of ``[ONLY [(]] [schema.]name [)] [*]`` for a RangeVar.
        The JSON tree gives byte offsets into the UTF-8 text; the scanner, characters."""
        toks = self.tokens
        loc = self.char_offset(rv.get("location", -1))
        idx = next((i for i, t in enumerate(toks) if t.start == loc), None)
        if idx is None:
            raise RewriteError(f"cannot locate relation {_display(rv)} in the statement text")
        end_i = idx
        while end_i + 2 < len(toks) and toks[end_i + 1].name == "ASCII_46":
            end_i += 2
        start = toks[idx].start
        end = toks[end_i].end + 1
        if not inh:
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


#: masking subquery text by (relation, strategies, ONLY, pseudonym): pure, so cacheable
_SUBQUERIES: dict[tuple, tuple[str, tuple[str, ...]]] = {}
#: plan index by id(plan), dropped when the plan is garbage-collected
_PLAN_INDEX: dict[int, tuple[object, dict[RelationRef, dict[str, MaskStrategy]]]] = {}


_RESULTS: dict[tuple, RewriteResult] = {}
#: _Template by (simple_key, plan, schema version, search_path, pseudonym)
_TEMPLATES: dict[tuple, _Template] = {}


def _plan_key(plan: MaskPlan) -> tuple:
    """A hashable value equal for equal plans (cached per plan object)."""
    hit = _PLAN_KEYS.get(id(plan))
    if hit is not None and hit[0]() is plan:
        return hit[1]
    try:
        key = frozenset((c, s.name, tuple(sorted(s.params.items()))) for c, s in plan.columns.items())
        hash(key)
    except TypeError:   # a parameter value that is not hashable
        key = frozenset((c, s.name, repr(sorted(s.params.items()))) for c, s in plan.columns.items())
    _remember(_PLAN_KEYS, plan, key)
    return key


_PLAN_KEYS: dict[int, tuple[object, tuple]] = {}


def _remember(table: dict, obj: object, value: object) -> None:
    import weakref
    k = id(obj)
    try:
        table[k] = (weakref.ref(obj, lambda _r, k=k: table.pop(k, None)), value)
    except TypeError:
        pass


def _plan_index(plan: MaskPlan) -> dict[RelationRef, dict[str, MaskStrategy]]:
    import weakref
    hit = _PLAN_INDEX.get(id(plan))
    if hit is not None and hit[0]() is plan:
        return hit[1]
    index: dict[RelationRef, dict[str, MaskStrategy]] = {}
    for c, strat in plan.columns.items():
        index.setdefault(c.relation, {})[c.column] = strat
    key = id(plan)
    try:
        ref = weakref.ref(plan, lambda _r, k=key: _PLAN_INDEX.pop(k, None))
    except TypeError:
        return index
    _PLAN_INDEX[key] = (ref, index)
    return index


def _display(rv: dict) -> str:
    return ".".join(p for p in (rv.get("catalogname"), rv.get("schemaname"), rv.get("relname")) if p)


# libpg_query writes RangeVar fields in struct order: catalogname, schemaname, relname, inh
_Q = r'"(?:[^"\\]|\\.)*"'     # a JSON string token
_RANGE_VAR = re.compile(f'(?:"catalogname":(?P<cat>{_Q}),)?(?:"schemaname":(?P<sch>{_Q}),)?'
                        f'"relname":(?P<rel>{_Q})(?:,"inh":(?P<inh>true|false))?')
_CTE_NAME = re.compile(f'"ctename":({_Q})')


def _strip_locked_rels(text: str) -> str:
    """Drop the ``"lockedRels":[...]`` arrays (FOR UPDATE OF names FROM items, it reads nothing)."""
    out, i = [], 0
    while True:
        j = text.find('"lockedRels":[', i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        k, depth, in_str = j + len('"lockedRels":['), 1, False
        while depth:
            ch = text[k]
            if in_str:
                if ch == "\\":
                    k += 1
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
            k += 1
        out.append('"lockedRels":[]')
        i = k


def _json_str(token: str | None) -> str | None:
    return None if token is None else json.loads(token)


_AST_NAMES = frozenset(n for n in dir(ast) if n[:1].isupper())
#: node types that can never contain a relation reference: not walked into
_LEAVES = frozenset({"A_Const", "ColumnRef", "TypeName", "String", "Integer", "Float", "Boolean",
                     "BitString", "ParamRef", "A_Star", "Alias"})


@lru_cache(maxsize=None)
def _slot_type(parent: str, field: str) -> str | None:
    """The declared node type of ``parent.field`` when it is specific (``RangeVar*``)."""
    cls = getattr(ast, parent, None)
    slots = getattr(cls, "__slots__", None)
    if not isinstance(slots, dict) or field not in slots:
        return None
    c_type = getattr(slots[field], "c_type", "")
    name = c_type.rstrip("*")
    return name if c_type.endswith("*") and name not in ("Node", "List", "char") and hasattr(ast, name) else None


def _typed(node: object, parent: str | None, field: str | None) -> tuple[str, dict] | None:
    if not isinstance(node, dict):
        return None
    if "@" in node:
        return node["@"], node
    if len(node) == 1:
        ((k, v),) = node.items()
        if k in _AST_NAMES and isinstance(v, dict):
            return k, v
    declared = _slot_type(parent, field) if parent and field else None
    if declared is not None:
        return declared, node
    if "relname" in node:
        return "RangeVar", node   # fail closed: anything shaped like a relation reference is one
    return "?", node    # a plain structure (e.g. an enum holder): walk its fields


def _cte_names(node: object) -> Iterator[str]:
    if isinstance(node, list):
        for x in node:
            yield from _cte_names(x)
    elif isinstance(node, dict):
        name = node.get("ctename")
        if isinstance(name, str):
            yield name
        for v in node.values():
            if isinstance(v, (dict, list)):
                yield from _cte_names(v)


def _range_vars(node: object, parent: str | None, field: str | None) -> Iterator[dict]:
    if isinstance(node, list):
        for x in node:
            yield from _range_vars(x, parent, field)
        return
    typed = _typed(node, parent, field)
    if typed is None:
        return
    kind, body = typed
    if kind in _LEAVES:
        return
    if kind == "RangeVar":
        yield body
        return
    for name, value in body.items():
        if isinstance(value, (dict, list)):
            yield from _range_vars(value, kind, name)
