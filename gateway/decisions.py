"""Analyzer facts -> policy request (pure glue between gateway.analysis and policies).

``action_of(facts)`` maps a statement kind to the policy Action; ``build_request``
fills a ``DecisionRequest`` with every touched column (category and sensitivity
from the catalog), every catalogued column of every touched relation (the mask
plan covers them all) and the functions that run code we cannot see into.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from catalog.model import Catalog, ColumnRef, RelationRef
from gateway.analysis.facts import StatementFacts, StatementKind
from gateway.schema import LiveSchema
from policies.model import (Action, Decision, DecisionRequest, Effect, GrantView, MaskPlan, Policy,
                            Principal, RequestContext, TouchedColumn)

_ACTIONS = {
    StatementKind.SELECT: Action.READ,
    StatementKind.INSERT: Action.WRITE, StatementKind.UPDATE: Action.WRITE,
    StatementKind.MERGE: Action.WRITE, StatementKind.COPY_FROM: Action.WRITE,
    StatementKind.DELETE: Action.DELETE,
    StatementKind.COPY_TO: Action.EXPORT,
    StatementKind.DDL: Action.DDL, StatementKind.UTILITY: Action.DDL,
    StatementKind.CALL: Action.CALL, StatementKind.DO: Action.CALL,
    StatementKind.SESSION: Action.SESSION,
    # LISTEN receives whatever triggers broadcast (row_to_json(NEW) of PII rows):
    # it is a session-level channel, not a read we could mask
    StatementKind.LISTEN: Action.SESSION,
    # statements that read no relation: judged as reads of nothing (allowed unless a rule says otherwise)
    StatementKind.SET: Action.READ, StatementKind.TRANSACTION: Action.READ,
    StatementKind.EMPTY: Action.READ,
    StatementKind.UNKNOWN: Action.UNKNOWN,
}
_WRAPPERS = (StatementKind.EXPLAIN, StatementKind.CURSOR, StatementKind.PREPARE)

#: function schemas whose code we trust not to read tables behind the analyzer's back
_TRUSTED_FUNCTION_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_TRUSTED_LANGUAGES = frozenset({"internal", "c"})


def action_of(facts: StatementFacts) -> Action:
    """The policy action of a statement. EXPLAIN ANALYZE runs its statement: the
    inner's action; EXPLAIN alone plans it: a read of the inner's relations.
    DECLARE/PREPARE (and EXECUTE/FETCH when the analyzer resolved them): the inner's."""
    if facts.kind in _WRAPPERS:
        inner = facts.inner
        if inner is None:
            # FETCH/MOVE/CLOSE/EXECUTE/DEALLOCATE of something decided when it was declared
            return Action.UNKNOWN if facts.is_unknown else Action.READ
        inner_action = action_of(inner)
        if facts.kind is StatementKind.EXPLAIN and not _explain_analyze(facts):
            return Action.UNKNOWN if inner_action is Action.UNKNOWN else Action.READ
        return inner_action
    action = _ACTIONS.get(facts.kind, Action.UNKNOWN)
    if action is Action.READ and facts.relations_written:
        # WITH u AS (UPDATE ... RETURNING ...) SELECT ...: a data-modifying CTE writes
        return Action.WRITE
    return action


def _explain_analyze(facts: StatementFacts) -> bool:
    text = facts.command.upper()
    if "ANALYZE" in text or "ANALYSE" in text:
        return True
    if facts.command:
        return False
    # no command detail from the analyzer: look at the options ourselves
    head = facts.sql.split(facts.inner.sql, 1)[0] if facts.inner is not None and facts.inner.sql else facts.sql
    return "ANALY" in head.upper()


def effective_facts(facts: StatementFacts) -> StatementFacts:
    """The facts whose columns/relations matter: the inner statement of EXPLAIN,
    DECLARE and PREPARE (the wrapper's own unknown still counts)."""
    if facts.kind in _WRAPPERS and facts.inner is not None:
        return effective_facts(facts.inner)
    return facts


def build_request(facts: StatementFacts, catalog: Catalog, principal: Principal,
                  context: RequestContext = RequestContext(), grants: Iterable[GrantView] = (),
                  *, schema: LiveSchema | None = None) -> DecisionRequest:
    """The DecisionRequest for one statement. With ``schema``, functions that are
    SECURITY DEFINER or written in SQL/PL languages outside pg_catalog are listed as
    risky (they can read PII the analyzer cannot see)."""
    inner = effective_facts(facts)
    unknown = facts.unknown or inner.unknown
    touched = tuple(_touched(u.column, frozenset(x.value for x in u.usages), catalog)
                    for u in inner.columns)
    relations = frozenset(inner.relations_read | inner.relations_written)
    index = _catalog_index(catalog)
    relation_columns = tuple(c for rel in sorted(relations) for c in index.get(rel, ()))
    risky = _risky_functions(inner.functions | facts.functions, schema) if schema is not None else frozenset()
    return DecisionRequest(
        principal=principal, action=action_of(facts), columns=touched, relations=relations,
        functions=frozenset(inner.functions | facts.functions), statement_kind=facts.kind.value,
        fingerprint=facts.fingerprint, unknown=unknown, context=context, grants=tuple(grants),
        relation_columns=relation_columns, risky_functions=risky)


