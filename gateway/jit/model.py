"""Access requests and grants: the JIT layer's pure value types and rules.

Nothing here touches Redis, the network or the clock: every function takes ``now``
when it needs the time. The store (``gateway.jit.store``) persists these values and
applies the transitions computed here inside Redis transactions, so the rules are
tested once, as plain functions.

Request life cycle (``TRANSITIONS``)::

    pending --approve (quorum met)--> approved
    pending --deny------------------> denied
    pending --client cancel---------> abandoned
    pending --request_ttl passed----> expired

An approval that does not yet meet the quorum is recorded on the request, which
stays ``pending``. Every other transition raises ``IllegalTransition``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Mapping

from catalog.model import ColumnRef
from policies.model import Action, ApprovalRequirement, GrantTerms, GrantView


class RequestState(str, Enum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    ABANDONED = "abandoned"
    EXPIRED = "expired"


#: The only legal state changes. Decided requests are final.
TRANSITIONS: Mapping[RequestState, frozenset[RequestState]] = {
    RequestState.PENDING: frozenset({RequestState.APPROVED, RequestState.DENIED,
                                     RequestState.ABANDONED, RequestState.EXPIRED}),
    RequestState.APPROVED: frozenset(),
    RequestState.DENIED: frozenset(),
    RequestState.ABANDONED: frozenset(),
    RequestState.EXPIRED: frozenset(),
}

SCOPES = frozenset({"statement", "columns"})

#: the most uses a counted grant can have: Redis counts them in a signed 64-bit
#: integer, and the audit trail's JSON holds 64-bit integers; a larger count made
#: the grant unusable and its approval and grant records fail to be written
MAX_USES = 2**31 - 1

#: the version prefix of statement keys (``statement_key``)
STATEMENT_KEY_VERSION = "sk1"


def statement_key(sql: str, search_path: Iterable[str], secret: bytes) -> str:
    """What a statement-scoped grant is bound to: the statement's exact text (literals
    included) and the search_path it was decided under, as a keyed hash.

    Not the pg_query fingerprint: it ignores constants (``IN (7) LIMIT 1`` and
    ``IN (1,...,10) LIMIT 50``), IN-list lengths and alias names (``SELECT t.a FROM
    (SELECT id AS a, ssn AS b ...) t`` and the same with the aliases swapped), so a
    grant keyed on it covered statements that expose other rows and columns. Not the
    normalized text either: its ``$n`` stand for constants that change what is
    exposed. And not without the search_path: the same text under another path can
    read other relations. The text can hold PII literals (a guessed SSN), so only an
    HMAC of it is kept (in Redis and in audit records), never the text; the request's
    ``redacted_sql`` is what approvers read."""
    message = json.dumps([list(search_path), sql], separators=(",", ":"), ensure_ascii=False)
    digest = hmac.new(secret, message.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"{STATEMENT_KEY_VERSION}:{digest}"


class IllegalTransition(Exception):
    """A request was asked to move to a state its current state does not lead to."""

    def __init__(self, request_id: str, current: RequestState, wanted: RequestState):
        self.request_id, self.current, self.wanted = request_id, current, wanted
        super().__init__(
            f"access request {request_id} is already {current.value}; "
            f"it cannot become {wanted.value}")


class ApprovalRefused(Exception):
    """An approval that the request's requirement does not allow.

    ``code`` is machine-readable: self_approval, not_approver, duration, scope,
    uses, duplicate, totp_required, totp_invalid, not_pending.
    """

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def identity(name: str) -> str:
    """Who a user or approver name denotes, for "is this the same person": NFKC
    (full-width and other compatibility forms), case folded, without invisible
    format characters (zero-width spaces, bidi marks) and surrounding whitespace.
    "Sam", "sam ", "ｓａｍ" and "s\u200bam" are one person for self-approval and quorum."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf").strip()


def check_transition(request_id: str, current: RequestState, wanted: RequestState) -> None:
    if wanted not in TRANSITIONS[current]:
        raise IllegalTransition(request_id, current, wanted)


# ------------------------------------------------------------------ serialisation


def column_to_json(c: ColumnRef) -> list[str]:
    # A list, not "s.t.c": identifiers may contain dots.
    return [c.schema, c.table, c.column]


def column_from_json(v: Any) -> ColumnRef:
    if isinstance(v, str):
        return ColumnRef.parse(v)
    if isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(p, str) for p in v):
        return ColumnRef(*v)
    raise ValueError(f"column reference {v!r}: expected [schema, table, column] or 'schema.table.column'")


