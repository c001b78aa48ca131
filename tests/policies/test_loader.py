"""The policy file: a valid file loads into the expected values; every problem
names the file, the line and what is wrong."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from catalog.model import ColumnRef, RelationRef, Sensitivity
from policies.loader import PolicyError, load_policy, parse_policy
from policies.model import Effect, MaskStrategy

ROOT = Path(__file__).resolve().parents[2]


def test_example_policy_loads():
    p = load_policy(ROOT / "examples" / "policy.toml")
    names = [r.name for r in p.rules]
    assert names[0] == "dba-unrestricted" and p.rules[0].unrestricted
    assert not any(r.unrestricted for r in p.rules[1:])
    approve = p.rules[1]
    assert approve.effect is Effect.APPROVE and approve.categories == {"ssn", "card_number"}
    assert approve.approval.approver_groups == {"privacy"} and approve.approval.max_duration_s == 3600
    assert approve.approval.reason_required and approve.approval.reason_pattern == "^[A-Z]+-[0-9]+"
    assert p.masking.for_category("phone") == MaskStrategy("partial", {"keep": 4})
    assert p.masking.for_category("ssn") == MaskStrategy("redact")
    assert p.masking.for_category("made_up") == MaskStrategy("redact")
    assert p.rules[2].mask == MaskStrategy("hash")
    office = next(r for r in p.rules if r.name == "support-office-hours")
    assert office.when.time_window.start_min == 20 * 60 and office.when.time_window.contains(23 * 60)
    assert not office.when.time_window.contains(12 * 60)
    auto = p.auto_approve[0]
    assert auto.max_rows == 50 and auto.duration_s == 900 and auto.when.weekdays == {0, 1, 2, 3, 4}
    assert p.rules[0].line == ROOT.joinpath("examples/policy.toml").read_text().splitlines().index("[[rule]]") + 1


def test_version_is_a_content_hash():
    a = parse_policy("[defaults]\nddl = \"deny\"\n")
    b = parse_policy("[defaults]\nddl = \"approve\"\n")
    assert a.version != b.version and a.version == parse_policy("[defaults]\nddl = \"deny\"\n").version


def test_selectors_parse():
    p = parse_policy(textwrap.dedent("""
        [[rule]]
        name = "r"
        principals = ["ann"]
        actions = ["read", "export"]
        effect = "deny"
        row_budget = 100
        [rule.on]
        sensitivity = "high"
        columns = ["customers.ssn", "crm.people.email"]
        tables = ["orders", "crm.people"]
        [rule.when]
        client_cidrs = ["10.0.0.0/8"]
        application_name = ["psql*"]
        weekdays = ["Saturday", "sun"]
        """))
    r = p.rules[0]
    assert r.min_sensitivity == Sensitivity.HIGH and r.row_budget == 100
    assert r.columns == {ColumnRef("public", "customers", "ssn"), ColumnRef("crm", "people", "email")}
    assert r.tables == {RelationRef("public", "orders"), RelationRef("crm", "people")}
    assert r.when.weekdays == {5, 6} and r.when.application_names == ("psql*",)


BAD = [
    # (file text, expected line, words in the problem)
    ('[defaults]\npii_read = "mask"\nunknown = "maybe"\n', 3, "effect 'maybe'"),
    ('[defaults]\npii_reed = "mask"\n', 2, "unknown key 'pii_reed'"),
    ('[[rule]]\nname = "a"\nroles = ["x"]\neffect = "allow"\n\n[[rule]]\nname = "b"\nroles = ["x"]\nactions = ["raed"]\neffect = "deny"\n',
     9, "unknown action"),
    ('[[rule]]\nname = "a"\nroles = ["x"]\neffect = "allow"\n[[rule]]\nname = "a"\nroles = ["y"]\neffect = "deny"\n',
     5, "used twice (first at line 1)"),
    ('[[rule]]\nname = "nobody"\neffect = "deny"\n', 1, "matches nobody"),
    ('[[rule]]\nname = "m"\nroles = ["x"]\neffect = "mask"\nmask = "scramble"\n', 5, "not a strategy"),
    ('[[rule]]\nname = "t"\nroles = ["x"]\neffect = "deny"\n[rule.when]\ntime = "8-18"\n', 6, "08:00-18:00"),
    ('[[rule]]\nname = "c"\nroles = ["x"]\neffect = "deny"\n[rule.when]\nclient_cidrs = ["10.0.0.0/33"]\n', 6, "not a CIDR"),
    ('[[rule]]\nname = "p"\nroles = ["x"]\neffect = "approve"\n[rule.approval]\nreason_pattern = "(["\n', 6, "not a valid regex"),
    ('[[rule]]\nname = "d"\nroles = ["x"]\neffect = "approve"\n[rule.approval]\nmax_duration = "forever"\n', 6, "duration"),
    ('[[rule]]\nname = "s"\nroles = ["x"]\neffect = "deny"\nsensitivity = "extreme"\n', 5, "unknown sensitivity"),
    ('[[rule]]\nname = "col"\nroles = ["x"]\neffect = "deny"\ncolumns = ["ssn"]\n', 5, "expected table.column"),
    ('[masking]\nemail = "smudge"\n', 2, "not a strategy"),
    ('[masking.strategies.mine]\nkind = "partial"\nkeep = 99\n', 1, "keep must be"),
    ('[[rule]]\nname = "x"\nroles = ["x"]\neffect = "allow"\napproval = { approvals = 2 }\n', 5, "only makes sense"),
    ('[[auto_approve]]\nname = "aa"\nroles = ["x"]\nmax_rows = 0\n', 4, "positive integer"),
    ('[defaults\nddl = "deny"\n', 1, "invalid TOML"),
    ('colour = "blue"\n', 1, "unknown top-level key"),
]


@pytest.mark.parametrize("text, line, problem", BAD, ids=[b[2] for b in BAD])
def test_errors_name_file_line_and_problem(tmp_path, text, line, problem):
    f = tmp_path / "team-policy.toml"
    f.write_text(text)
    with pytest.raises(PolicyError) as e:
        load_policy(f)
    assert e.value.path == str(f)
    assert e.value.line == line, str(e.value)
    assert problem in e.value.problem
    assert str(e.value).startswith(f"{f}:{line}: ")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(PolicyError, match="nope.toml: cannot read"):
        load_policy(tmp_path / "nope.toml")


def test_default_policy_has_the_category_strategies():
    from policies import default_policy
    p = default_policy()
    assert p.rules == () and p.masking.for_category("email") == MaskStrategy("partial", {"email": True})
    assert p.masking.for_category("dob") == MaskStrategy("redact") and p.defaults.unknown is Effect.DENY
