"""Query and expression walker over pglast's JSON parse tree (pure).

Walks ``pglast.parser.parse_sql_json`` output (plain dicts; a node is
``{"TypeName": {fields}}``; fields left at their default value are omitted, e.g.
``RangeVar.inh`` missing means ONLY). Every node type is handled explicitly;
anything else makes the statement unknown (``Walk.fail``): fail closed.

Model: each query level has a ``Scope`` of ``RangeItem`` s (FROM items). Each
item exposes ordered output columns, each with the set of *base* columns
(``ColumnRef``) its value derives from. Expressions return the base columns
their value derives from and record, for every base column they touch, the
``Usage`` s of the context (select list, WHERE, JOIN, ...). Derived tables,
CTEs and views are analysed where they are defined; referencing one of their
columns later adds the referencing context's usages to its sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from catalog.model import ColumnRef, RelationRef
from gateway.analysis import functions as fnres
from gateway.analysis.facts import Usage
from gateway.schema import MATVIEW, VIEW, LiveSchema, Relation

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


class Walk:
    """Mutable accumulator for one statement's analysis."""

    def __init__(self, schema: LiveSchema, search_path: tuple[str, ...], depth: int = 0):
        self.schema = schema
        self.search_path = tuple(search_path)
        self.depth = depth
        self.uses: dict[ColumnRef, set] = {}
        self.read: set[RelationRef] = set()
        self.written: set[RelationRef] = set()
        self.functions: set[str] = set()
        self.dynamic: list[str] = []
        self.reasons: list[str] = []
        if "$user" in self.search_path:
            # PostgreSQL substitutes the session user's name; a schema of that
            # name would shadow public without the analysis knowing
            self.reasons.append("search_path contains $user: substitute the session user's name before analysing")
        self.param_max = 0
        self.literal_dependent = False    # the analysis read a literal's value: no literal-insensitive caching
        self.names_seen: set[str] = set()  # relation/CTE names as PostgreSQL read them (cross-check)

    # -- recording -------------------------------------------------------
    def fail(self, reason: str) -> frozenset:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return EMPTY

    def use(self, sources: frozenset, usages: frozenset) -> frozenset:
        uses = self.uses
        for c in sources:
            s = uses.get(c)
            if s is None:
                uses[c] = set(usages)
            else:
                s.update(usages)
        return sources

    def add_dynamic(self, reason: str) -> None:
        if reason not in self.dynamic:
            self.dynamic.append(reason)

    # -- relations -------------------------------------------------------
    def resolve_relation(self, rv: dict, search_path=None) -> Relation | None:
        name = rv.get("relname", "")
        schema_name = rv.get("schemaname")
        path = self.search_path if search_path is None else search_path
        if schema_name is None and "pg_temp" not in path:
            # PostgreSQL searches the session's temporary schema first for relations
            rel = self.schema.relations.get(RelationRef("pg_temp", name))
            if rel is not None:
                return rel
        if schema_name == "pg_temp" or (schema_name and schema_name.startswith("pg_temp_")):
            return self.schema.relations.get(RelationRef("pg_temp", name))
        return self.schema.resolve(name, schema_name, path)

    def _children_index(self) -> dict:
        idx = _CHILDREN.get(self.schema.version)
        if idx is None or idx[0] is not self.schema:
            kids: dict = {}
            for r in self.schema.relations.values():
                for p in r.parents:
                    kids.setdefault(p, []).append(r)
            idx = (self.schema, kids)
            if len(_CHILDREN) > 8:
                _CHILDREN.clear()
            _CHILDREN[self.schema.version] = idx
        return idx[1]

    def descendants(self, ref: RelationRef) -> list[Relation]:
        kids = self._children_index()
        out, todo, seen = [], [ref], {ref}
        while todo:
            for k in kids.get(todo.pop(), ()):
                if k.ref not in seen:
                    seen.add(k.ref)
                    out.append(k)
                    todo.append(k.ref)
        return out

    def ancestors(self, rel: Relation) -> list[Relation]:
        out, todo, seen = [], list(rel.parents), set()
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            pr = self.schema.relation(p)
            if pr is not None:
                out.append(pr)
                todo.extend(pr.parents)
        return out

    def relation_item(self, rel: Relation, inh: bool, alias: dict | None,
                      writing: bool = False) -> RangeItem:
        """A FROM item for a table/view. Child tables' same-named columns are
        included when the parent is read without ONLY; an inherited column is
        also reported as its ancestors' column (the parent's column *is* the
        union of its children's rows, and the catalog tags the parent)."""
        self.read.add(rel.ref)
        if rel.ref.schema == "pg_catalog" and rel.ref.name in SENSITIVE_SYSTEM_RELATIONS:
            self.fail(f"reads {rel.ref}, which holds values of other tables' columns or other sessions' SQL")
        family = [rel]
        if inh:
            desc = self.descendants(rel.ref)
            family.extend(desc)
            for d in desc:
                self.read.add(d.ref)
        family.extend(self.ancestors(rel))
        if rel.kind in (VIEW, MATVIEW):
            view_outs = self.expand_view(rel)
        else:
            view_outs = None
        cols: list[Out] = []
        for i, c in enumerate(rel.columns):
            srcs = {ColumnRef(rel.ref.schema, rel.ref.name, c.name)}
            for r in family[1:]:
                if r.column(c.name) is not None:
                    srcs.add(ColumnRef(r.ref.schema, r.ref.name, c.name))
            if view_outs is not None and i < len(view_outs):
                srcs |= view_outs[i].sources
            cols.append(Out(c.name, frozenset(srcs)))
        system = tuple(r.ref for r in family) if rel.kind != VIEW else None
        refname = rel.ref.name
        schema_name = rel.ref.schema
        if alias:
            refname = alias.get("aliasname", refname)
            schema_name = None
            self._rename(cols, alias.get("colnames"), "relation " + str(rel.ref))
        return RangeItem(refname, cols, schema_name, None, system)

    def _rename(self, cols: list[Out], colnames, what: str) -> None:
        names = _names(colnames)
        if len(names) > len(cols):
            self.fail(f"{what} has {len(cols)} columns but the alias names {len(names)}")
            return
        for i, n in enumerate(names):
            cols[i] = Out(n, cols[i].sources)

    def expand_view(self, rel: Relation) -> list[Out] | None:
        """Analyse a view's definition; its outputs' base columns, positionally."""
        if rel.view_definition is None:
            self.fail(f"view {rel.ref} has no definition in the live schema")
            return None
        if self.depth >= VIEW_DEPTH_LIMIT:
            self.fail(f"views nested deeper than {VIEW_DEPTH_LIMIT} levels at {rel.ref}")
            return None
        key = (self.schema.version, rel.ref)
        memo = _VIEW_MEMO.get(key)
        if memo is None or memo[0] is not self.schema:
            memo = (self.schema, self._analyse_view(rel))
            if len(_VIEW_MEMO) > 4096:
                _VIEW_MEMO.clear()
            _VIEW_MEMO[key] = memo
        outs, sub = memo[1]
        for c, us in sub.uses.items():
            self.use(frozenset((c,)), frozenset(us))
        self.read |= sub.read
        self.functions |= sub.functions
        for r in sub.reasons:
            self.fail(r)
        for d in sub.dynamic:
            self.add_dynamic(d)
        if outs is not None and len(outs) != len(rel.columns):
            self.fail(f"view {rel.ref}: definition yields {len(outs)} columns, the live schema lists {len(rel.columns)}")
        return outs

    def _analyse_view(self, rel: Relation):
        from pglast import parser
        sub = Walk(self.schema, VIEW_SEARCH_PATH, self.depth + 1)
        try:
            tree = parser.parse_sql_json(rel.view_definition)
        except Exception as e:  # noqa: BLE001 - any parser error is an unknown
            sub.fail(f"view {rel.ref}: definition does not parse ({e})")
            return None, sub
        stmts = orjson.loads(tree).get("stmts", [])
        if len(stmts) != 1 or "SelectStmt" not in stmts[0].get("stmt", {}):
            sub.fail(f"view {rel.ref}: definition is not a single SELECT")
            return None, sub
        outs = sub.select(stmts[0]["stmt"]["SelectStmt"], None, OTHER)
        return outs, sub

    # -- SELECT ----------------------------------------------------------
    def with_clause(self, wc: dict | None, scope: Scope) -> None:
        if not wc:
            return
        recursive = wc.get("recursive", False)
        if recursive:
            self._forward_references(wc.get("ctes", ()))
        for node in wc.get("ctes", ()):
            cte = node.get("CommonTableExpr")
            if cte is None:
                self.fail("unexpected node in WITH")
                continue
            name = cte.get("ctename", "")
            q = cte.get("ctequery", {})
            if recursive and "SelectStmt" in q and q["SelectStmt"].get("op", "SETOP_NONE") != "SETOP_NONE":
                body = q["SelectStmt"]
                first = self.statement_outputs({"SelectStmt": body["larg"]}, scope)
                entry = Cte(name, list(first))
                self._rename(entry.cols, cte.get("aliascolnames"), "CTE " + name)
                scope.ctes[name] = entry
                for _ in range(8):   # fixpoint: sources only grow, names are fixed
                    outs = self.statement_outputs(q, scope)
                    changed = False
                    for i, o in enumerate(outs[:len(entry.cols)]):
                        merged = entry.cols[i].sources | o.sources
                        if merged != entry.cols[i].sources:
                            entry.cols[i] = Out(entry.cols[i].name, merged)
                            changed = True
                    if not changed:
                        break
                else:
                    self.fail(f"recursive CTE {name} did not settle")
            else:
                outs = list(self.statement_outputs(q, scope))
                entry = Cte(name, outs)
                self._rename(entry.cols, cte.get("aliascolnames"), "CTE " + name)
                scope.ctes[name] = entry
            self._cte_extras(cte, entry)

    def _forward_references(self, ctes) -> None:
        """In WITH RECURSIVE any CTE may name one defined later in the list;
        the analysis resolves them in order, so such a name would be read as a
        table: refuse instead."""
        names = [c.get("CommonTableExpr", {}).get("ctename") for c in ctes]
        for i, c in enumerate(ctes):
            later = set(names[i + 1:])
            if later and later & _relnames(c.get("CommonTableExpr", {}).get("ctequery")):
                self.fail(f"WITH RECURSIVE: CTE {names[i]} refers to a CTE defined after it")

    def _cte_extras(self, cte: dict, entry: Cte) -> None:
        """SEARCH/CYCLE add columns that hold the listed columns' values."""
        def listed(names):
            return frozenset().union(*(o.sources for o in entry.cols if o.name in set(_names(names)))) \
                if names else EMPTY
        sc = cte.get("search_clause")
        if sc:
            entry.cols.append(Out(sc.get("search_seq_column"), listed(sc.get("search_col_list"))))
        cc = cte.get("cycle_clause")
        if cc:
            src = listed(cc.get("cycle_col_list"))
            entry.cols.append(Out(cc.get("cycle_mark_column"), EMPTY))
            entry.cols.append(Out(cc.get("cycle_path_column"), src))
            for k in ("cycle_mark_value", "cycle_mark_default"):
                if cc.get(k):
                    self.expr(cc[k], Scope([], None), OTHER)

    def statement_outputs(self, node: dict, scope: Scope | None) -> list[Out]:
        """Outputs of a query used as a table (subquery, CTE body): SELECT, or a
        data-modifying statement's RETURNING list. Touched columns get OTHER;
        the consumer adds its own usages when it references an output."""
        (kind, body), = node.items()
        if kind == "SelectStmt":
            return self.select(body, scope, OTHER)
        if kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            return self.modify(kind, body, scope, OTHER)
        self.fail(f"{kind} is not modelled as a query")
        return []

    def select(self, s: dict, parent: Scope | None, target_usages: frozenset) -> list[Out]:
        scope = Scope([], parent)
        self.with_clause(s.get("withClause"), scope)
        op = s.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            left = self.select(s["larg"], scope, target_usages)
            right = self.select(s["rarg"], scope, target_usages)
            if len(left) != len(right):
                self.fail("set operation branches have different column counts")
            outs = [Out(l.name, l.sources | (right[i].sources if i < len(right) else EMPTY))
                    for i, l in enumerate(left)]
            self._sort_and_limit(s, Scope([], scope), outs)
            self._unexpected(s, _SETOP_FIELDS, "set operation")
            return outs
        if s.get("valuesLists"):
            outs: list[Out] = []
            for row in s["valuesLists"]:
                items = row.get("List", {}).get("items", [])
                for i, e in enumerate(items):
                    src = self.expr(e, scope, target_usages)
                    if i < len(outs):
                        outs[i] = Out(outs[i].name, outs[i].sources | src)
                    else:
                        outs.append(Out(f"column{i + 1}", src))
            self._sort_and_limit(s, scope, outs)
            self._unexpected(s, _VALUES_FIELDS, "VALUES")
            return outs
        for item in s.get("fromClause", ()):
            scope.items.extend(self.from_item(item, scope, scope.items))
        if s.get("whereClause"):
            self.expr(s["whereClause"], scope, PREDICATE)
        outs = self.target_list(s.get("targetList", ()), scope, target_usages)
        for g in s.get("groupClause", ()):
            self._group_item(g, scope, outs)
        if s.get("havingClause"):
            self.expr(s["havingClause"], scope, PREDICATE)
        for w in s.get("windowClause", ()):
            wd = w.get("WindowDef")
            if wd is None:
                self.fail("unexpected node in WINDOW clause")
            else:
                self.window_def(wd, scope)
        dc = s.get("distinctClause")
        if dc:
            if dc == [{}]:
                for o in outs:
                    self.use(o.sources, GROUP_ORDER)
            else:
                for e in dc:
                    self._output_or_expr(e, scope, outs, GROUP_ORDER)
        self._sort_and_limit(s, scope, outs)
        for lc in s.get("lockingClause", ()):
            if "LockingClause" not in lc:
                self.fail("unexpected locking clause")
        self._unexpected(s, _SELECT_FIELDS, "SELECT")
        return outs

    def _unexpected(self, body: dict, allowed: frozenset, what: str) -> None:
        for k in body:
            if k not in allowed:
                self.fail(f"{what}: clause {k} is not modelled")

    def _sort_and_limit(self, s: dict, scope: Scope, outs: list[Out]) -> None:
        for sb in s.get("sortClause", ()):
            b = sb.get("SortBy")
            if b is None:
                self.fail("unexpected node in ORDER BY")
                continue
            self._output_or_expr(b.get("node"), scope, outs, GROUP_ORDER)
        for k in ("limitCount", "limitOffset"):
            if s.get(k):
                self.expr(s[k], scope, OTHER)

    def _output_or_expr(self, node: dict, scope: Scope, outs: list[Out], usages: frozenset) -> None:
        """ORDER BY / DISTINCT ON / GROUP BY item: an output position, an output
        name, or an expression over the FROM items (both, when a name is both)."""
        c = node.get("A_Const") if node else None
        if c is not None and "ival" in c:
            self.literal_dependent = True
            n = c["ival"].get("ival", 0)
            if 1 <= n <= len(outs):
                self.use(outs[n - 1].sources, usages)
            return
        cr = node.get("ColumnRef") if node else None
        if cr is not None:
            f = cr.get("fields", [])
            if len(f) == 1 and _sval(f[0]) is not None:
                name = _sval(f[0])
                hits = [o for o in outs if o.name == name]
                if hits:
                    for o in hits:
                        self.use(o.sources, usages)
                    if self._lookup_column(name, scope) is None:
                        return
        self.expr(node, scope, usages)

    def _group_item(self, g: dict, scope: Scope, outs: list[Out]) -> None:
        gs = g.get("GroupingSet")
        if gs is not None:
            for e in gs.get("content", ()):
                self._group_item(e, scope, outs)
            return
        self._output_or_expr(g, scope, outs, GROUP_ORDER)

    def target_list(self, targets, scope: Scope, usages: frozenset) -> list[Out]:
        outs: list[Out] = []
        for t in targets:
            rt = t.get("ResTarget")
            if rt is None:
                self.fail("unexpected node in select list")
                continue
            val = rt.get("val", {})
            cr = val.get("ColumnRef")
            if cr is not None and cr.get("fields") and "A_Star" in cr["fields"][-1]:
                outs.extend(self._star(cr["fields"], scope, usages))
                continue
            src = self.expr(val, scope, usages)
            outs.append(Out(rt.get("name") or _colname(val), src))
        return outs

    def _star(self, fields, scope: Scope, usages: frozenset) -> list[Out]:
        """``*`` / ``t.*`` at the top of a select list: expanded column by column."""
        quals = [_sval(f) for f in fields[:-1]]
        if not quals:
            items = scope.items
            if not items:
                self.fail("SELECT * with no FROM items")
        else:
            items = self._items_named(quals, scope)
            if not items:
                src = self._composite_column(quals, scope, usages)
                return [Out(None, src)] if src else []
        outs = []
        for it in items:
            for c in it.cols:
                outs.append(Out(c.name, self.use(c.sources, usages)))
            if it.open_sources is not None:
                outs.append(Out(None, self.use(it.open_sources, usages)))
        return outs

    # -- FROM ------------------------------------------------------------
    def from_item(self, node: dict, scope: Scope, before: list) -> list[RangeItem]:
        (kind, b), = node.items()
        if kind == "RangeVar":
            return [self.range_var(b, scope)]
        if kind == "RangeSubselect":
            # the subquery sees this level's CTEs and, only when LATERAL, the
            # FROM items before it; always the enclosing query levels
            parent = Scope(list(before) if b.get("lateral") else [], scope.parent, scope.ctes)
            outs = self.statement_outputs(b.get("subquery", {}), parent)
            alias = b.get("alias")
            cols = [o for o in outs if o.name is not None]
            unnamed = [o.sources for o in outs if o.name is None]
            # outputs whose names we do not know (a star over a record function)
            # match any name, like the function item they come from
            opened = frozenset().union(*unnamed) if unnamed else None
            if alias and alias.get("colnames"):
                cols = list(outs)
                self._rename(cols, alias.get("colnames"), "subquery")
            return [RangeItem(alias.get("aliasname") if alias else None, cols, None, opened)]
        if kind == "RangeFunction":
            return [self.range_function(b, scope, before)]
        if kind == "JoinExpr":
            return self.join(b, scope, before)
        if kind == "RangeTableSample":
            items = self.from_item(b["relation"], scope, before)
            lat = Scope(list(before) + items, scope.parent, {})
            for a in b.get("args", ()):
                self.expr(a, lat, OTHER)
            if b.get("repeatable"):
                self.expr(b["repeatable"], lat, OTHER)
            return items
        if kind == "JsonTable":
            return [self.json_table(b, scope, before)]
        if kind == "RangeTableFunc":
            return [self.xml_table(b, scope, before)]
        self.fail(f"FROM item {kind} is not modelled")
        return []

    def range_var(self, rv: dict, scope: Scope, writing: bool = False) -> RangeItem:
        name = rv.get("relname", "")
        alias = rv.get("alias")
        self.names_seen.add(name)
        if rv.get("schemaname") is None and rv.get("catalogname") is None:
            cte = scope.find_cte(name)
            if cte is not None:
                cols = list(cte.cols)
                if alias:
                    self._rename(cols, alias.get("colnames"), "CTE " + name)
                return RangeItem(alias.get("aliasname") if alias else name, cols)
        rel = self.resolve_relation(rv)
        if rel is None:
            qual = f"{rv['schemaname']}.{name}" if rv.get("schemaname") else name
            self.fail(f"relation {qual} is not in the live schema (search_path {', '.join(self.search_path)})")
            return RangeItem(alias.get("aliasname") if alias else name, [], None, EMPTY)
        return self.relation_item(rel, rv.get("inh", False), alias, writing)

    def range_function(self, b: dict, scope: Scope, before: list) -> RangeItem:
        lat = Scope(list(before), scope.parent, scope.ctes)   # functions in FROM are implicitly LATERAL
        cols: list[Out] = []
        open_src = None
        top_coldefs = b.get("coldeflist")
        fns = b.get("functions", ())
        alias = b.get("alias")
        for pair in fns:
            items = pair.get("List", {}).get("items", [])
            if not items:
                self.fail("empty function in FROM")
                continue
            call = items[0]
            coldefs = (items[1].get("List", {}).get("items") if len(items) > 1 and items[1] else None)
            if isinstance(coldefs, list) and not coldefs:
                coldefs = None
            src = self.expr(call, lat, OTHER)
            fc = call.get("FuncCall")
            defs = coldefs or (top_coldefs if len(fns) == 1 else None)
            if defs:
                for d in defs:
                    cd = d.get("ColumnDef", {})
                    cols.append(Out(cd.get("colname"), src))
                continue
            shape = self._function_shape(fc) if fc else None
            if shape is None:
                open_src = src if open_src is None else open_src | src
            elif shape == "scalar":
                fname = _names(fc["funcname"])[-1]
                nm = alias.get("aliasname") if (alias and len(fns) == 1 and not b.get("is_rowsfrom")) else fname
                cols.append(Out(nm, src))
            else:
                for cname in shape:
                    cols.append(Out(cname, src))
        if b.get("ordinality"):
            cols.append(Out("ordinality", EMPTY))
        if alias and open_src is not None:
            # a function whose columns we cannot count: every name the alias
            # gives reaches every argument (and any other name still matches)
            cols = [Out(n, open_src) for n in _names(alias.get("colnames"))] or cols
        elif alias:
            self._rename(cols, alias.get("colnames"), "function in FROM")
        name = alias.get("aliasname") if alias else None
        if name is None and len(fns) == 1 and fns[0].get("List", {}).get("items"):
            fc = fns[0]["List"]["items"][0].get("FuncCall")
            name = _names(fc["funcname"])[-1] if fc else None
        return RangeItem(name, cols, None, open_src)

    def _function_shape(self, fc: dict):
        """'scalar', a tuple of column names (composite of a known relation), or
        None (record: names unknown)."""
        cands = fnres.candidates(self.schema, _names(fc.get("funcname")), self.search_path)
        shapes = set()
        for f in cands:
            rt = f.result_type
            if rt in ("record", "SETOF record"):
                return None
            rel = None
            if "." in rt:
                sch, _, nm = rt.partition(".")
                rel = self.schema.relation(RelationRef(sch.strip('"'), nm.strip('"')))
            else:
                rel = self.schema.resolve(rt.strip('"'), None, self.search_path) if rt.isidentifier() else None
                if rel is not None and rel.ref.schema == "pg_catalog" and rt in ("text", "name"):
                    rel = None
            if rel is not None:
                shapes.add(tuple(rel.column_names))
            else:
                shapes.add("scalar")
        if len(shapes) == 1:
            return shapes.pop()
        return None

    def json_table(self, b: dict, scope: Scope, before: list) -> RangeItem:
        lat = Scope(list(before), scope.parent, scope.ctes)
        src = self.expr(b.get("context_item", {}), lat, OTHER, node_type="JsonValueExpr")
        for p in b.get("passing", ()):
            src |= self.expr(p, lat, OTHER)
        cols: list[Out] = []

        def walk_cols(lst):
            for c in lst or ():
                jc = c.get("JsonTableColumn")
                if jc is None:
                    self.fail("unexpected JSON_TABLE column node")
                    continue
                if jc.get("coltype") == "JTC_NESTED":
                    walk_cols(jc.get("columns"))
                    continue
                for k in ("on_empty", "on_error"):
                    if jc.get(k):
                        self.expr(jc[k], lat, OTHER, node_type="JsonBehavior")
                cols.append(Out(jc.get("name"), EMPTY if jc.get("coltype") == "JTC_FOR_ORDINALITY" else src))
        walk_cols(b.get("columns"))
        for k in ("on_error",):
            if b.get(k):
                self.expr(b[k], lat, OTHER, node_type="JsonBehavior")
        alias = b.get("alias")
        if alias:
            self._rename(cols, alias.get("colnames"), "JSON_TABLE")
        return RangeItem(alias.get("aliasname") if alias else "json_table", cols)

    def xml_table(self, b: dict, scope: Scope, before: list) -> RangeItem:
        lat = Scope(list(before), scope.parent, scope.ctes)
        src = EMPTY
        for k in ("docexpr", "rowexpr"):
            if b.get(k):
                src |= self.expr(b[k], lat, OTHER)
        for ns in b.get("namespaces", ()):
            self.expr(ns, lat, OTHER)
        cols = []
        for c in b.get("columns", ()):
            tc = c.get("RangeTableFuncCol")
            if tc is None:
                self.fail("unexpected XMLTABLE column node")
                continue
            for k in ("colexpr", "coldefexpr"):
                if tc.get(k):
                    self.expr(tc[k], lat, OTHER)
            cols.append(Out(tc.get("colname"), EMPTY if tc.get("for_ordinality") else src))
        alias = b.get("alias")
        if alias:
            self._rename(cols, alias.get("colnames"), "XMLTABLE")
        return RangeItem(alias.get("aliasname") if alias else "xmltable", cols)

    def join(self, b: dict, scope: Scope, before: list) -> list[RangeItem]:
        left = self.from_item(b["larg"], scope, before)
        right = self.from_item(b["rarg"], scope, list(before) + left)
        items = left + right
        jscope = Scope(items, scope.parent, scope.ctes)
        using = _names(b.get("usingClause"))
        if b.get("isNatural"):
            lnames = {c.name for it in left for c in it.cols}
            using = [c.name for it in right for c in it.cols if c.name in lnames]
        merged: dict[str, frozenset] = {}
        for name in using:
            src = EMPTY
            for side in (left, right):
                hit = self._lookup_in(name, side)
                if hit is None:
                    self.fail(f"JOIN USING column {name} not found on both sides")
                else:
                    src |= hit
            merged[name] = src
            self.use(src, JOIN)
        if b.get("quals"):
            self.expr(b["quals"], jscope, JOIN)
        jua = b.get("join_using_alias")
        out = list(items)
        if b.get("alias"):
            cols = [Out(n, s) for n, s in merged.items()]
            for it in items:
                cols.extend(c for c in it.cols if c.name not in merged)
            opens = [it.open_sources for it in items if it.open_sources is not None]
            op = frozenset().union(*opens) if opens else None
            self._rename(cols, b["alias"].get("colnames"), "join")
            out = [RangeItem(b["alias"].get("aliasname"), cols, None, op)]
        if jua:
            out.append(RangeItem(jua.get("aliasname"), [Out(n, s) for n, s in merged.items()]))
        return out

    def _lookup_in(self, name: str, items: list) -> frozenset | None:
        found = None
        for it in items:
            s = it.lookup(name)
            if s is not None:
                found = s if found is None else found | s
        return found

    # -- column references -------------------------------------------------
    def _items_named(self, quals: list, scope: Scope) -> list[RangeItem]:
        """Items matching a qualifier (t, schema.t or db.schema.t), nearest level first."""
        if len(quals) == 3:
            quals = quals[1:]   # database name: PostgreSQL rejects any but the current one
        s = scope
        while s is not None:
            hits = [it for it in s.items if it.refname == quals[-1]
                    and (len(quals) == 1 or it.schema == quals[0])]
            if hits:
                return hits
            s = s.parent
        return []

    def _lookup_column(self, name: str, scope: Scope) -> frozenset | None:
        """Unqualified column: nearest level with a match; items whose columns are
        unknown (record functions) match anything and do not stop the search."""
        found = None
        s = scope
        while s is not None:
            exact = None
            opened = None
            for it in s.items:
                hit = None
                for c in it.cols:
                    if c.name == name:
                        hit = c.sources if hit is None else hit | c.sources
                if hit is None and it.system is not None:
                    hit = _system_column(it.system, name)
                if hit is not None:
                    exact = hit if exact is None else exact | hit
                elif it.open_sources is not None:
                    opened = it.open_sources if opened is None else opened | it.open_sources
            if exact is not None:
                return exact if found is None else found | exact
            if opened is not None:
                found = opened if found is None else found | opened
            s = s.parent
        return found

    def column_ref(self, cr: dict, scope: Scope, usages: frozenset) -> frozenset:
        fields = cr.get("fields", [])
        star = bool(fields) and "A_Star" in fields[-1]
        names = [_sval(f) for f in (fields[:-1] if star else fields)]
        if any(n is None for n in names):
            return self.fail("unexpected field in column reference")
        whole = usages | {Usage.WHOLE_ROW}
        if not names:      # bare * inside an expression (e.g. ROW(*)): every item
            items = scope.items
            if not items:
                return self.fail("* with no FROM items")
            return self.use(frozenset().union(*(it.all_sources() for it in items)), whole)
        if star:
            items = self._items_named(names, scope)
            if items:
                return self.use(frozenset().union(*(it.all_sources() for it in items)), whole)
            return self._composite_column(names, scope, whole)
        if len(names) == 1:
            src = self._lookup_column(names[0], scope)
            if src is not None:
                return self.use(src, usages)
            items = self._items_named(names, scope)
            if items:   # whole-row reference: SELECT t FROM t, row_to_json(t), t::text
                return self.use(frozenset().union(*(it.all_sources() for it in items)), whole)
            return self.fail(f"column {names[0]} cannot be resolved")
        # qualified: [db.][schema.]table.column, else composite column.field
        for cut in range(len(names) - 1, 0, -1):
            quals, rest = names[:cut], names[cut:]
            if len(quals) > 3:
                continue
            items = self._items_named(quals, scope)
            if not items:
                continue
            src = EMPTY
            hit = False
            for it in items:
                s = it.lookup(rest[0])
                if s is not None:
                    src |= s
                    hit = True
            if hit:
                return self.use(src, usages)
            return self.fail(f"column {'.'.join(names)} cannot be resolved")
        return self._composite_column(names, scope, usages)

    def _composite_column(self, names: list, scope: Scope, usages: frozenset) -> frozenset:
        """``col.field`` / ``col.*`` where col is a composite-typed column: the
        field's value derives from the whole column."""
        src = self._lookup_column(names[0], scope)
        if src is None:
            return self.fail(f"column {'.'.join(names)} cannot be resolved")
        return self.use(src, usages)

    # -- expressions -----------------------------------------------------
    def expr(self, node: dict | None, scope: Scope, usages: frozenset, node_type: str | None = None) -> frozenset:
        """Walk one expression node; return the base columns its value derives from."""
        if not node:
            return EMPTY
        if node_type is not None:
            kind, b = node_type, node
        else:
            if len(node) != 1:
                return self.fail("malformed expression node")
            (kind, b), = node.items()
        h = _EXPR.get(kind)
        if h is not None:
            return h(self, b, scope, usages)
        if kind in _TRANSPARENT:
            return self._children(b, scope, usages)
        if kind in _LEAVES:
            return EMPTY
        return self.fail(f"expression node {kind} is not modelled")

    def _children(self, b: dict, scope: Scope, usages: frozenset) -> frozenset:
        src = EMPTY
        for k, v in b.items():
            if isinstance(v, dict):
                if len(v) == 1 and next(iter(v)) in _ALL_NODE_TYPES:
                    src |= self.expr(v, scope, usages)
                elif k == "over":
                    self.window_def(v, scope)
                elif v:
                    # a struct stored without its type wrapper (JsonOutput,
                    # JsonFormat, TypeName, ...): its fields are walked the same way
                    src |= self._children(v, scope, usages)
            elif isinstance(v, list):
                for e in v:
                    if isinstance(e, dict) and e:
                        src |= self.expr(e, scope, usages)
        return src

    def _x_columnref(self, b, scope, usages):
        return self.column_ref(b, scope, usages)

    def _x_param(self, b, scope, usages):
        n = b.get("number", 0)
        if n > self.param_max:
            self.param_max = n
        return EMPTY

    def _x_aexpr(self, b, scope, usages):
        name = _names(b.get("name"))
        if len(name) > 1 and name[0] != "pg_catalog":
            self.fail(f"operator {'.'.join(name)} outside pg_catalog: its function is not in the live schema")
        src = EMPTY
        for k in ("lexpr", "rexpr"):
            v = b.get(k)
            if isinstance(v, list):
                for e in v:
                    src |= self.expr(e, scope, usages)
            elif v:
                src |= self.expr(v, scope, usages)
        return src

    def _x_typecast(self, b, scope, usages):
        tn = _names(b.get("typeName", {}).get("names"))
        arg = b.get("arg", {})
        if tn and tn[-1] in fnres.REG_TYPES:
            if "A_Const" in arg:
                self.literal_dependent = True
                self.add_dynamic(f"string literal cast to {tn[-1]} names an object")
            elif "ParamRef" in arg:
                self.add_dynamic(f"parameter cast to {tn[-1]} names an object")
        return self.expr(arg, scope, usages)

    def _x_case(self, b, scope, usages):
        src = self.expr(b.get("arg"), scope, PREDICATE) if b.get("arg") else EMPTY
        for w in b.get("args", ()):
            cw = w.get("CaseWhen")
            if cw is None:
                self.fail("unexpected node in CASE")
                continue
            # the condition decides which branch is output: a predicate, and
            # part of what the value derives from
            src |= self.expr(cw.get("expr"), scope, PREDICATE)
            src |= self.expr(cw.get("result"), scope, usages)
        if b.get("defresult"):
            src |= self.expr(b["defresult"], scope, usages)
        return src

    def _x_sublink(self, b, scope, usages):
        src = EMPTY
        if b.get("testexpr"):
            src |= self.expr(b["testexpr"], scope, usages | PREDICATE)
        name = _names(b.get("operName"))
        if len(name) > 1 and name[0] != "pg_catalog":
            self.fail(f"operator {'.'.join(name)} outside pg_catalog")
        q = b.get("subselect", {})
        if "SelectStmt" not in q:
            return self.fail("sublink without a SELECT")
        t = b.get("subLinkType", "")
        inner_usages = usages if t in ("EXPR_SUBLINK", "ARRAY_SUBLINK", "MULTIEXPR_SUBLINK") else usages | PREDICATE
        outs = self.select(q["SelectStmt"], scope, inner_usages)
        for o in outs:
            src |= o.sources
        return src

    def _x_funccall(self, b, scope, usages):
        names = _names(b.get("funcname"))
        args = b.get("args", ())
        # functional notation: ssn(c) means c.ssn when c is a FROM item and no
        # function ssn(record) exists (PostgreSQL tries the function first)
        if len(names) == 1 and len(args) == 1 and not b.get("over") and not b.get("agg_star"):
            hit = self._functional_column(names[0], args[0].get("ColumnRef"), scope)
            if hit is not None and not fnres.candidates(self.schema, names, self.search_path):
                # PostgreSQL reads the argument as a whole-row value first (its
                # privilege check asks for every column): so do we
                self.expr(args[0], scope, OTHER)
                return self.use(hit, usages)
        cands = fnres.candidates(self.schema, names, self.search_path)
        fname = names[-1] if names else ""
        if not cands:
            self.fail(f"function {'.'.join(names)} is not in the live schema")
        for f in cands:
            self.functions.add(f"{f.schema}.{f.name}")
            r = fnres.opaque_reason(f)
            if r:
                self.fail(r)
        if fname in fnres.SETTING_FUNCTIONS:
            self.add_dynamic(f"{fname}() changes a setting")
        agg = bool(b.get("over") or b.get("agg_order") or b.get("agg_filter") or b.get("agg_star")
                   or b.get("agg_distinct") or b.get("agg_within_group")) or fnres.is_aggregate_or_window(cands)
        arg_usages = usages | {Usage.AGGREGATE} if agg else usages
        src = EMPTY
        reg_args = {i for f in cands for i, t in enumerate(f.arg_types) if t in fnres.REG_TYPES}
        for i, a in enumerate(args):
            if i in reg_args:
                if "A_Const" in a:
                    self.literal_dependent = True
                    self.add_dynamic(f"string literal passed as {fname}() object name")
                elif "ParamRef" in a:
                    self.add_dynamic(f"parameter passed as {fname}() object name")
            src |= self.expr(a, scope, arg_usages)
        for sb in b.get("agg_order", ()):
            srt = sb.get("SortBy")
            if srt is None:
                self.fail("unexpected node in aggregate ORDER BY")
                continue
            src |= self.expr(srt.get("node"), scope, arg_usages | GROUP_ORDER)
        if b.get("agg_filter"):
            src |= self.expr(b["agg_filter"], scope, PREDICATE | {Usage.AGGREGATE})
        if b.get("over"):
            self.window_def(b["over"], scope)
        return src

    def _functional_column(self, name: str, cr: dict | None, scope: Scope) -> frozenset | None:
        if cr is None:
            return None
        f = cr.get("fields", [])
        star = bool(f) and "A_Star" in f[-1]
        quals = [_sval(x) for x in (f[:-1] if star else f)]
        if not quals or None in quals:
            return None
        if not star and (len(quals) != 1 or self._lookup_column(quals[0], scope) is not None):
            return None     # a column, not a row
        hit = None
        for it in self._items_named(quals, scope):
            s = it.lookup(name)
            if s is not None:
                hit = s if hit is None else hit | s
        return hit

    def window_def(self, wd: dict, scope: Scope, usages: frozenset = EMPTY) -> frozenset:
        """PARTITION BY / ORDER BY of a window: grouping and ordering; the
        window function's value is not derived from them."""
        src = EMPTY
        for e in wd.get("partitionClause", ()):
            src |= self.expr(e, scope, usages | GROUP_ORDER)
        for sb in wd.get("orderClause", ()):
            srt = sb.get("SortBy")
            if srt is None:
                self.fail("unexpected node in window ORDER BY")
                continue
            src |= self.expr(srt.get("node"), scope, usages | GROUP_ORDER)
        for k in ("startOffset", "endOffset"):
            if wd.get(k):
                self.expr(wd[k], scope, OTHER)
        return src

    def _x_indirection(self, b, scope, usages):
        src = self.expr(b.get("arg"), scope, usages)
        for ind in b.get("indirection", ()):
            if "A_Indices" in ind:
                self._children(ind["A_Indices"], scope, OTHER)
            elif "String" in ind or "A_Star" in ind:
                pass
            else:
                self.fail("unexpected indirection")
        return src

    def _x_multiassign(self, b, scope, usages):
        return self.expr(b.get("source"), scope, usages)

    def _x_rowexpr(self, b, scope, usages):
        src = EMPTY
        for a in b.get("args", ()):
            src |= self.expr(a, scope, usages)
        return src

    def _x_json_array_query(self, b, scope, usages):
        q = b.get("query", {})
        if "SelectStmt" not in q:
            return self.fail("JSON_ARRAY(query) without a SELECT")
        src = EMPTY
        for o in self.select(q["SelectStmt"], scope, usages):
            src |= o.sources
        return src

    def _x_json_agg(self, b, scope, usages):
        agg = usages | {Usage.AGGREGATE}
        src = EMPTY
        for k, v in b.items():
            if k == "constructor":
                c = v
                for sb in c.get("agg_order", ()) or ():
                    self.expr(sb.get("SortBy", {}).get("node"), scope, agg | GROUP_ORDER)
                if c.get("agg_filter"):
                    self.expr(c["agg_filter"], scope, PREDICATE | {Usage.AGGREGATE})
                if c.get("over"):
                    self.window_def(c["over"], scope)
            elif isinstance(v, dict) and v:
                src |= self._children(v, scope, agg) if next(iter(v)) not in _ALL_NODE_TYPES \
                    else self.expr(v, scope, agg)
        return src

    def _x_currentof(self, b, scope, usages):
        self.add_dynamic(f"WHERE CURRENT OF {b.get('cursor_name')}")
        return EMPTY

    # -- INSERT / UPDATE / DELETE / MERGE --------------------------------
    def modify(self, kind: str, b: dict, parent: Scope | None, ret_usages: frozenset) -> list[Out]:
        scope = Scope([], parent)
        self.with_clause(b.get("withClause"), scope)
        rv = b.get("relation", {})
        target = self.target_item(rv, scope, inh=(kind != "InsertStmt") and rv.get("inh", False))
        if kind == "InsertStmt":
            return self._insert(b, scope, target, ret_usages)
        if kind == "UpdateStmt":
            for it in b.get("fromClause", ()):
                scope.items.extend(self.from_item(it, scope, scope.items))
            scope.items.insert(0, target)
            self._set_list(b.get("targetList", ()), scope, target)
            if b.get("whereClause"):
                self.expr(b["whereClause"], scope, PREDICATE)
            self._unexpected(b, _UPDATE_FIELDS, "UPDATE")
        elif kind == "DeleteStmt":
            for it in b.get("usingClause", ()):
                scope.items.extend(self.from_item(it, scope, scope.items))
            scope.items.insert(0, target)
            if b.get("whereClause"):
                self.expr(b["whereClause"], scope, PREDICATE)
            self._unexpected(b, _DELETE_FIELDS, "DELETE")
        else:
            self._merge(b, scope, target)
        return self._returning(b, scope, target, ret_usages)

    def target_item(self, rv: dict, scope: Scope, inh: bool) -> RangeItem:
        self.names_seen.add(rv.get("relname", ""))
        rel = self.resolve_relation(rv)
        if rel is None:
            self.fail(f"target relation {rv.get('relname')} is not in the live schema")
            alias = rv.get("alias")
            return RangeItem(alias.get("aliasname") if alias else rv.get("relname"), [], None, EMPTY)
        item = self.relation_item(rel, inh, rv.get("alias"), writing=True)
        for s in item.all_sources():
            self.written.add(RelationRef(s.schema, s.table))
        self.written.add(rel.ref)
        return item

    def _written(self, item: RangeItem, name: str) -> frozenset:
        src = None
        for c in item.cols:
            if c.name == name:
                src = c.sources
        if src is None:
            return self.fail(f"written column {name} is not a column of {item.refname}")
        return self.use(src, WRITTEN)

    def _set_list(self, targets, scope: Scope, target: RangeItem) -> None:
        for t in targets:
            rt = t.get("ResTarget")
            if rt is None:
                self.fail("unexpected node in SET list")
                continue
            self._written(target, rt.get("name", ""))
            for ind in rt.get("indirection", ()):
                if "A_Indices" in ind:
                    self._children(ind["A_Indices"], scope, OTHER)
            if rt.get("val"):
                self.expr(rt["val"], scope, OTHER)

    def _insert(self, b: dict, scope: Scope, target: RangeItem, ret_usages) -> list[Out]:
        cols = b.get("cols")
        names = [c.get("ResTarget", {}).get("name", "") for c in cols] if cols else None
        src_outs: list[Out] = []
        if b.get("selectStmt"):
            q = b["selectStmt"]
            if "SelectStmt" not in q:
                self.fail("INSERT source is not a SELECT/VALUES")
            else:
                src_outs = self.select(q["SelectStmt"], scope, OTHER)
        if names is None:
            names = [c.name for c in target.cols][:max(len(src_outs), 0) or len(target.cols)]
        for n in names:
            self._written(target, n)
        for c in cols or ():
            for ind in c.get("ResTarget", {}).get("indirection", ()):
                if "A_Indices" in ind:
                    self._children(ind["A_Indices"], scope, OTHER)
        incoming = frozenset().union(*(o.sources for o in src_outs)) if src_outs else EMPTY
        scope.items.append(target)
        oc = b.get("onConflictClause")
        if oc:
            excluded = RangeItem("excluded", [Out(c.name, c.sources | incoming) for c in target.cols])
            cscope = Scope([target, excluded], scope.parent, scope.ctes)
            inf = oc.get("infer") or {}
            for ie in inf.get("indexElems", ()):
                el = ie.get("IndexElem", {})
                if el.get("name"):   # arbiter columns: a conflict reveals that a value exists
                    self.use(target.lookup(el["name"]) or self.fail(f"ON CONFLICT column {el['name']} not found"),
                             PREDICATE)
                if el.get("expr"):
                    self.expr(el["expr"], cscope, PREDICATE)
            if inf.get("whereClause"):
                self.expr(inf["whereClause"], cscope, PREDICATE)
            self._set_list(oc.get("targetList", ()), cscope, target)
            if oc.get("whereClause"):
                self.expr(oc["whereClause"], cscope, PREDICATE)
        self._unexpected(b, _INSERT_FIELDS, "INSERT")
        return self._returning(b, scope, target, ret_usages)

    def _merge(self, b: dict, scope: Scope, target: RangeItem) -> None:
        source = self.from_item(b.get("sourceRelation", {}), scope, [])
        scope.items.extend(source)
        scope.items.insert(0, target)
        if b.get("joinCondition"):
            self.expr(b["joinCondition"], scope, JOIN)
        for w in b.get("mergeWhenClauses", ()):
            mw = w.get("MergeWhenClause")
            if mw is None:
                self.fail("unexpected MERGE clause")
                continue
            if mw.get("condition"):
                self.expr(mw["condition"], scope, PREDICATE)
            ct = mw.get("commandType")
            if ct == "CMD_UPDATE":
                self._set_list(mw.get("targetList", ()), scope, target)
            elif ct == "CMD_INSERT":
                tl = mw.get("targetList")
                names = [t.get("ResTarget", {}).get("name", "") for t in tl] if tl else [c.name for c in target.cols]
                for n in names:
                    self._written(target, n)
                src_scope = Scope(source, scope.parent, scope.ctes)
                for v in mw.get("values", ()):
                    self.expr(v, src_scope, OTHER)
        self._unexpected(b, _MERGE_FIELDS, "MERGE")

    def _returning(self, b: dict, scope: Scope, target: RangeItem, usages: frozenset) -> list[Out]:
        rc = b.get("returningClause")
        exprs = rc.get("exprs", ()) if rc else b.get("returningList", ())
        if not exprs:
            return []
        old_name, new_name = "old", "new"
        for o in (rc or {}).get("options", ()):
            ro = o.get("ReturningOption", {})
            if ro.get("option") == "RETURNING_OPTION_OLD":
                old_name = ro.get("value", old_name)
            else:
                new_name = ro.get("value", new_name)
        extra = [RangeItem(old_name, list(target.cols)), RangeItem(new_name, list(target.cols))]
        rscope = Scope(list(scope.items) + extra, scope.parent, scope.ctes)
        return self.target_list(exprs, rscope, usages)


