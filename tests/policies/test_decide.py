"""decide() on hand-built requests: the fixture file tests/data/policies/decisions.jsonl
(principal, action, columns, ... -> expected effect and rule) against
tests/data/policies/policy.toml, plus properties a data row cannot express."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from catalog.model import ColumnRef, RelationRef
from policies import decide
from policies.loader import load_policy, parse_policy
from policies.model import (Action, DecisionRequest, Effect, GrantView, MaskStrategy, Policy,
                            Principal, RequestContext, Rule, TouchedColumn)
from tests.gateway.rewrite.sample_schema import sample_catalog

DATA = Path(__file__).resolve().parents[1] / "data" / "policies"
POLICY = load_policy(DATA / "policy.toml")
CATALOG = sample_catalog()
CASES = [json.loads(line) for line in (DATA / "decisions.jsonl").read_text().splitlines() if line.strip()]
WEDNESDAY_NOON = datetime.fromisoformat("2026-11-25T12:00:00+00:00").timestamp()


def touched(name: str) -> TouchedColumn:
    ref = ColumnRef.parse(name)
    e = CATALOG.get(ref)
    return TouchedColumn(ref, frozenset({"returned"}), e.category if e else None, int(e.sensitivity) if e else 0)


def request_of(case: dict) -> DecisionRequest:
    now = datetime.fromisoformat(case["now"].replace("Z", "+00:00")).timestamp() if "now" in case else WEDNESDAY_NOON
    cols = tuple(touched(c) for c in case.get("columns", []))
    relations = frozenset(c.column.relation for c in cols)
    grants = tuple(GrantView(g["grant_id"], g["principal"], Action(g["action"]),
                             frozenset(ColumnRef.parse(c) for c in g.get("columns", [])),
                             frozenset(g.get("categories", [])), g.get("fingerprint"),
                             now + g["expires_in"]) for g in case.get("grants", []))
    rel_cols = tuple(TouchedColumn(e.column, frozenset(), e.category, int(e.sensitivity))
                     for r in sorted(relations) for e in CATALOG.columns_of(r).values())
    return DecisionRequest(
        principal=Principal(case["user"], frozenset(case["roles"])), action=Action(case["action"]),
        columns=cols, relations=relations, functions=frozenset(case.get("functions", [])),
        fingerprint=case.get("fingerprint", ""), unknown=case.get("unknown"),
        context=RequestContext(client_addr="10.1.2.3", application_name="psql", now=now, reason=case.get("reason")),
        grants=grants, relation_columns=rel_cols, risky_functions=frozenset(case.get("risky", [])))


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_decision_fixture(case):
    d = decide(request_of(case), POLICY)
    assert (d.effect.value, d.rule) == (case["expect"], case["rule"]), d.reasons
    assert d.action is Action(case["action"])
    if "auto" in case:
        assert d.auto_approved_by == case["auto"]
    if "grant" in case:
        assert d.grant_id == case["grant"]
    if d.effect is Effect.DENY:
        assert d.sqlstate == "42501" and f'"{d.rule}"' in d.message
        assert "administrator" in d.message
    if d.effect is Effect.APPROVE:
        assert d.approval is not None and d.rule in d.message
    if d.effect is Effect.MASK:
        assert d.mask is not None and d.mask.columns


def test_mask_plan_covers_every_catalogued_column_of_touched_relations():
    d = decide(request_of({"user": "ann", "roles": ["analyst"], "action": "read",
                           "columns": ["customers.email"]}), POLICY)
    assert d.effect is Effect.MASK
    plan = d.mask.columns
    customers = {c.column for c in plan if c.relation == RelationRef("public", "customers")}
    assert customers == {"full_name", "email", "phone", "ssn", "dob", "card_number"}
    assert plan[ColumnRef("public", "customers", "email")] == MaskStrategy("hash")      # rule override
    assert plan[ColumnRef("public", "customers", "ssn")] == MaskStrategy("redact")     # approve column: hidden
    assert plan[ColumnRef("public", "customers", "dob")] == MaskStrategy("year")       # the policy's category default
    assert d.columns == (ColumnRef("public", "customers", "email"),)


def test_columns_a_rule_allows_are_left_raw():
    p = parse_policy('[[rule]]\nname = "emails-ok"\nroles = ["crm"]\nactions = ["read"]\n'
                     'categories = ["email"]\neffect = "allow"\n')
    d = decide(request_of({"user": "c", "roles": ["crm"], "action": "read",
                           "columns": ["customers.email", "customers.ssn"]}), p)
    assert d.effect is Effect.MASK
    assert ColumnRef("public", "customers", "email") not in d.mask.columns
    assert ColumnRef("public", "customers", "ssn") in d.mask.columns
    d = decide(request_of({"user": "c", "roles": ["crm"], "action": "read", "columns": ["customers.email"]}), p)
    assert d.effect is Effect.ALLOW and d.rule == "emails-ok"


def test_most_protective_wins_whatever_the_rule_order():
    rules = ('[[rule]]\nname = "allow-all-email"\nroles = ["*"]\ncategories = ["email"]\neffect = "allow"\n',
             '[[rule]]\nname = "deny-medium"\nroles = ["x"]\nsensitivity = "medium"\neffect = "deny"\n')
    for text in (rules[0] + rules[1], rules[1] + rules[0]):
        d = decide(request_of({"user": "u", "roles": ["x"], "action": "read", "columns": ["customers.email"]}),
                   parse_policy(text))
        assert (d.effect, d.rule) == (Effect.DENY, "deny-medium")


def test_unrestricted_principal_still_meets_an_explicit_deny():
    p = parse_policy('[[rule]]\nname = "dba"\nroles = ["dba"]\nactions = ["*"]\ncategories = ["*"]\neffect = "allow"\n'
                     '[[rule]]\nname = "no-ssn-for-anyone"\nroles = ["*"]\ncategories = ["ssn"]\neffect = "deny"\n')
    d = decide(request_of({"user": "d", "roles": ["dba"], "action": "read", "columns": ["customers.ssn"]}), p)
    assert (d.effect, d.rule) == (Effect.DENY, "no-ssn-for-anyone")
    d = decide(request_of({"user": "d", "roles": ["dba"], "action": "ddl"}), p)
    assert (d.effect, d.rule) == (Effect.ALLOW, "dba")


def test_conditions_client_cidr_and_application_name():
    p = parse_policy('[[rule]]\nname = "office"\nroles = ["x"]\ncategories = ["*"]\neffect = "allow"\n'
                     '[rule.when]\nclient_cidrs = ["10.0.0.0/8"]\napplication_name = ["psql*"]\n')
    base = request_of({"user": "u", "roles": ["x"], "action": "read", "columns": ["customers.ssn"]})
    assert decide(base, p).effect is Effect.ALLOW
    from dataclasses import replace
    outside = replace(base, context=replace(base.context, client_addr="192.168.1.5"))
    assert decide(outside, p).effect is Effect.MASK
    other_app = replace(base, context=replace(base.context, application_name="DBeaver"))
    assert decide(other_app, p).effect is Effect.MASK
    unix = replace(base, context=replace(base.context, client_addr=""))
    assert decide(unix, p).effect is Effect.MASK


def test_internal_error_is_a_deny_never_an_exception():
    broken = Policy(rules=(Rule(name="broken", effect="not-an-effect", roles=frozenset({"*"}),  # type: ignore[arg-type]
                                categories=frozenset({"ssn"})),))
    d = decide(request_of({"user": "u", "roles": [], "action": "read", "columns": ["customers.ssn"]}), broken)
    assert (d.effect, d.rule, d.sqlstate) == (Effect.DENY, "internal-error", "42501")
    d = decide(None, POLICY)  # type: ignore[arg-type]
    assert d.effect is Effect.DENY and d.rule == "internal-error"


def test_builtin_policy_has_safe_defaults():
    p = Policy()
    assert decide(request_of({"user": "u", "roles": [], "action": "read", "columns": ["customers.ssn"]}), p).effect is Effect.MASK
    assert decide(request_of({"user": "u", "roles": [], "action": "unknown", "unknown": "x"}), p).effect is Effect.DENY
    assert decide(request_of({"user": "u", "roles": [], "action": "read", "columns": ["orders.amount"]}), p).effect is Effect.ALLOW


def test_approval_requirement_and_message():
    d = decide(request_of({"user": "ann", "roles": ["analyst"], "action": "read", "columns": ["customers.ssn"]}), POLICY)
    a = d.approval
    assert a.approver_groups == {"privacy"} and a.reason_required and a.reason_pattern == "^[A-Z]+-[0-9]+"
    assert "SET piigate.reason" in d.message and "privacy" in d.message


def test_table_and_column_rules_cover_uncatalogued_columns_and_relations():
    p = parse_policy('[[rule]]\nname = "no-orders"\nroles = ["x"]\ntables = ["orders"]\neffect = "deny"\n'
                     '[[rule]]\nname = "mask-amount"\nroles = ["y"]\ncolumns = ["orders.amount"]\neffect = "mask"\n'
                     'mask = "round"\n')
    d = decide(request_of({"user": "u", "roles": ["x"], "action": "read", "columns": ["orders.amount"]}), p)
    assert (d.effect, d.rule) == (Effect.DENY, "no-orders")
    count_only = request_of({"user": "u", "roles": ["x"], "action": "read"})
    from dataclasses import replace
    count_only = replace(count_only, relations=frozenset({RelationRef("public", "orders")}))
    assert decide(count_only, p).rule == "no-orders"
    d = decide(request_of({"user": "u", "roles": ["y"], "action": "read", "columns": ["orders.amount", "orders.id"]}), p)
    assert (d.effect, d.rule) == (Effect.MASK, "mask-amount")
    assert d.mask.columns == {ColumnRef("public", "orders", "amount"): MaskStrategy("round", {"digits": -2})}
    # category selectors never match an uncatalogued column
    p2 = parse_policy('[[rule]]\nname = "all-cats"\nroles = ["*"]\ncategories = ["*"]\neffect = "deny"\n')
    assert decide(request_of({"user": "u", "roles": [], "action": "read", "columns": ["orders.amount"]}), p2).effect is Effect.ALLOW
