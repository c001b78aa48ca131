"""INSERT / UPDATE / DELETE / MERGE targets, SET lists, ON CONFLICT, RETURNING
(mixin of ``queries.Walk``; pure)."""
from __future__ import annotations

from catalog.model import ColumnRef, RelationRef
from gateway.analysis.facts import Usage
from gateway.analysis.scope import (  # noqa: F401
    EMPTY, GROUP_ORDER, JOIN, OTHER, PREDICATE, RETURNED, WRITTEN, Out, RangeItem, Scope, _names,
    _sval, _system_column)


class DmlMixin:
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
        for r in [rel] + (self.descendants(rel.ref) if inh else []):
            if getattr(r, "write_rules", False):
                # CREATE RULE ... ON INSERT TO t DO ALSO SELECT ssn FROM customers: the
                # write runs (and returns the result of) commands it does not say
                self.fail(f"{r.ref} has rules that run other commands on a write")
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
        """UPDATE's SET, ON CONFLICT DO UPDATE SET, MERGE's UPDATE SET: an existing
        row changes, so the constraints on a changed column compare its new value
        with the row's other columns (and every UPDATE evaluates a NOT VALID CHECK):
        whether the statement fails says something about those values, which
        therefore count as a predicate (CHECK (created_at > dob) makes
        UPDATE ... SET created_at = d an oracle on dob)."""
        self._constrained(target.all_sources(), "")
        for t in targets:
            rt = t.get("ResTarget")
            if rt is None:
                self.fail("unexpected node in SET list")
                continue
            written = self._written(target, rt.get("name", ""))
            if written:
                for src in written:
                    self._constrained((src,), src.column)
            for ind in rt.get("indirection", ()):
                if "A_Indices" in ind:
                    self._children(ind["A_Indices"], scope, OTHER)
            if rt.get("val"):
                self.expr(rt["val"], scope, OTHER)

    def _constrained(self, sources, key: str) -> None:
        """The columns that constraints compare with ``key`` (the column of each of
        ``sources``; "" for NOT VALID CHECK constraints) in the tables ``sources``
        belong to (the base tables of a view column, a parent's children) count as
        a predicate."""
        seen = set()
        for src in sources:
            if (src.schema, src.table) in seen:
                continue
            seen.add((src.schema, src.table))
            rel = self.schema.relation(RelationRef(src.schema, src.table))
            others = rel.constrained_with.get(key) if rel is not None and rel.constrained_with else None
            if others:
                self.use(frozenset(ColumnRef(src.schema, src.table, o) for o in others), PREDICATE)

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



_INSERT_FIELDS = frozenset({"relation", "cols", "selectStmt", "onConflictClause", "returningClause",
                            "returningList", "withClause", "override"})
_UPDATE_FIELDS = frozenset({"relation", "targetList", "whereClause", "fromClause", "returningClause",
                            "returningList", "withClause"})
_DELETE_FIELDS = frozenset({"relation", "usingClause", "whereClause", "returningClause",
                            "returningList", "withClause"})
_MERGE_FIELDS = frozenset({"relation", "sourceRelation", "joinCondition", "mergeWhenClauses",
                           "returningClause", "returningList", "withClause"})