def _colname(val: dict) -> str:
    """PostgreSQL's FigureColname, roughly: the name an unaliased output gets."""
    (k, b), = val.items() if len(val) == 1 else (("", {}),)
    if k == "ColumnRef":
        f = b.get("fields", [])
        return (_sval(f[-1]) or "?column?") if f else "?column?"
    if k == "FuncCall":
        n = _names(b.get("funcname"))
        return n[-1] if n else "?column?"
    if k == "TypeCast":
        inner = _colname(b.get("arg", {}))
        if inner != "?column?":
            return inner
        tn = _names(b.get("typeName", {}).get("names"))
        return tn[-1] if tn else "?column?"
    if k == "A_Indirection":
        for ind in reversed(b.get("indirection", ())):
            if "String" in ind:
                return _sval(ind)
        return _colname(b.get("arg", {}))
    if k == "CaseExpr":
        return "case"
    if k == "SubLink" and b.get("subLinkType") == "EXPR_SUBLINK":
        tl = b.get("subselect", {}).get("SelectStmt", {}).get("targetList", [])
        if tl:
            rt = tl[0].get("ResTarget", {})
            return rt.get("name") or _colname(rt.get("val", {}))
    if k == "SubLink" and b.get("subLinkType") == "EXISTS_SUBLINK":
        return "exists"
    if k == "SubLink" and b.get("subLinkType") == "ARRAY_SUBLINK":
        return "array"
    if k == "A_ArrayExpr":
        return "array"
    if k == "RowExpr":
        return "row"
    if k == "CoalesceExpr":
        return "coalesce"
    if k == "MinMaxExpr":
        return "greatest" if b.get("op") == "IS_GREATEST" else "least"
    if k == "SQLValueFunction":
        return b.get("op", "?column?").replace("SVFOP_", "").lower()
    return "?column?"


