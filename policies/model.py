"""Who may do what: the policy layer's value types.

``policies`` imports ``catalog`` only. The gateway turns analyzer facts into a
``DecisionRequest``; ``policies.decide(request, policy)`` returns a ``Decision``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping

from catalog.model import ColumnRef, RelationRef


class Action(str, Enum):
    READ = "read"
    WRITE = "write"        # insert / update / merge / copy from
    DELETE = "delete"
    EXPORT = "export"      # COPY ... TO, reads beyond a row budget
    DDL = "ddl"
    CALL = "call"          # functions with side effects, procedures, DO
    SESSION = "session"    # SET ROLE, session authorization, search_path...
    UNKNOWN = "unknown"


class Effect(str, Enum):
    """Ordered from least to most protective; overlapping rules: the max wins."""
    ALLOW = "allow"
    MASK = "mask"
    APPROVE = "approve"
    DENY = "deny"

    @property
    def strength(self) -> int:
        return _STRENGTH[self]


_STRENGTH = {Effect.ALLOW: 0, Effect.MASK: 1, Effect.APPROVE: 2, Effect.DENY: 3}


@dataclass(frozen=True, slots=True)
class Principal:
    """A gateway user and the roles/groups the gateway config gives it."""
    name: str
    roles: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Circumstances of a statement that rules may condition on."""
    client_addr: str = ""
    application_name: str = ""
    database: str = ""
    now: float = 0.0                 # unix time; decide() never reads the clock
    reason: str | None = None        # the user's stated reason (SET piigate.reason / comment)


@dataclass(frozen=True, slots=True)
class TouchedColumn:
    column: ColumnRef
    usages: frozenset[str]           # values of gateway.analysis.facts.Usage
    category: str | None = None      # from the catalog, None if not catalogued
    sensitivity: int = 0


@dataclass(frozen=True, slots=True)
class GrantView:
    """What decide() needs to know about a live grant (the JIT store owns the rest)."""
    grant_id: str
    principal: str
    action: Action
    columns: frozenset[ColumnRef] = frozenset()      # empty with categories empty: by fingerprint only
    categories: frozenset[str] = frozenset()
    #: a statement grant: the fingerprint of the one statement the JIT layer found it
    #: covers (exact text and search_path, Grant.view_for); otherwise a value no
    #: statement's fingerprint equals (Grant.view), so it lifts nothing by itself
    fingerprint: str | None = None
    expires_at: float = 0.0
    #: who made the grant and on what terms: a grant lifts an APPROVE only when these
    #: meet that approve's requirement (``grant_meets``). None: not known (views built
    #: by hand), unchecked; the JIT store always gives them.
    terms: "GrantTerms | None" = None


@dataclass(frozen=True, slots=True)
class GrantTerms:
    """How a grant was made, to check it against the requirement of each approve it
    would lift (a token is issued for a user and columns, not for a rule; a grant
    approved under one rule can cover statements another rule holds)."""
    how: str                                         # manual | token | totp | hook | auto:<rule>
    duration_s: float
    #: per distinct human approver (manual) or issuer (token): the groups they were in
    approver_groups: tuple[frozenset[str], ...] = ()
    #: every approver confirmed with their own TOTP code
    approver_totp: bool = False


