"""``decide(request, policy) -> Decision``: pure, never raises.

How a decision is reached:

1. Rules that match the statement: principal (user name or role, ``*`` for
   anyone), action (``*`` for any) and ``when`` conditions (evaluated against
   ``request.context``; decide() never reads the clock).
2. An *unrestricted* rule (allow, actions ``*``, categories ``*``) means the
   principal is not under PII policy: everything passes, unknown included,
   unless another matching rule is more protective.
3. Otherwise the statement's parts are judged and the most protective wins:
   - unknown (analyzer could not be sure, or action unknown): ``defaults.unknown``;
   - dangerous functions (file/server access, dynamic SQL, SECURITY DEFINER or
     user-defined code, ``piigate.*``): ``defaults.dangerous_functions``;
   - statement-level rules (rules without an ``on`` selector) for the action,
     else the action's default (ddl, export, call, session) or ``non_pii``;
   - each catalogued column touched: the rules whose selector matches it, else the
     PII default of the action (read: ``pii_read``; write: ``write_pii``; delete:
     ``delete_pii``; export: ``export``; ...).
4. APPROVE is lifted to ALLOW by a grant of this principal for this action that is
   not expired, covers the statement (its fingerprint) or every catalogued
   column touched (by column or category), and was made on terms that approve's
   requirement accepts (``policies.model.grant_meets``: approver groups, quorum,
   TOTP, longest duration; a token's issuer counts as one approver). DENY is never lifted. A fingerprint
   alone does not identify a statement (it ignores constants, IN-list lengths and
   aliases): the JIT layer checks a statement grant against the exact text and
   search_path and only then hands decide() a view carrying this fingerprint
   (``gateway.jit.model.Grant.view_for``).
5. MASK comes with a MaskPlan over every catalogued column of every relation
   touched (not only those named), using the rule's strategy override, else the
   category default; columns a rule allows raw are left out.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import re
import time
from dataclasses import dataclass

from catalog.model import ColumnRef
from policies.model import (ANY, Action, ApprovalRequirement, AutoApproveRule, Conditions,
                            Decision, DecisionRequest, Effect, MaskPlan, MaskStrategy, Policy,
                            Rule, TouchedColumn, grant_meets)

#: functions that read files or other servers, run dynamic SQL, expose sample
#: values, notify, or change settings: never maskable. fnmatch patterns on the
#: bare name or schema-qualified name.
DANGEROUS_FUNCTIONS = (
    "pg_read_file", "pg_read_binary_file", "pg_ls_*", "pg_stat_file", "lo_*", "loread",
    "lowrite", "dblink*", "query_to_xml*", "table_to_xml*", "schema_to_xml*",
    "database_to_xml*", "cursor_to_xml*", "query_to_xmlschema", "table_to_xmlschema",
    "pg_notify", "set_config", "pg_file_write", "pg_catalog.pg_logical_*",
    "pg_export_snapshot", "pg_import_system_collations", "pg_reload_conf", "pg_terminate_backend",
    "pg_cancel_backend", "pg_stat_statements*", "piigate.*", "pg_catalog.pg_stats*",
    # function bodies are free text (comments, dollar quotes): never redactable. The
    # deparsed definitions (pg_get_viewdef, pg_get_triggerdef, ...) come back with
    # their literals redacted instead (gateway.rewrite.definitions)
    "pg_get_functiondef", "pg_get_function_sqlbody",
)

_PII_DEFAULT = {
    Action.READ: "pii_read", Action.WRITE: "write_pii", Action.DELETE: "delete_pii",
    Action.EXPORT: "export", Action.DDL: "ddl", Action.CALL: "call", Action.SESSION: "session",
}
_STATEMENT_DEFAULT = {Action.DDL: "ddl", Action.EXPORT: "export", Action.CALL: "call",
                      Action.SESSION: "session"}


@dataclass(frozen=True, slots=True)
class _Part:
    """One judged part of the statement: its effect and where it came from."""
    effect: Effect
    rule: str
    reason: str
    columns: tuple[ColumnRef, ...] = ()
    source: Rule | None = None


def decide(request: DecisionRequest, policy: Policy) -> Decision:
    """The decision for one statement. Never raises: an internal error is a DENY
    with rule ``internal-error`` (so it is audited like any other outcome)."""
    try:
        return _decide(request, policy)
    except Exception as e:  # noqa: BLE001 - the contract is "never raises"
        return Decision(Effect.DENY, "internal-error", (f"policy evaluation failed: {type(e).__name__}: {e}",),
                        action=getattr(request, "action", None) if isinstance(getattr(request, "action", None), Action) else Action.UNKNOWN,
                        message="piigate could not evaluate the policy for this statement (internal error); "
                                "the statement was refused. Ask an administrator to check the gateway log.")


def _decide(req: DecisionRequest, policy: Policy) -> Decision:
    matched = [r for r in policy.rules
               if _principal_matches(r.principals, r.roles, req) and _action_matches(r.actions, req.action)
               and _conditions_hold(r.when, req)]
    unrestricted = next((r for r in matched if r.unrestricted), None)
    parts: list[_Part] = []
    statement_rules = [r for r in matched if not r.has_target and not r.unrestricted]
    column_rules = [r for r in matched if r.has_target and not r.unrestricted]
    d = policy.defaults

    if unrestricted is not None:
        parts.append(_Part(Effect.ALLOW, unrestricted.name,
                           f"{req.principal.name} is not under PII policy (rule {unrestricted.name!r})",
                           source=unrestricted))
        # explicit rules still apply when they are more protective
        parts.extend(_rule_part(r, f"rule {r.name!r} applies to this statement") for r in statement_rules)
        parts.extend(_target_parts(req, column_rules, defaults=None))
        return _finish(req, policy, parts, matched)

    if req.unknown is not None or req.action is Action.UNKNOWN:
        why = req.unknown or "the statement's action is unknown"
        explicit = [r for r in statement_rules if Action.UNKNOWN.value in r.actions]
        if explicit:
            parts.extend(_rule_part(r, f"cannot be sure what the statement touches: {why}") for r in explicit)
        else:
            parts.append(_Part(d.unknown, "default:unknown", f"cannot be sure what the statement touches: {why}"))

    dangerous = sorted(_dangerous(req, policy))
    if dangerous:
        parts.append(_Part(d.dangerous_functions, "default:dangerous-function",
                           "calls function(s) whose effect cannot be masked: " + ", ".join(dangerous)))

    if statement_rules:
        parts.extend(_rule_part(r, f"rule {r.name!r} applies to {req.action.value} statements")
                     for r in statement_rules)
    elif req.action in _STATEMENT_DEFAULT:
        key = _STATEMENT_DEFAULT[req.action]
        parts.append(_Part(getattr(d, key), f"default:{key}", f"{req.action.value} statements default to "
                           f"{getattr(d, key).value}"))
    else:
        parts.append(_Part(d.non_pii, "default:non-pii", "no catalogued column needs more"))

    parts.extend(_target_parts(req, column_rules, defaults=d))
    return _finish(req, policy, parts, matched)


def _target_parts(req: DecisionRequest, rules: list[Rule], defaults) -> list[_Part]:
    """Parts from rules with an ``on`` selector. Category/sensitivity selectors apply
    to catalogued columns; pure table/column selectors to any touched column, and a
    pure table selector to the relation itself (``SELECT count(*) FROM payroll``).
    With ``defaults``, a catalogued column no rule covers gets the action's PII default."""
    parts: list[_Part] = []
    for c in req.columns:
        hits = [r for r in rules if _target_matches(r, c)]
        what = f"{c.column} ({c.category})" if c.category else str(c.column)
        parts.extend(_rule_part(r, f"rule {r.name!r} covers {what}", (c.column,)) for r in hits)
        if not hits and c.category is not None and defaults is not None:
            key = _PII_DEFAULT.get(req.action, "unknown")
            parts.append(_Part(getattr(defaults, key), f"default:{key.replace('_', '-')}",
                               f"{req.action.value} of {what} defaults to {getattr(defaults, key).value}",
                               (c.column,)))
    for r in rules:
        if _table_only(r) and r.tables & req.relations:
            names = ", ".join(sorted(str(t) for t in r.tables & req.relations))
            parts.append(_rule_part(r, f"rule {r.name!r} covers {names}"))
    return parts


