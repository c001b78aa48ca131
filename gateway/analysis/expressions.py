"""Column references and expressions (mixin of ``queries.Walk``; pure).

``expr(node, scope, usages)`` walks one expression node, records ``usages`` for
every base column it touches and returns the base columns its value derives
from. Node types are handled explicitly (``_EXPR``), walked generically when all
their children are plain expressions (``_TRANSPARENT``) or ignored when they
carry no column data (``_LEAVES``); any other node type is unknown.
"""
from __future__ import annotations

from gateway.analysis import functions as fnres
from gateway.analysis.facts import Usage
from gateway.analysis.scope import (  # noqa: F401
    EMPTY, GROUP_ORDER, JOIN, OTHER, PREDICATE, RETURNED, WRITTEN, Out, RangeItem, Scope, _names,
    _sval, _system_column)


class ExpressionsMixin:
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

    def operators(self, name: list[str], kind: str = "AEXPR_OP") -> None:
        """An operator call runs the operator's function: one outside pg_catalog
        (an extension's, a DBA's) is judged like a call of that function (a SQL or
        SECURITY DEFINER one is opaque). BETWEEN, IN, NULLIF and IS DISTINCT FROM
        run the comparison operators PostgreSQL rewrites them to."""
        if not name or (len(name) > 1 and name[-2] == "pg_catalog"):
            return
        names = [name]
        if kind.startswith("AEXPR_BETWEEN") or kind.startswith("AEXPR_NOT_BETWEEN"):
            names = [name[:-1] + [op] for op in ("<=", ">=", "<", ">")]
        elif kind in ("AEXPR_IN", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT", "AEXPR_NULLIF"):
            names = [name[:-1] + [op] for op in {name[-1], "=", "<>"}]
        for n in names:
            for f in fnres.operator_candidates(self.schema, n, self.search_path):
                r = fnres.opaque_reason(f)
                if r:
                    self.functions.add(f"{f.schema}.{f.name}")
                    self.fail(r)

    def _x_aexpr(self, b, scope, usages):
        name = _names(b.get("name"))
        if len(name) > 1 and name[0] != "pg_catalog":
            self.fail(f"operator {'.'.join(name)} outside pg_catalog: its function is not in the live schema")
        self.operators(name, b.get("kind", "AEXPR_OP"))
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
        self.operators(name or (["="] if b.get("subLinkType") in ("ANY_SUBLINK", "ALL_SUBLINK") else []))
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
            if srt.get("useOp"):
                self.operators(_names(srt["useOp"]))
            src |= self.expr(srt.get("node"), scope, arg_usages | GROUP_ORDER)
        if b.get("agg_filter"):
            src |= self.expr(b["agg_filter"], scope, PREDICATE | {Usage.AGGREGATE})
        if b.get("over"):
            self.window_def(b["over"], scope)
        if src and any(f.returns_set for f in cands):
            # a set-returning function yields as many rows as its arguments say
            self.row_sources.update(src)
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
            if srt.get("useOp"):
                self.operators(_names(srt["useOp"]))
            src |= self.expr(srt.get("node"), scope, usages | GROUP_ORDER)
        for k in ("startOffset", "endOffset"):
            if wd.get(k):
                # the frame decides which rows the window function sees
                self.expr(wd[k], scope, usages | GROUP_ORDER)
        return src

    def _x_indirection(self, b, scope, usages):
        src = self.expr(b.get("arg"), scope, usages)
        for ind in b.get("indirection", ()):
            if "A_Indices" in ind:
                # the subscript chooses the element: the value derives from it too
                # ((ARRAY['0', ..., '9'])[substr(ssn, 8, 1)::int + 1] is a digit of
                # the SSN; a view's lineage that left it out left that column unmasked)
                src |= self._children(ind["A_Indices"], scope, usages | OTHER)
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
    "ColumnRef": ExpressionsMixin._x_columnref,
    "ParamRef": ExpressionsMixin._x_param,
    "A_Expr": ExpressionsMixin._x_aexpr,
    "TypeCast": ExpressionsMixin._x_typecast,
    "CaseExpr": ExpressionsMixin._x_case,
    "SubLink": ExpressionsMixin._x_sublink,
    "FuncCall": ExpressionsMixin._x_funccall,
    "A_Indirection": ExpressionsMixin._x_indirection,
    "MultiAssignRef": ExpressionsMixin._x_multiassign,
    "RowExpr": ExpressionsMixin._x_rowexpr,
    "JsonArrayQueryConstructor": ExpressionsMixin._x_json_array_query,
    "CurrentOfExpr": ExpressionsMixin._x_currentof,
    "JsonObjectAgg": ExpressionsMixin._x_json_agg,
    "JsonArrayAgg": ExpressionsMixin._x_json_agg,
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
