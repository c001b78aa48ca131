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
    fingerprint: str | None = None                   # when the grant is for one statement only
    expires_at: float = 0.0


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