def _table_only(r: Rule) -> bool:
    return bool(r.tables) and not (r.columns or r.categories or r.min_sensitivity is not None)


def _rule_part(r: Rule, reason: str, columns: tuple[ColumnRef, ...] = ()) -> _Part:
    return _Part(r.effect, r.name, reason, columns, r)


def _finish(req: DecisionRequest, policy: Policy, parts: list[_Part], matched: list[Rule]) -> Decision:
    top = max(p.effect.strength for p in parts)
    effect = next(p.effect for p in parts if p.effect.strength == top)
    driving = [p for p in parts if p.effect is effect]
    # name an explicit rule over a default when both give the winning effect
    driving.sort(key=lambda p: p.source is None)
    rule = driving[0].rule
    reasons = tuple(dict.fromkeys(p.reason for p in driving))
    pii_cols = tuple(sorted({c.column for c in req.pii}))
    budget = min((r.row_budget for r in matched if r.row_budget), default=None)
    base = dict(rule=rule, reasons=reasons, action=req.action, columns=pii_cols, row_budget=budget)

    if effect is Effect.APPROVE:
        requirement = _merge_requirements([p.source.approval for p in driving
                                           if p.source is not None and p.source.approval is not None])
        grant = _covering_grant(req, _replace_auto(requirement, tuple(
            a.name for a in policy.auto_approve if _auto_candidate(a, req))))
        if grant is not None:
            return Decision(Effect.ALLOW, rule, reasons + (f"grant {grant} covers this statement",),
                            action=req.action, columns=pii_cols, grant_id=grant, row_budget=budget)
        auto = _auto_approve(req, policy, requirement)
        requirement = _replace_auto(requirement, tuple(a.name for a in policy.auto_approve
                                                       if _auto_candidate(a, req)))
        msg = (f"statement needs approval (piigate rule \"{rule}\"): {reasons[0]}. "
               + ("It was approved automatically by rule \"" + auto.name + "\"." if auto else
                  "An access request will be recorded; approvers: "
                  + (", ".join(sorted(requirement.approver_groups)) or "any approver")
                  + (". Give a reason first with SET piigate.reason = '...'"
                     + (f" matching {requirement.reason_pattern}" if requirement.reason_pattern else "")
                     if requirement.reason_required else "") + "."))
        return Decision(Effect.APPROVE, approval=requirement, message=msg,
                        auto_approved_by=auto.name if auto else None,
                        auto_approve_duration_s=auto.duration_s if auto else None, **base)

    if effect is Effect.DENY:
        msg = (f"permission denied by piigate rule \"{rule}\": {reasons[0]}. "
               + _next_step(rule, req))
        return Decision(Effect.DENY, message=msg, sqlstate="42501", **base)

    if effect is Effect.MASK:
        return Decision(Effect.MASK, mask=_mask_plan(req, policy, matched), **base)
    return Decision(Effect.ALLOW, **base)