def requirement_to_dict(r: ApprovalRequirement) -> dict[str, Any]:
    return {
        "approver_groups": sorted(r.approver_groups),
        "approvals": r.approvals,
        "max_duration_s": r.max_duration_s,
        "reason_required": r.reason_required,
        "reason_pattern": r.reason_pattern,
        "scopes": sorted(r.scopes),
        "self_service_totp": r.self_service_totp,
        "approver_totp": r.approver_totp,
        "auto_approve": list(r.auto_approve),
    }


def requirement_from_dict(d: Mapping[str, Any]) -> ApprovalRequirement:
    default = ApprovalRequirement()
    return ApprovalRequirement(
        approver_groups=frozenset(d.get("approver_groups", default.approver_groups)),
        approvals=int(d.get("approvals", default.approvals)),
        max_duration_s=int(d.get("max_duration_s", default.max_duration_s)),
        reason_required=bool(d.get("reason_required", default.reason_required)),
        reason_pattern=d.get("reason_pattern", default.reason_pattern),
        scopes=frozenset(d.get("scopes", default.scopes)),
        self_service_totp=bool(d.get("self_service_totp", default.self_service_totp)),
        approver_totp=bool(d.get("approver_totp", default.approver_totp)),
        auto_approve=tuple(d.get("auto_approve", default.auto_approve)),
    )


