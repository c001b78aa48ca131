"""Query walker over pglast's JSON parse tree (pure): relations, views, CTEs,
SELECT, FROM items. Expressions are in ``expressions.py``, DML targets in ``dml.py``.

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

import orjson

from catalog.model import ColumnRef, RelationRef
from gateway.analysis import functions as fnres
from gateway.analysis.dml import DmlMixin
from gateway.analysis.expressions import ExpressionsMixin, _colname
from gateway.analysis.facts import Usage
from gateway.analysis.scope import (  # noqa: F401 - names re-exported for statements/lineage
    EMPTY, GROUP_ORDER, JOIN, OTHER, PREDICATE, RETURNED, SENSITIVE_SYSTEM_RELATIONS, SYSTEM_COLUMNS,
    VIEW_DEPTH_LIMIT, VIEW_SEARCH_PATH, WRITTEN, Cte, Out, RangeItem, Scope, _names, _relnames, _sval,
    _system_column)
from gateway.schema import MATVIEW, VIEW, LiveSchema, Relation


class Walk(ExpressionsMixin, DmlMixin):
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
        #: base columns that decide how many rows a set-returning function yields
        #: (generate_series(1, substr(ssn, 10, 2)::int) in FROM or in a select list):
        #: not a usage of their own, but part of a view's row lineage
        self.row_sources: set[ColumnRef] = set()

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
        ancestors = self.ancestors(rel)
        family.extend(ancestors)
        for r in family:
            if r.row_filter:
                # row-level security: its policies choose the rows over clear values
                self.use(frozenset(r.row_filter), PREDICATE)
        for anc in ancestors:
            # a partition holds the rows whose partition key lies in its bound: reading
            # one filters its ancestors' rows by that key (customers_by_dob_1960s says
            # when its customers were born)
            for k in anc.partition_key:
                keyed = {ColumnRef(anc.ref.schema, anc.ref.name, k)}
                if rel.column(k) is not None:
                    keyed.add(ColumnRef(rel.ref.schema, rel.ref.name, k))
                self.use(frozenset(keyed), PREDICATE)
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
        self.row_sources |= sub.row_sources
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
            if op != "SETOP_UNION" or not s.get("all"):
                # UNION, INTERSECT and EXCEPT compare whole rows: which rows (and how
                # many) come out depends on the values compared
                for o in outs:
                    self.use(o.sources, GROUP_ORDER)
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
            if b.get("useOp"):
                self.operators(_names(b["useOp"]))      # ORDER BY x USING <op>
            self._output_or_expr(b.get("node"), scope, outs, GROUP_ORDER)
        for k in ("limitCount", "limitOffset"):
            if s.get(k):
                # LIMIT/OFFSET decide which rows and how many exist: a filter
                self.expr(s[k], scope, PREDICATE)

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
            # the sampling arguments decide which rows exist: a filter
            for a in b.get("args", ()):
                self.expr(a, lat, PREDICATE)
            if b.get("repeatable"):
                self.expr(b["repeatable"], lat, PREDICATE)
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
                col_src = src
                for k in ("on_empty", "on_error"):
                    if jc.get(k):
                        # DEFAULT <expr> ON EMPTY/ERROR is the column's value when the path finds nothing
                        col_src = col_src | self.expr(jc[k], lat, OTHER, node_type="JsonBehavior")
                cols.append(Out(jc.get("name"), EMPTY if jc.get("coltype") == "JTC_FOR_ORDINALITY" else col_src))
        walk_cols(b.get("columns"))
        self.row_sources |= src       # the document decides how many rows there are
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
            src |= self.expr(ns, lat, OTHER)
        self.row_sources |= src       # the document and row path decide how many rows there are
        cols = []
        for c in b.get("columns", ()):
            tc = c.get("RangeTableFuncCol")
            if tc is None:
                self.fail("unexpected XMLTABLE column node")
                continue
            # a column's PATH is an expression (PATH 'concat("' || ssn || '")' yields the
            # SSN) and its DEFAULT is the value when the path finds nothing: both are
            # what the column's value derives from, not only the document
            col_src = src
            for k in ("colexpr", "coldefexpr"):
                if tc.get(k):
                    col_src = col_src | self.expr(tc[k], lat, OTHER)
            cols.append(Out(tc.get("colname"), EMPTY if tc.get("for_ordinality") else col_src))
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



_SELECT_FIELDS = frozenset({
    "distinctClause", "targetList", "fromClause", "whereClause", "groupClause", "groupDistinct",
    "havingClause", "windowClause", "sortClause", "limitOffset", "limitCount", "limitOption",
    "lockingClause", "withClause", "op", "all", "larg", "rarg", "intoClause",
})
_SETOP_FIELDS = frozenset({"op", "all", "larg", "rarg", "sortClause", "limitOffset", "limitCount",
                           "limitOption", "withClause", "lockingClause", "intoClause"})
_VALUES_FIELDS = frozenset({"valuesLists", "sortClause", "limitOffset", "limitCount", "limitOption",
                            "withClause", "op", "intoClause"})
_CHILDREN: dict = {}
_VIEW_MEMO: dict = {}