def _next_step(rule: str, req: DecisionRequest) -> str:
    if rule in ("default:unknown", "internal-error"):
        return ("Rewrite the statement in a form piigate can analyse (name tables and columns explicitly), "
                "or ask an administrator for a policy rule that opens it.")
    if rule == "default:dangerous-function":
        return "Ask an administrator: these functions can only be opened by an explicit policy rule."
    return ("Request access: set a reason with SET piigate.reason = '<ticket>' and ask an approver, "
            "or ask an administrator to change the policy.")


def _covering_grant(req: DecisionRequest, requirement: ApprovalRequirement) -> str | None:
    pii = req.pii
    for g in req.grants:
        if g.principal != req.principal.name or g.action != req.action:
            continue
        if not grant_meets(g.terms, requirement):
            continue            # made by people (or for a time) this approve does not accept
        if g.expires_at <= req.context.now:
            continue
        if g.fingerprint is not None:
            if g.fingerprint == req.fingerprint and req.fingerprint:
                return g.grant_id
            continue
        if not pii or not (g.columns or g.categories):
            continue
        if all(c.column in g.columns or c.category in g.categories for c in pii):
            return g.grant_id
    return None


def _merge_requirements(reqs: list[ApprovalRequirement]) -> ApprovalRequirement:
    """Several approve rules drove the decision: the strictest of each field."""
    if not reqs:
        return ApprovalRequirement()
    if len(reqs) == 1:
        return reqs[0]
    patterns = [r.reason_pattern for r in reqs if r.reason_pattern]
    scopes = frozenset.intersection(*(r.scopes for r in reqs)) or frozenset({"statement"})
    return ApprovalRequirement(
        approver_groups=frozenset().union(*(r.approver_groups for r in reqs)),
        approvals=max(r.approvals for r in reqs),
        max_duration_s=min(r.max_duration_s for r in reqs),
        reason_required=any(r.reason_required for r in reqs),
        reason_pattern=patterns[0] if len(set(patterns)) == 1 else (
            "".join(f"(?=.*(?:{p}))" for p in patterns) if patterns else None),
        scopes=scopes,
        self_service_totp=all(r.self_service_totp for r in reqs),
        approver_totp=any(r.approver_totp for r in reqs))