_CATALOG_INDEX: dict[int, tuple[object, dict[RelationRef, tuple[TouchedColumn, ...]]]] = {}


def _catalog_index(catalog: Catalog) -> dict[RelationRef, tuple[TouchedColumn, ...]]:
    """Catalogued columns by relation, computed once per catalog value (the hot path
    builds a request per statement; the catalog changes only on reload)."""
    import weakref
    hit = _CATALOG_INDEX.get(id(catalog))
    if hit is not None and hit[0]() is catalog:
        return hit[1]
    index: dict[RelationRef, list[TouchedColumn]] = {}
    for ref in sorted(catalog.entries):
        e = catalog.entries[ref]
        index.setdefault(ref.relation, []).append(TouchedColumn(ref, frozenset(), e.category, int(e.sensitivity)))
    frozen = {k: tuple(v) for k, v in index.items()}
    key = id(catalog)
    try:
        _CATALOG_INDEX[key] = (weakref.ref(catalog, lambda _r, k=key: _CATALOG_INDEX.pop(k, None)), frozen)
    except TypeError:
        pass
    return frozen


def _touched(col: ColumnRef, usages: frozenset[str], catalog: Catalog) -> TouchedColumn:
    e = catalog.get(col)
    if e is None:
        return TouchedColumn(col, usages)
    return TouchedColumn(col, usages, e.category, int(e.sensitivity))


def _risky_functions(names: Iterable[str], schema: LiveSchema) -> frozenset[str]:
    out = set()
    for name in names:
        sch, _, bare = name.rpartition(".")
        candidates = [f for f in schema.functions_named(bare) if not sch or f.schema == sch]
        for f in candidates:
            if f.security_definer or (f.schema not in _TRUSTED_FUNCTION_SCHEMAS
                                      and f.language not in _TRUSTED_LANGUAGES):
                out.add(name)
    return frozenset(out)


def relations_of(facts: StatementFacts) -> frozenset[RelationRef]:
    inner = effective_facts(facts)
    return frozenset(inner.relations_read | inner.relations_written)


@dataclass(frozen=True, slots=True)
class Enforcement:
    """What the gateway does with one statement: the decision, the request it was
    made from, and the SQL to forward (the rewritten text for MASK, the statement
    itself for ALLOW, None when nothing is forwarded: APPROVE or DENY)."""
    decision: Decision
    request: DecisionRequest
    sql: str | None
    notes: tuple[str, ...] = ()


def enforce(facts: StatementFacts, catalog: Catalog, schema: LiveSchema, policy: Policy,
            principal: Principal, context: RequestContext = RequestContext(),
            grants: Iterable[GrantView] = (), search_path: Iterable[str] | None = None,
            *, pseudonym_installed: bool | None = None) -> Enforcement:
    """build_request + decide + (for MASK) rewrite, failing closed: a statement the
    rewriter cannot mask with certainty becomes a DENY (rule ``rewrite:cannot-mask``)."""
    from gateway.rewrite import RewriteError, rewrite
    from policies.decide import decide

    request = build_request(facts, catalog, principal, context, grants, schema=schema)
    decision = decide(request, policy)
    if decision.effect is Effect.ALLOW:
        return Enforcement(decision, request, facts.sql)
    if decision.effect is not Effect.MASK:
        return Enforcement(decision, request, None)
    path = tuple(search_path) if search_path is not None else schema.search_path
    try:
        result = rewrite(facts.sql, decision.mask or MaskPlan(), schema, path,
                         pseudonym_installed=pseudonym_installed)
    except RewriteError as e:
        denied = replace(decision, effect=Effect.DENY, rule="rewrite:cannot-mask",
                         reasons=decision.reasons + (f"the statement cannot be masked with certainty: {e}",),
                         mask=None, sqlstate="42501",
                         message=(f"permission denied by piigate: the statement reads PII that must be masked "
                                  f"(rule \"{decision.rule}\") but cannot be masked with certainty ({e}). "
                                  "Rewrite it more simply (plain SELECT ... FROM the tables), or request access: "
                                  "SET piigate.reason = '<ticket>' and ask an approver."))
        return Enforcement(denied, request, None)
    return Enforcement(decision, request, result.sql, result.notes)
