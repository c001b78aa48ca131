"""Pure rules of the JIT layer: transitions, approval validation, quorum, grant scope."""
import dataclasses

import pytest

from catalog.model import ColumnRef
from gateway.jit.model import (
    AccessRequest, Approval, ApprovalRefused, Grant, IllegalTransition, RequestState,
    TRANSITIONS, apply_approval, check_approval, check_reason, make_grant, requirement_to_dict,
    statement_key,
)
from policies.model import Action, ApprovalRequirement

EMAIL = ColumnRef("public", "customers", "email")
SSN = ColumnRef("public", "customers", "ssn")
SECRET = b"per-gateway-secret"
SK1 = statement_key("SELECT email FROM customers WHERE id = 7", ("public",), SECRET)


def request(**req_kw) -> AccessRequest:
    return AccessRequest(
        id="req-1", principal="alice", action=Action.READ, created_at=100.0,
        requirement=requirement_to_dict(ApprovalRequirement(**req_kw)),
        columns=frozenset({EMAIL}), categories=frozenset({"email"}), fingerprint="fp1",
        redacted_sql="SELECT email FROM customers WHERE id = $1", statement_key=SK1)


def vote(who, at=200.0, duration=600, scope="statement", uses=None):
    return Approval(who, at, "ok", duration, scope, uses)


def test_transition_table_only_leaves_pending():
    for state, targets in TRANSITIONS.items():
        for target in RequestState:
            r = dataclasses.replace(request(), state=state)
            if target in targets:
                assert r.moved_to(target, 1.0).state is target
            else:
                with pytest.raises(IllegalTransition):
                    r.moved_to(target, 1.0)
    assert TRANSITIONS[RequestState.PENDING] == {
        RequestState.APPROVED, RequestState.DENIED, RequestState.ABANDONED, RequestState.EXPIRED}


def test_round_trip_through_dicts():
    r = request(approver_groups=frozenset({"dba"}), approvals=2)
    r = dataclasses.replace(r, approvals=(vote("bob"),))
    assert AccessRequest.from_dict(r.to_dict()) == r
    g = Grant(id="g", principal="alice", action=Action.READ, scope="columns", created_at=1,
              expires_at=61, columns=frozenset({EMAIL}), categories=frozenset({"ssn"}), uses_left=1,
              approved_by=("bob",), request_id="req-1")
    assert Grant.from_dict(g.to_dict()) == g
    assert r.approval_requirement.approvals == 2


def test_self_approval_refused_whatever_the_groups():
    r = request(approver_groups=frozenset({"dba"}))
    with pytest.raises(ApprovalRefused) as e:
        check_approval(r, "alice", {"dba", "admin"}, 60, "statement", None)
    assert e.value.code == "self_approval"


@pytest.mark.parametrize("kw, args, code", [
    ({"approver_groups": frozenset({"dba"})}, ("bob", {"sales"}, 60, "statement", None), "not_approver"),
    ({"max_duration_s": 300}, ("bob", set(), 301, "statement", None), "duration"),
    ({}, ("bob", set(), 0, "statement", None), "duration"),
    ({}, ("bob", set(), 60, "table", None), "scope"),
    ({"scopes": frozenset({"statement"})}, ("bob", set(), 60, "columns", None), "scope"),
    ({}, ("bob", set(), 60, "statement", 0), "uses"),
])
def test_approval_validation(kw, args, code):
    with pytest.raises(ApprovalRefused) as e:
        check_approval(request(**kw), *args)
    assert e.value.code == code


def test_approval_within_limits_passes():
    check_approval(request(approver_groups=frozenset({"dba"}), max_duration_s=300),
                   "bob", {"dba"}, 300, "columns", 1)


def test_quorum_counts_distinct_approvers_and_takes_strictest_terms():
    r = request(approvals=2)
    first = apply_approval(r, vote("bob", duration=900, scope="columns"), set(), "g1")
    assert first.grant is None and first.request.state is RequestState.PENDING
    with pytest.raises(ApprovalRefused) as e:        # same approver twice is not a quorum
        apply_approval(first.request, vote("bob"), set(), "g1")
    assert e.value.code == "duplicate"
    second = apply_approval(first.request, vote("carol", at=250.0, duration=300, uses=1), set(), "g1")
    assert second.quorum_met
    g = second.grant
    assert (g.scope, g.expires_at, g.uses_left, g.approved_by) == ("statement", 550.0, 1, ("bob", "carol"))
    assert second.request.state is RequestState.APPROVED and second.request.grant_id == "g1"
    with pytest.raises(ApprovalRefused):
        apply_approval(second.request, vote("dave"), set(), "g2")