def _replace_auto(r: ApprovalRequirement, names: tuple[str, ...]) -> ApprovalRequirement:
    from dataclasses import replace
    return replace(r, auto_approve=names)


def _auto_candidate(a: AutoApproveRule, req: DecisionRequest) -> bool:
    """Whether an auto-approve rule applies to this principal/action/categories
    (the reason and time conditions are checked separately)."""
    if not _principal_matches(a.principals, a.roles, req):
        return False
    if not _action_matches(a.actions, req.action):
        return False
    cats = {c.category for c in req.pii}
    return ANY in a.categories or cats <= set(a.categories)


def _auto_approve(req: DecisionRequest, policy: Policy, requirement: ApprovalRequirement) -> AutoApproveRule | None:
    if req.unknown is not None:
        return None
    for a in policy.auto_approve:
        if not _auto_candidate(a, req) or not _conditions_hold(a.when, req):
            continue
        reason = req.context.reason or ""
        if a.reason_pattern and not re.search(a.reason_pattern, reason):
            continue
        if requirement.reason_required and not reason:
            continue
        if requirement.reason_pattern and not re.search(requirement.reason_pattern, reason):
            continue
        return a
    return None


def _mask_plan(req: DecisionRequest, policy: Policy, matched: list[Rule]) -> MaskPlan:
    """Strategies for every catalogued column of every touched relation. A column
    the principal may read raw (ALLOW for it) is left out; every other one is masked."""
    column_rules = [r for r in matched if r.has_target and not r.unrestricted]
    cols: dict[ColumnRef, TouchedColumn] = {}
    for c in tuple(req.relation_columns) + req.pii:
        if c.category is not None:
            cols.setdefault(c.column, c)
    # uncatalogued columns a table/column rule protects are masked too when touched
    for c in req.columns:
        if c.category is None and any(_target_matches(r, c) and r.effect is not Effect.ALLOW
                                      for r in column_rules):
            cols.setdefault(c.column, c)
    # rules only see reads here: the relation's other columns are read through the wrapper
    plan: dict[ColumnRef, MaskStrategy] = {}
    default_effect = getattr(policy.defaults, _PII_DEFAULT.get(req.action, "unknown"))
    for ref, c in cols.items():
        hits = [r for r in column_rules if _target_matches(r, c)] if column_rules else ()
        effect = max((r.effect for r in hits), key=lambda e: e.strength) if hits else (
            default_effect if c.category is not None else Effect.ALLOW)
        if effect is Effect.ALLOW:
            continue
        override = next((r.mask for r in hits if r.effect is Effect.MASK and r.mask is not None), None)
        if effect is not Effect.MASK:
            # approve/deny columns not named by the statement are still hidden: safest strategy
            plan[ref] = MaskStrategy("redact")
        else:
            plan[ref] = override or policy.masking.for_category(c.category)
    return MaskPlan(plan)