def grant_meets(terms: GrantTerms | None, requirement: "ApprovalRequirement") -> bool:
    """May a grant made on ``terms`` lift an approve with ``requirement``? Its
    duration must be within the requirement's longest; a self-service TOTP grant needs
    a requirement that allows it, an auto-approved one a requirement listing its rule;
    a grant by people (approvers, a token's issuer) needs as many of them in the
    requirement's approver groups as it asks for, TOTP-confirmed when it asks for
    that. A decision hook's grant counts as the hook deciding this requirement."""
    if terms is None:
        return True
    if terms.duration_s > requirement.max_duration_s + 1:      # (+1: float expiry arithmetic)
        return False
    if terms.how == "totp":
        return requirement.self_service_totp
    if terms.how.startswith("auto:"):
        return terms.how[5:] in requirement.auto_approve
    if terms.how == "hook":
        return True
    if requirement.approver_totp and not terms.approver_totp:
        return False
    need = requirement.approver_groups
    qualified = sum(1 for groups in terms.approver_groups if not need or groups & need)
    return qualified >= max(1, requirement.approvals)


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    principal: Principal
    action: Action
    columns: tuple[TouchedColumn, ...] = ()          # every column touched (catalogued or not)
    relations: frozenset[RelationRef] = frozenset()
    functions: frozenset[str] = frozenset()
    statement_kind: str = ""
    fingerprint: str = ""
    unknown: str | None = None
    context: RequestContext = RequestContext()
    grants: tuple[GrantView, ...] = ()
    #: every catalogued column of every relation touched (the mask plan covers them all)
    relation_columns: tuple[TouchedColumn, ...] = ()
    #: functions that run code we cannot see into (SECURITY DEFINER, user-defined
    #: SQL/PL functions): under PII policy they are treated as dangerous
    risky_functions: frozenset[str] = frozenset()

    @property
    def pii(self) -> tuple[TouchedColumn, ...]:
        return tuple(c for c in self.columns if c.category is not None)


@dataclass(frozen=True, slots=True)
class MaskStrategy:
    """A named masking strategy with its parameters (see policies.masking)."""
    name: str                                        # redact | partial | null | hash | year | round | bucket
    params: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskPlan:
    """For each catalogued column the statement may reach: the strategy to apply.

    The rewriter masks *every* catalogued column of each relation it wraps, not
    only those named, so inference through predicates is closed too.
    """
    columns: Mapping[ColumnRef, MaskStrategy] = field(default_factory=dict)

    def for_relation(self, relation: RelationRef) -> dict[str, MaskStrategy]:
        return {c.column: s for c, s in self.columns.items() if c.relation == relation}


@dataclass(frozen=True, slots=True)
class ApprovalRequirement:
    """What an ``approve`` decision needs before the statement may run."""
    approver_groups: frozenset[str] = frozenset()
    approvals: int = 1                               # quorum
    max_duration_s: int = 3600
    reason_required: bool = False
    reason_pattern: str | None = None                # regex the reason must match
    scopes: frozenset[str] = frozenset({"statement", "columns"})  # what an approver may grant
    self_service_totp: bool = False                  # requester may self-approve with TOTP
    approver_totp: bool = False                      # approvers confirm with their own TOTP
    auto_approve: tuple[str, ...] = ()               # names of auto-approve rules that apply


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one statement. Never raised, always returned."""
    effect: Effect
    rule: str                                        # the rule that produced it ('default:...' for defaults)
    reasons: tuple[str, ...] = ()
    action: Action = Action.UNKNOWN
    mask: MaskPlan | None = None                     # for MASK
    approval: ApprovalRequirement | None = None      # for APPROVE
    sqlstate: str = "42501"                          # for DENY
    message: str = ""                                # for DENY / APPROVE: what the client is told
    grant_id: str | None = None                      # a grant that lifted an APPROVE
    columns: tuple[ColumnRef, ...] = ()              # catalogued columns that drove the decision
    auto_approved_by: str | None = None              # APPROVE: the auto-approve rule that matched
    auto_approve_duration_s: int | None = None       # ... and the grant duration it allows
    row_budget: int | None = None                    # rows the gateway lets through before EXPORT applies


# --- additions for the policy file, decide() and masking (additive) -------------

#: The action/category wildcard in rules.
ANY = "*"


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily window in UTC, minutes since midnight; ``start > end`` wraps midnight."""
    start_min: int
    end_min: int

    def contains(self, minute_of_day: int) -> bool:
        if self.start_min <= self.end_min:
            return self.start_min <= minute_of_day < self.end_min
        return minute_of_day >= self.start_min or minute_of_day < self.end_min