def test_grant_coverage_and_view():
    stmt = Grant(id="g", principal="alice", action=Action.READ, scope="statement", created_at=0,
                 expires_at=60, fingerprint="fp1", statement_key=SK1)
    assert stmt.covers(Action.READ, {EMAIL}, {"email"}, SK1)
    assert not stmt.covers(Action.READ, {EMAIL}, {"email"}, "fp1")     # a fingerprint is not a key
    assert not stmt.covers(Action.READ, {EMAIL}, {"email"}, None)
    assert not stmt.covers(Action.EXPORT, {EMAIL}, {"email"}, SK1)
    # decide() compares fingerprints: the plain view lifts nothing, view_for one statement
    assert stmt.view().fingerprint == SK1 and not stmt.view().columns
    assert stmt.view_for("fp1").fingerprint == "fp1" and stmt.view_for("fp1").grant_id == "g"
    cols = Grant(id="g", principal="alice", action=Action.READ, scope="columns", created_at=0,
                 expires_at=60, columns=frozenset({EMAIL}), categories=frozenset({"email"}))
    assert cols.covers(Action.READ, {EMAIL}, {"email"}, None)
    assert not cols.covers(Action.READ, {EMAIL, SSN}, {"email", "ssn"}, None)
    assert not cols.covers(Action.READ, set(), set(), "fp1")      # nothing to scope to
    cats = dataclasses.replace(cols, columns=frozenset(), categories=frozenset({"email", "ssn"}))
    assert cats.covers(Action.READ, {EMAIL, SSN}, {"email", "ssn"}, None)
    mixed = dataclasses.replace(cols, columns=frozenset({SSN}), categories=frozenset({"email"}))
    assert not mixed.covers(Action.READ, {EMAIL, SSN}, {"email", "ssn"}, None)   # conservative
    assert mixed.covers(Action.READ, {EMAIL, SSN}, {"email", "ssn"}, None,
                        column_categories={EMAIL: "email", SSN: "ssn"})
    v = cols.view()
    assert v.columns == {EMAIL} and v.fingerprint is None and v.expires_at == 60
    assert not dataclasses.replace(cols, uses_left=0).live(1) and not cols.live(60) and cols.live(59.9)


def test_statement_key_binds_exact_text_and_search_path():
    """Fingerprints ignore constants, IN-list lengths and aliases; the key does not."""
    def key(sql, path=("public",), secret=SECRET):
        return statement_key(sql, path, secret)
    approved = key("SELECT id, ssn FROM customers WHERE id IN (7) LIMIT 1")
    assert approved == key("SELECT id, ssn FROM customers WHERE id IN (7) LIMIT 1")
    for other in ("SELECT id, ssn FROM customers WHERE id IN (1,2,3,4,5,6,7,8,9,10) LIMIT 50",
                  "SELECT id, ssn FROM customers WHERE id IN (7) LIMIT 50",
                  "SELECT id, ssn FROM customers WHERE id IN (8) LIMIT 1"):
        assert key(other) != approved
    assert key("SELECT t.a FROM (SELECT id::text AS a, ssn AS b FROM customers) t LIMIT 1") != \
        key("SELECT t.a FROM (SELECT id::text AS b, ssn AS a FROM customers) t LIMIT 1")
    assert key("SELECT id, ssn FROM customers WHERE id IN (7) LIMIT 1", ("other", "public")) != approved
    assert key("a", ("b", "c")) != key("a", ("b,c",))                   # unambiguous encoding
    assert key("SELECT id, ssn FROM customers WHERE id IN (7) LIMIT 1", secret=b"other") != approved
    assert approved.startswith("sk1:") and len(approved) == 4 + 64              # an HMAC, not the text


def test_statement_grant_carries_the_key_and_the_columns_the_approver_saw():
    g = make_grant(request(), "g", 0, 60, "statement", None, ("bob",), "manual")
    assert g.statement_key == SK1 and g.columns == {EMAIL}
    assert g.redacted_sql == "SELECT email FROM customers WHERE id = $1"
    assert g.covers(Action.READ, {EMAIL}, {"email"}, SK1)
    assert not g.covers(Action.READ, {EMAIL, SSN}, {"email", "ssn"}, SK1)  # same text, other columns
    assert Grant.from_dict(g.to_dict()) == g
    old = dataclasses.replace(request(), statement_key="")
    with pytest.raises(ValueError, match="no statement key"):
        make_grant(old, "g", 0, 60, "statement", None, ("bob",), "manual")
    with pytest.raises(ApprovalRefused, match="no statement key") as e:
        check_approval(old, "bob", set(), 60, "statement", None)
    assert e.value.code == "scope"
    check_approval(old, "bob", set(), 60, "columns", None)


def test_records_from_before_statement_keys_load_and_cover_nothing():
    req = request().to_dict()
    del req["statement_key"]
    assert AccessRequest.from_dict(req).statement_key == ""
    grant = {"id": "g", "request_id": "req-1", "principal": "alice", "action": "read",
             "scope": "statement", "fingerprint": "fp1", "columns": [], "categories": [],
             "created_at": 0, "expires_at": 60, "uses_left": None, "approved_by": ["bob"], "how": "manual"}
    old = Grant.from_dict(grant)
    assert old.statement_key is None
    assert not old.covers(Action.READ, set(), set(), "fp1") and not old.covers(Action.READ, set(), set(), SK1)
    assert old.view().fingerprint != "fp1"


def test_grant_refuses_scope_without_subject():
    with pytest.raises(ValueError):
        Grant(id="g", principal="a", action=Action.READ, scope="statement", created_at=0, expires_at=1)
    with pytest.raises(ValueError):
        Grant(id="g", principal="a", action=Action.READ, scope="columns", created_at=0, expires_at=1)


def test_reason_requirements():
    req = ApprovalRequirement(reason_required=True, reason_pattern=r"^[A-Z]+-\d+")
    assert "reason is required" in check_reason(req, None)
    assert "must match" in check_reason(req, "because")
    assert check_reason(req, "OPS-12 debugging") is None
    assert check_reason(ApprovalRequirement(), None) is None
