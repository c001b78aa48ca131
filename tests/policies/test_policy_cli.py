"""`piigate policy check` and `piigate policy explain` (gateway/policy_cli.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from gateway import policy_cli

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "tests" / "data" / "policies" / "policy.toml"
SCHEMA_JSON = ROOT / "tests" / "data" / "analysis" / "security_schema.json"


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="piigate")
    policy_cli.register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture
def catalog_file(tmp_path):
    f = tmp_path / "catalog.toml"
    cols = {"full_name": "name", "email": "email", "phone": "phone", "ssn": "ssn", "dob": "dob",
            "card_number": "card_number"}
    f.write_text("".join(f'[[column]]\ncolumn = "public.customers.{c}"\ncategory = "{k}"\n\n' for c, k in cols.items()))
    return f


def test_check_ok(capsys):
    assert run(["policy", "check", "--policy", str(POLICY)]) == 0
    out = capsys.readouterr().out
    assert "ok, 5 rule(s)" in out and "dba-unrestricted" in out


def test_check_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\nroles = ["a"]\neffect = "maybe"\n')
    assert run(["policy", "check", "--policy", str(bad)]) == 2
    assert f"{bad}:4: rule 'x': effect 'maybe'" in capsys.readouterr().err


def _explain(user, roles, sql, catalog_file, capsys, *extra):
    code = run(["policy", "explain", "--policy", str(POLICY), "--user", user, "--roles", roles,
                "--schema-json", str(SCHEMA_JSON), "--catalog", str(catalog_file), "--json", *extra, sql])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_explain_mask_shows_rule_columns_and_rewritten_sql(catalog_file, capsys):
    (r,) = _explain("ann", "analyst", "SELECT full_name, email FROM customers WHERE id = 7", catalog_file, capsys)
    assert r["effect"] == "mask" and r["rule"] == "analyst-email-hash"
    # customers without ONLY also reads its inheritance child
    assert r["columns"] == ["public.customers.email", "public.customers.full_name",
                            "public.customers_archive.email", "public.customers_archive.full_name"]
    assert r["rewritten"].startswith('SELECT full_name, email FROM (SELECT "id", ')
    assert r["rewritten"].endswith('AS "customers" WHERE id = 7')
    assert any("hash needs piigate.pseudonym" in n for n in r["notes"])
    r2 = _explain("ann", "analyst", "SELECT email FROM customers", catalog_file, capsys, "--pseudonym-installed")[0]
    assert "piigate.pseudonym(" in r2["rewritten"] and not r2["notes"]


def test_explain_approve_deny_allow_and_several_statements(catalog_file, capsys):
    rs = _explain("ann", "analyst", "SELECT ssn FROM customers; COPY customers TO STDOUT; SELECT amount FROM orders; "
                  "SET ROLE gw_admin", catalog_file, capsys)
    assert [(r["effect"], r["rule"]) for r in rs] == [
        ("approve", "analyst-identifiers-need-approval"), ("deny", "default:export"),
        ("allow", "default:non-pii"), ("deny", "default:session")]
    assert any(line.startswith("approval: groups=['privacy']") for line in rs[0]["lines"])
    assert any("42501" not in line and "permission denied by piigate rule" in line for line in rs[1]["lines"])
    (dba,) = _explain("dora", "dba", "SELECT ssn FROM customers", catalog_file, capsys)
    assert (dba["effect"], dba["rule"]) == ("allow", "dba-unrestricted")


def test_explain_text_output(catalog_file, capsys):
    code = run(["policy", "explain", "--policy", str(POLICY), "--user", "eve", "--schema-json", str(SCHEMA_JSON),
                "--catalog", str(catalog_file), "SELECT * FROM customers"])
    out = capsys.readouterr().out
    assert code == 0
    assert "effect:  mask" in out and "rule:    default:pii-read" in out
    assert "mask:    public.customers.ssn -> redact" in out and "forwarded: SELECT * FROM (SELECT" in out


def test_explain_needs_a_schema(capsys):
    assert run(["policy", "explain", "--policy", str(POLICY), "--user", "eve", "SELECT 1"]) == 2
    assert "--dsn" in capsys.readouterr().err


def test_explain_against_a_live_database(sample_db, capsys):
    code = run(["policy", "explain", "--policy", str(POLICY), "--user", "eve", "--dsn", str(sample_db),
                "--json", "SELECT email, city FROM customer_contacts JOIN customers USING (id)"])
    assert code == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert r["effect"] == "mask" and "rewritten" in r
    assert r["rewritten"].count("(SELECT ") == 2      # the view and the table are both wrapped


def test_install_masking_creates_a_key_and_the_function(fresh_db, tmp_path, capsys):
    import asyncpg

    from gateway.rewrite.pseudonym import reference_pseudonym
    from tests.conftest import run_async

    key_file = tmp_path / "pseudonym.key"
    assert run(["policy", "install-masking", "--dsn", str(fresh_db), "--key-file", str(key_file)]) == 0
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and len(key_file.read_bytes()) == 32

    async def probe():
        conn = await asyncpg.connect(fresh_db)
        try:
            return await conn.fetchval("SELECT piigate.pseudonym('x')")
        finally:
            await conn.close()
    assert run_async(probe) == reference_pseudonym(key_file.read_bytes(), "x")
    # idempotent: installing again with the same key keeps the pseudonyms
    assert run(["policy", "install-masking", "--dsn", str(fresh_db), "--key-file", str(key_file)]) == 0
    assert run_async(probe) == reference_pseudonym(key_file.read_bytes(), "x")