@dataclass(frozen=True, slots=True)
class Conditions:
    """``when`` of a rule: every condition given must hold (empty = no condition)."""
    time_window: TimeWindow | None = None
    weekdays: frozenset[int] = frozenset()           # 0 = Monday ... 6 = Sunday (UTC)
    client_cidrs: tuple[str, ...] = ()               # client address must be in one of them
    application_names: tuple[str, ...] = ()          # fnmatch patterns on application_name


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rule]]`` of the policy file.

    A rule matches a statement when its principal selector (``principals`` by user
    name, ``roles`` by role/group, ``"*"`` for anyone), its ``actions`` and its
    ``when`` conditions all hold. Rules with an ``on`` selector (categories,
    sensitivity, columns, tables) apply per catalogued column; rules without one
    apply to the whole statement. A rule with effect allow, actions ``*`` and
    categories ``*`` is *unrestricted*: the principal is not under PII policy.
    """
    name: str
    effect: Effect
    principals: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset({ANY})
    categories: frozenset[str] = frozenset()
    min_sensitivity: int | None = None
    columns: frozenset[ColumnRef] = frozenset()
    tables: frozenset[RelationRef] = frozenset()
    mask: MaskStrategy | None = None
    approval: ApprovalRequirement | None = None
    when: Conditions | None = None
    row_budget: int | None = None
    line: int = 0

    @property
    def has_target(self) -> bool:
        return bool(self.categories or self.min_sensitivity is not None
                    or self.columns or self.tables)

    @property
    def unrestricted(self) -> bool:
        return (self.effect is Effect.ALLOW and ANY in self.actions
                and ANY in self.categories and not self.columns and not self.tables
                and self.min_sensitivity is None)


@dataclass(frozen=True, slots=True)
class AutoApproveRule:
    """``[[auto_approve]]``: an APPROVE decision this rule matches is approved by
    the policy itself (recorded as such), for ``duration_s`` and up to ``max_rows``."""
    name: str
    roles: frozenset[str] = frozenset()
    principals: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset({"read"})
    categories: frozenset[str] = frozenset({ANY})
    reason_pattern: str | None = None
    when: Conditions | None = None
    max_rows: int | None = None
    duration_s: int = 900
    line: int = 0


@dataclass(frozen=True, slots=True)
class Defaults:
    """Effects when no rule matches (the safe defaults of the policy file)."""
    pii_read: Effect = Effect.MASK
    write_pii: Effect = Effect.APPROVE
    delete_pii: Effect = Effect.APPROVE
    export: Effect = Effect.DENY
    unknown: Effect = Effect.DENY
    ddl: Effect = Effect.DENY
    call: Effect = Effect.DENY
    session: Effect = Effect.DENY
    dangerous_functions: Effect = Effect.DENY
    non_pii: Effect = Effect.ALLOW
    #: extra function names (bare or schema-qualified, fnmatch patterns) treated as dangerous
    extra_dangerous_functions: tuple[str, ...] = ()


@dataclass(frozen=True)
class MaskingConfig:
    """Per-category default strategies and the fallback for other categories."""
    by_category: Mapping[str, MaskStrategy] = field(default_factory=dict)
    default: MaskStrategy = MaskStrategy("redact")

    def for_category(self, category: str | None) -> MaskStrategy:
        if category is None:
            return self.default
        return self.by_category.get(category, self.default)


@dataclass(frozen=True)
class Policy:
    """A loaded policy. ``version`` is a hash of the content (caches key on it)."""
    rules: tuple[Rule, ...] = ()
    defaults: Defaults = Defaults()
    masking: MaskingConfig = MaskingConfig()
    auto_approve: tuple[AutoApproveRule, ...] = ()
    version: str = "builtin"
    source: str = "<builtin>"