_EXPR = {
    "ColumnRef": Walk._x_columnref,
    "ParamRef": Walk._x_param,
    "A_Expr": Walk._x_aexpr,
    "TypeCast": Walk._x_typecast,
    "CaseExpr": Walk._x_case,
    "SubLink": Walk._x_sublink,
    "FuncCall": Walk._x_funccall,
    "A_Indirection": Walk._x_indirection,
    "MultiAssignRef": Walk._x_multiassign,
    "RowExpr": Walk._x_rowexpr,
    "JsonArrayQueryConstructor": Walk._x_json_array_query,
    "CurrentOfExpr": Walk._x_currentof,
    "JsonObjectAgg": Walk._x_json_agg,
    "JsonArrayAgg": Walk._x_json_agg,
}
#: nodes whose children are plain expressions: walked generically
_TRANSPARENT = frozenset({
    "BoolExpr", "NullTest", "BooleanTest", "CoalesceExpr", "MinMaxExpr", "A_ArrayExpr",
    "CollateClause", "XmlExpr", "XmlSerialize", "NamedArgExpr", "GroupingFunc", "ResTarget",
    "A_Indices", "JsonValueExpr", "JsonKeyValue", "JsonObjectConstructor",
    "JsonArrayConstructor", "JsonFuncExpr", "JsonIsPredicate", "JsonParseExpr",
    "JsonScalarExpr", "JsonSerializeExpr", "JsonBehavior", "JsonOutput", "JsonArgument",
    "JsonAggConstructor", "JsonTablePathSpec", "List",
    "CaseWhen", "SortBy",
})
#: nodes that carry no column data
_LEAVES = frozenset({
    "A_Const", "SQLValueFunction", "SetToDefault", "TypeName", "String", "Integer",
    "Float", "Boolean", "BitString", "JsonFormat", "A_Star", "MergeSupportFunc",
})
_ALL_NODE_TYPES = frozenset(_EXPR) | _TRANSPARENT | _LEAVES | {"WindowDef", "GroupingSet"}