# --- matching ------------------------------------------------------------------

def _principal_matches(principals: frozenset[str], roles: frozenset[str], req: DecisionRequest) -> bool:
    p = req.principal
    return (ANY in principals or p.name in principals or ANY in roles or bool(roles & p.roles))


def _action_matches(actions: frozenset[str], action: Action) -> bool:
    return ANY in actions or action.value in actions


def _target_matches(r: Rule, c: TouchedColumn) -> bool:
    """A rule's ``on`` selector: every selector given must match the column."""
    if (r.categories or r.min_sensitivity is not None) and c.category is None:
        return False   # category and sensitivity selectors speak of catalogued columns only
    if r.categories and not (ANY in r.categories or c.category in r.categories):
        return False
    if r.min_sensitivity is not None and c.sensitivity < r.min_sensitivity:
        return False
    if r.columns and c.column not in r.columns:
        return False
    if r.tables and c.column.relation not in r.tables:
        return False
    return True


def _conditions_hold(w: Conditions | None, req: DecisionRequest) -> bool:
    if w is None:
        return True
    ctx = req.context
    if w.time_window is not None or w.weekdays:
        t = time.gmtime(ctx.now)
        if w.time_window is not None and not w.time_window.contains(t.tm_hour * 60 + t.tm_min):
            return False
        if w.weekdays and t.tm_wday not in w.weekdays:
            return False
    if w.client_cidrs:
        try:
            addr = ipaddress.ip_address(ctx.client_addr)
        except ValueError:
            return False  # unix socket or unknown address: a CIDR condition cannot hold
        if not any(addr in ipaddress.ip_network(n, strict=False) for n in w.client_cidrs):
            return False
    if w.application_names and not any(fnmatch.fnmatchcase(ctx.application_name, p)
                                       for p in w.application_names):
        return False
    return True


def _dangerous(req: DecisionRequest, policy: Policy) -> set[str]:
    patterns = DANGEROUS_FUNCTIONS + tuple(policy.defaults.extra_dangerous_functions)
    out = set(req.risky_functions)
    for f in req.functions:
        bare = f.rsplit(".", 1)[-1]
        if any(fnmatch.fnmatchcase(f, p) or ("." not in p and fnmatch.fnmatchcase(bare, p)) for p in patterns):
            out.add(f)
    return out


def explain_lines(decision: Decision) -> list[str]:
    """Human-readable lines for ``policy explain`` and logs."""
    lines = [f"effect:  {decision.effect.value}", f"rule:    {decision.rule}",
             f"action:  {decision.action.value}"]
    if decision.columns:
        lines.append("columns: " + ", ".join(str(c) for c in decision.columns))
    lines += [f"reason:  {r}" for r in decision.reasons]
    if decision.message:
        lines.append(f"message: {decision.message}")
    if decision.mask is not None:
        lines += [f"mask:    {c} -> {s.name}{dict(s.params) or ''}" for c, s in sorted(decision.mask.columns.items())]
    if decision.approval is not None:
        a = decision.approval
        lines.append(f"approval: groups={sorted(a.approver_groups) or 'any'} approvals={a.approvals} "
                     f"max={a.max_duration_s}s reason_required={a.reason_required}"
                     + (f" pattern={a.reason_pattern}" if a.reason_pattern else ""))
        if decision.auto_approved_by:
            lines.append(f"auto-approved by: {decision.auto_approved_by} ({decision.auto_approve_duration_s}s)")
    if decision.row_budget:
        lines.append(f"row budget: {decision.row_budget}")
    return lines