# ------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class Approval:
    """One approver's vote, with the terms that approver chose."""
    approver: str
    at: float
    comment: str = ""
    duration_s: int = 0
    scope: str = "statement"
    uses: int | None = None
    #: the approver's groups when they approved (None: recorded before groups were)
    groups: frozenset[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["groups"] = None if self.groups is None else sorted(self.groups)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Approval":
        groups = d.get("groups")
        return cls(approver=d["approver"], at=float(d["at"]), comment=d.get("comment", ""),
                   duration_s=int(d.get("duration_s", 0)), scope=d.get("scope", "statement"),
                   uses=d.get("uses"), groups=None if groups is None else frozenset(groups))


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A held statement's plea for access. Never contains PII values:
    ``redacted_sql`` has its literals replaced by the analyzer, ``statement_key`` is
    a keyed hash of the exact text and search_path (``statement_key()``), what a
    statement-scoped grant for this request covers. Requests recorded before
    statement keys existed have none: they can only be granted scope "columns"."""
    id: str
    principal: str
    action: Action
    created_at: float
    requirement: Mapping[str, Any]                   # requirement_to_dict(ApprovalRequirement)
    roles: frozenset[str] = frozenset()
    columns: frozenset[ColumnRef] = frozenset()
    categories: frozenset[str] = frozenset()
    fingerprint: str = ""
    redacted_sql: str = ""
    statement_key: str = ""
    reason: str | None = None
    session_id: str = ""
    instance: str = ""
    state: RequestState = RequestState.PENDING
    approvals: tuple[Approval, ...] = ()
    decided_by: str | None = None                    # approver(s), "auto:<rule>", "hook", "totp:<user>"
    decided_at: float | None = None
    denial_reason: str | None = None
    grant_id: str | None = None

    @property
    def approval_requirement(self) -> ApprovalRequirement:
        return requirement_from_dict(self.requirement)

    def moved_to(self, state: RequestState, now: float, **changes: Any) -> "AccessRequest":
        """A copy in ``state``; raises IllegalTransition when the table forbids it."""
        check_transition(self.id, self.state, state)
        return dataclasses.replace(self, state=state, decided_at=now, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "principal": self.principal, "roles": sorted(self.roles),
            "action": self.action.value,
            "columns": [column_to_json(c) for c in sorted(self.columns)],
            "categories": sorted(self.categories), "fingerprint": self.fingerprint,
            "redacted_sql": self.redacted_sql, "statement_key": self.statement_key,
            "reason": self.reason,
            "session_id": self.session_id, "instance": self.instance,
            "created_at": self.created_at, "requirement": dict(self.requirement),
            "state": self.state.value, "approvals": [a.to_dict() for a in self.approvals],
            "decided_by": self.decided_by, "decided_at": self.decided_at,
            "denial_reason": self.denial_reason, "grant_id": self.grant_id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AccessRequest":
        return cls(
            id=d["id"], principal=d["principal"], roles=frozenset(d.get("roles", ())),
            action=Action(d["action"]),
            columns=frozenset(column_from_json(c) for c in d.get("columns", ())),
            categories=frozenset(d.get("categories", ())), fingerprint=d.get("fingerprint", ""),
            redacted_sql=d.get("redacted_sql", ""), statement_key=d.get("statement_key") or "",
            reason=d.get("reason"),
            session_id=d.get("session_id", ""), instance=d.get("instance", ""),
            created_at=float(d["created_at"]), requirement=dict(d.get("requirement", {})),
            state=RequestState(d.get("state", "pending")),
            approvals=tuple(Approval.from_dict(a) for a in d.get("approvals", ())),
            decided_by=d.get("decided_by"), decided_at=d.get("decided_at"),
            denial_reason=d.get("denial_reason"), grant_id=d.get("grant_id"),
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """Time-boxed access. ``scope`` "statement": only the statement the approver saw,
    by ``statement_key`` (its exact text and search_path; ``fingerprint`` and
    ``redacted_sql`` are kept for display), and only while it touches no catalogued
    column beyond the request's ``columns``; "columns": the action on ``columns``
    and/or any column of ``categories``. ``uses_left`` None means unlimited until
    ``expires_at``. A statement grant recorded before statement keys (fingerprint
    only) still loads but covers nothing."""
    id: str
    principal: str
    action: Action
    scope: str
    created_at: float
    expires_at: float
    request_id: str | None = None
    fingerprint: str | None = None
    columns: frozenset[ColumnRef] = frozenset()
    categories: frozenset[str] = frozenset()
    uses_left: int | None = None
    approved_by: tuple[str, ...] = ()
    how: str = "manual"                              # manual | auto:<rule> | totp | token | hook
    statement_key: str | None = None                 # scope statement: statement_key() of it
    redacted_sql: str = ""                           # scope statement: what the approver saw
    #: per approver in ``approved_by`` (a token: its issuer), the groups they were in;
    #: None for grants recorded before this was kept (they count as in no group)
    approver_groups: tuple[frozenset[str], ...] | None = None
    #: the approvers confirmed with their own TOTP codes
    approver_totp: bool = False

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"grant scope {self.scope!r}: expected 'statement' or 'columns'")
        if self.scope == "statement" and not (self.statement_key or self.fingerprint):
            raise ValueError("a statement-scoped grant needs the statement's key")
        if self.scope == "columns" and not (self.columns or self.categories):
            raise ValueError("a columns-scoped grant needs at least one column or category")
        if self.uses_left is not None and self.uses_left < 0:
            raise ValueError("uses_left must be None (unlimited) or >= 0")

    @property
    def duration_s(self) -> float:
        return self.expires_at - self.created_at

    def terms(self) -> GrantTerms:
        """How it was made, for ``policies.model.grant_meets``: a grant lifts an
        approve only when its approvers and duration meet that approve's requirement."""
        groups = self.approver_groups
        if groups is None:
            groups = tuple(frozenset() for _ in self.approved_by)
        return GrantTerms(how=self.how, duration_s=self.duration_s, approver_groups=groups,
                          approver_totp=self.approver_totp)

    def live(self, now: float) -> bool:
        return now < self.expires_at and (self.uses_left is None or self.uses_left > 0)

    def covers(self, action: Action, columns: Iterable[ColumnRef], categories: Iterable[str],
               statement_key: str | None,
               column_categories: Mapping[ColumnRef, str] | None = None) -> bool:
        """Does this grant lift an ``approve`` for that statement? Scope only, not time.

        A statement grant covers the statement whose ``statement_key`` (exact text and
        search_path) is its own and, when it was granted for a request, only while the
        catalogued columns it touches are among those the approver saw (the same text
        can come to read others after a schema change). A pg_query fingerprint never
        matches a statement key.

        ``columns`` are the catalogued columns the statement touches and ``categories``
        their categories. Without ``column_categories`` the check is conservative: every
        column must be granted by name, or every category must be granted (a grant that
        covers some by name and the rest by category needs the mapping). A columns grant never covers a statement that names nothing: there is
        nothing to scope it to, so only a statement grant can.
        """
        if action != self.action:
            return False
        if self.scope == "statement":
            if not (self.statement_key and statement_key
                    and hmac.compare_digest(statement_key, self.statement_key)):
                return False
            # (a token's grant names no request: its issuer chose the key, not columns)
            return self.request_id is None or frozenset(columns) <= self.columns
        cols, cats = frozenset(columns), frozenset(categories)
        if not cols and not cats:
            return False
        if column_categories is not None:
            return (all(c in self.columns or column_categories.get(c) in self.categories
                        for c in cols)
                    and cats <= self.categories | {column_categories.get(c) for c in cols
                                                   if c in self.columns})
        return (bool(cols) and cols <= self.columns) or (bool(cats) and cats <= self.categories)

    def view(self) -> GrantView:
        """What decide() sees of this grant for any statement. A statement grant shows
        its statement key where decide() compares fingerprints, so it never lifts a
        statement on its own (decide() knows no search_path or exact text): the JIT
        layer checks ``covers`` and hands decide() ``view_for`` that one statement."""
        return GrantView(grant_id=self.id, principal=self.principal, action=self.action,
                         columns=self.columns if self.scope == "columns" else frozenset(),
                         categories=self.categories if self.scope == "columns" else frozenset(),
                         fingerprint=(self.statement_key or f"{STATEMENT_KEY_VERSION}:none")
                         if self.scope == "statement" else None,
                         expires_at=self.expires_at, terms=self.terms())

    def view_for(self, fingerprint: str) -> GrantView:
        """The view for one statement ``covers`` has accepted, with that statement's
        fingerprint: decide() then lifts it for that statement only."""
        if self.scope != "statement":
            return self.view()
        return dataclasses.replace(self.view(), fingerprint=fingerprint or None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "request_id": self.request_id, "principal": self.principal,
            "action": self.action.value, "scope": self.scope, "fingerprint": self.fingerprint,
            "statement_key": self.statement_key, "redacted_sql": self.redacted_sql,
            "columns": [column_to_json(c) for c in sorted(self.columns)],
            "categories": sorted(self.categories), "created_at": self.created_at,
            "expires_at": self.expires_at, "uses_left": self.uses_left,
            "approved_by": list(self.approved_by), "how": self.how,
            "approver_groups": None if self.approver_groups is None
            else [sorted(g) for g in self.approver_groups],
            "approver_totp": self.approver_totp,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Grant":
        return cls(
            id=d["id"], request_id=d.get("request_id"), principal=d["principal"],
            action=Action(d["action"]), scope=d["scope"], fingerprint=d.get("fingerprint"),
            columns=frozenset(column_from_json(c) for c in d.get("columns", ())),
            categories=frozenset(d.get("categories", ())), created_at=float(d["created_at"]),
            expires_at=float(d["expires_at"]), uses_left=d.get("uses_left"),
            approved_by=tuple(d.get("approved_by", ())), how=d.get("how", "manual"),
            statement_key=d.get("statement_key") or None, redacted_sql=d.get("redacted_sql") or "",
            approver_groups=None if d.get("approver_groups") is None
            else tuple(frozenset(g) for g in d["approver_groups"]),
            approver_totp=bool(d.get("approver_totp", False)),
        )


# ------------------------------------------------------------------ approval rules


def check_reason(requirement: ApprovalRequirement, reason: str | None) -> str | None:
    """None when the reason satisfies the requirement, else what the user must do."""
    if requirement.reason_required and not (reason and reason.strip()):
        return ("a reason is required: run SET piigate.reason = '...' or start the statement "
                "with /* piigate:reason=... */, then retry")
    if requirement.reason_pattern and reason is not None:
        if not re.search(requirement.reason_pattern, reason):
            return (f"the reason must match {requirement.reason_pattern!r} "
                    "(for example a ticket id); set a matching one and retry")
    return None


def check_approval(request: AccessRequest, approver: str, approver_groups: Iterable[str],
                   duration_s: int, scope: str, uses: int | None) -> None:
    """Raise ApprovalRefused unless ``approver`` may approve ``request`` on these terms.

    Empty ``approver_groups`` in the requirement means any authenticated approver.
    The requester can never approve, whatever groups they are in.
    """
    req = request.approval_requirement
    if request.state is not RequestState.PENDING:
        raise ApprovalRefused("not_pending",
                              f"access request {request.id} is already {request.state.value}")
    if identity(approver) == identity(request.principal):
        raise ApprovalRefused("self_approval",
                              f"{approver} requested {request.id} and cannot approve it; "
                              "ask another approver")
    groups = frozenset(approver_groups)
    if req.approver_groups and not (groups & req.approver_groups):
        raise ApprovalRefused("not_approver",
                              f"{approver} is not in any of the approver groups "
                              f"{sorted(req.approver_groups)} this request needs")
    if any(identity(a.approver) == identity(approver) for a in request.approvals):
        raise ApprovalRefused("duplicate",
                              f"{approver} already approved {request.id}; the quorum of "
                              f"{req.approvals} needs distinct approvers")
    if isinstance(duration_s, bool) or not isinstance(duration_s, int) or duration_s <= 0:
        raise ApprovalRefused("duration", f"duration must be a positive number of seconds, got {duration_s!r}")
    if duration_s > req.max_duration_s:
        raise ApprovalRefused("duration", f"duration {duration_s}s is longer than the "
                                          f"{req.max_duration_s}s this request's policy allows")
    if scope not in SCOPES:
        raise ApprovalRefused("scope", f"scope {scope!r}: expected 'statement' or 'columns'")
    if scope not in req.scopes:
        raise ApprovalRefused("scope", f"scope {scope!r} is not allowed for this request; "
                                       f"allowed: {sorted(req.scopes)}")
    if scope == "columns" and not (request.columns or request.categories):
        raise ApprovalRefused("scope", "this request names no columns or categories; "
                                       "grant scope 'statement' instead")
    if scope == "statement" and not request.statement_key:
        raise ApprovalRefused("scope", "this request has no statement key (it was recorded before "
                                       "statement grants were bound to the exact statement); grant "
                                       "scope 'columns', or let the user run the statement again")
    if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_USES):
        raise ApprovalRefused("uses", f"uses must be an integer from 1 to {MAX_USES} or null (unlimited), "
                                      f"got {uses!r}")


@dataclass(frozen=True, slots=True)
class ApprovalOutcome:
    """What one approval did: the updated request and, when the quorum is met, the grant."""
    request: AccessRequest
    grant: Grant | None

    @property
    def quorum_met(self) -> bool:
        return self.grant is not None


def distinct_approvers(request: AccessRequest) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for a in request.approvals:
        seen.setdefault(identity(a.approver), a.approver)
    return tuple(seen.values())


def apply_approval(request: AccessRequest, approval: Approval, approver_groups: Iterable[str],
                   grant_id: str, how: str = "manual") -> ApprovalOutcome:
    """Validate and record ``approval``; build the grant once the quorum is met.

    With several approvers the grant takes the most restrictive terms any of them
    chose (shortest duration, statement scope over columns, fewest uses).
    """
    check_approval(request, approval.approver, approver_groups, approval.duration_s,
                   approval.scope, approval.uses)
    updated = dataclasses.replace(request, approvals=request.approvals + (approval,))
    req = request.approval_requirement
    approvers = distinct_approvers(updated)
    if len(approvers) < max(1, req.approvals):
        return ApprovalOutcome(updated, None)
    grant = grant_for(updated, approvers, grant_id, approval.at, how)
    decided = updated.moved_to(RequestState.APPROVED, approval.at,
                               decided_by=",".join(approvers), grant_id=grant.id)
    return ApprovalOutcome(decided, grant)


def grant_for(request: AccessRequest, approvers: tuple[str, ...], grant_id: str, now: float,
              how: str) -> Grant:
    votes = request.approvals
    duration = min(a.duration_s for a in votes)
    scope = "statement" if any(a.scope == "statement" for a in votes) else "columns"
    counted = [a.uses for a in votes if a.uses is not None]
    uses = min(counted) if counted else None
    first = {}
    for a in votes:
        first.setdefault(a.approver, a)
    groups = tuple(first[name].groups or frozenset() for name in approvers)
    return make_grant(request, grant_id, now, duration, scope, uses, approvers, how, groups)


def make_grant(request: AccessRequest, grant_id: str, now: float, duration_s: float, scope: str,
               uses: int | None, approved_by: tuple[str, ...], how: str,
               approver_groups: tuple[frozenset[str], ...] | None = None) -> Grant:
    """The grant for ``request``. A statement grant takes the request's statement key
    and columns (it covers that statement while it touches no others); ValueError for
    a statement grant of a request without a statement key."""
    statement = scope == "statement"
    if statement and not request.statement_key:
        raise ValueError(f"access request {request.id} has no statement key: "
                         "it can only be granted scope 'columns'")
    return Grant(
        id=grant_id, request_id=request.id, principal=request.principal, action=request.action,
        scope=scope, created_at=now, expires_at=now + duration_s,
        fingerprint=request.fingerprint if statement else None,
        columns=request.columns,
        categories=request.categories if scope == "columns" else frozenset(),
        uses_left=uses, approved_by=approved_by, how=how,
        statement_key=request.statement_key if statement else None,
        redacted_sql=request.redacted_sql if statement else "",
        approver_groups=approver_groups,
        # approver_totp requirements check every approver's code before their vote counts
        approver_totp=how == "manual" and request.approval_requirement.approver_totp,
    )