def _x_windowdef(self, b, scope, usages):
    return self.window_def(b, scope, usages)


_EXPR["WindowDef"] = _x_windowdef

_SELECT_FIELDS = frozenset({
    "distinctClause", "targetList", "fromClause", "whereClause", "groupClause", "groupDistinct",
    "havingClause", "windowClause", "sortClause", "limitOffset", "limitCount", "limitOption",
    "lockingClause", "withClause", "op", "all", "larg", "rarg", "intoClause",
})
_SETOP_FIELDS = frozenset({"op", "all", "larg", "rarg", "sortClause", "limitOffset", "limitCount",
                           "limitOption", "withClause", "lockingClause", "intoClause"})
_VALUES_FIELDS = frozenset({"valuesLists", "sortClause", "limitOffset", "limitCount", "limitOption",
                            "withClause", "op", "intoClause"})
_INSERT_FIELDS = frozenset({"relation", "cols", "selectStmt", "onConflictClause", "returningClause",
                            "returningList", "withClause", "override"})
_UPDATE_FIELDS = frozenset({"relation", "targetList", "whereClause", "fromClause", "returningClause",
                            "returningList", "withClause"})
_DELETE_FIELDS = frozenset({"relation", "usingClause", "whereClause", "returningClause",
                            "returningList", "withClause"})
_MERGE_FIELDS = frozenset({"relation", "sourceRelation", "joinCondition", "mergeWhenClauses",
                           "returningClause", "returningList", "withClause"})

_CHILDREN: dict = {}
_VIEW_MEMO: dict = {}
