"""`piigate audit verify|search|report`, run in-process through register()."""
from __future__ import annotations

import argparse
import asyncio
import base64
import json

import orjson
import pytest

from gateway.audit import AuditTrail, records
from gateway.audit.cli import main, register

from .conftest import decision, file_config, trail_files


@pytest.fixture
def written(tmp_path, seed_b64):
    """A two-file trail by two users, with grants, reasons, requests and a denial."""
    path = tmp_path / "audit.jsonl"
    cfg = file_config(path, seed_b64, rotate_bytes=8192, checkpoint_every=20)

    async def go():
        async with AuditTrail(cfg) as trail:
            for i in range(30):
                await trail.record(decision(i, user="alice"))
            await trail.record(records.request_event("created", request_id="req-7", user="bob",
                                                     action="read", categories=["ssn"], reason="INC-9"))
            await trail.record(records.statement_decision(
                session_id="b1", user="bob", sql="SELECT ssn FROM customers", action="read",
                columns=[("public.customers.ssn", {"returned"}, "ssn")], effect="deny",
                rule="deny-ssn", relations=["public.customers"]))
            await trail.record(records.grant_event("created", grant_id="g-77", user="bob",
                                                   request_id="req-7", by="carol"))
            await trail.record(records.statement_decision(
                session_id="b1", user="bob", sql="SELECT ssn FROM customers", action="read",
                columns=[("public.customers.ssn", {"returned"}, "ssn")], effect="allow",
                rule="grant", grant_id="g-77", request_id="req-7", reason="INC-9",
                relations=["public.customers"]))
    asyncio.run(go())
    key = tmp_path / "seed.b64"
    key.write_text(seed_b64)
    return path, key


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_register_adds_the_audit_subcommands():
    parser = argparse.ArgumentParser(prog="piigate")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", "verify", "x.jsonl", "--json"])
    assert args.command == "audit" and args.audit_command == "verify" and callable(args.func)


def test_verify_intact_exit_0(written, capsys):
    path, key = written
    files = [str(f) for f in trail_files(path)]
    assert len(files) >= 2
    code, out = run(capsys, "audit", "verify", *files, "--signing-key", str(key))
    assert code == 0 and "intact" in out and "signatures verified" in out
    code, out = run(capsys, "audit", "verify", str(path.parent), "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    from gateway.audit.chain import load_signing_key, public_key_b64
    pub = path.parent / "audit.pub"
    pub.write_text(public_key_b64(load_signing_key(key.read_bytes()).public_key()))
    code, out = run(capsys, "audit", "verify", *files, "--public-key", str(pub))
    assert code == 0 and "signatures verified" in out
    pub.write_text(public_key_b64(load_signing_key(base64.b64encode(b"x" * 32)).public_key()))
    code, out = run(capsys, "audit", "verify", *files, "--public-key", str(pub))
    assert code == 1 and "forged_signature" in out


def test_verify_with_config(written, capsys, tmp_path):
    path, key = written
    toml = tmp_path / "piigate.toml"
    toml.write_text(f'[audit]\nsigning_key_file = "{key.name}"\ninstance = "gw-test"\n'
                    f'[audit.file]\npath = "{path.name}"\n')
    code, out = run(capsys, "audit", "verify", "--config", str(toml))
    assert code == 0 and "signatures verified" in out


def test_verify_tampered_exit_1_names_file_and_line(written, capsys):
    path, key = written
    f = trail_files(path)[0]
    lines = f.read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b'"alice"', b'"mallory"')
    f.write_bytes(b"".join(lines))
    code, out = run(capsys, "audit", "verify", *map(str, trail_files(path)), "--signing-key", str(key))
    assert code == 1 and f"{f}:6: altered" in out
    code, out = run(capsys, "audit", "verify", str(path.parent), "--json")
    bad = json.loads(out)["first_bad"]
    assert code == 1 and (bad["file"], bad["line"], bad["kind"]) == (str(f), 6, "altered")


def test_verify_usage_errors_exit_2(capsys, tmp_path):
    code, out = run(capsys, "audit", "verify", str(tmp_path / "none.jsonl"))
    assert code == 2 and "cannot read" in out
    code, out = run(capsys, "audit", "verify")
    assert code == 2 and "no trail files given" in out


def test_search_filters(written, capsys):
    path, _ = written
    d = str(path.parent)
    code, out = run(capsys, "audit", "search", d, "--user", "bob", "--json")
    recs = [orjson.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert code == 0 and {r["type"] for r in recs} == {"request.created", "statement.decision", "grant.created"}
    code, out = run(capsys, "audit", "search", d, "--grant", "g-77", "--json")
    assert [orjson.loads(l)["type"] for l in out.splitlines() if l.startswith("{")] == \
        ["grant.created", "statement.decision"]
    code, out = run(capsys, "audit", "search", d, "--request", "req-7", "--type", "statement", "--json")
    assert len([l for l in out.splitlines() if l.startswith("{")]) == 1
    code, out = run(capsys, "audit", "search", d, "--category", "email", "--json")
    emails = [orjson.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(emails) == 10 and all(r["user"] == "alice" for r in emails)
    code, out = run(capsys, "audit", "search", d, "--column", "customers.phone", "--json")
    assert len([l for l in out.splitlines() if l.startswith("{")]) == 10
    code, out = run(capsys, "audit", "search", d, "--table", "customers", "--user", "bob")
    assert "grant=g-77" in out and "(2 record(s))" in out
    code, out = run(capsys, "audit", "search", d, "--until", "2000-01-01", "--json")
    assert out.strip().splitlines() == []
    code, out = run(capsys, "audit", "search", d, "--since", "1h", "--type", "checkpoint", "--json")
    assert len(out.splitlines()) >= 2
    code, out = run(capsys, "audit", "search", d, "--since", "yesterday-ish")
    assert code == 2 and "expected ISO-8601" in out


def test_report(written, capsys):
    path, _ = written
    code, out = run(capsys, "audit", "report", str(path.parent), "--since", "1d", "--json")
    rows = {(r["user"], r["category"]): r for r in json.loads(out)}
    assert code == 0 and set(rows) == {("alice", "ssn"), ("alice", "email"), ("alice", "phone"), ("bob", "ssn")}
    assert rows[("alice", "ssn")]["statements"] == 10 and rows[("alice", "ssn")]["effects"] == {"mask": 10}
    bob = rows[("bob", "ssn")]
    assert bob["statements"] == 2 and bob["effects"] == {"deny": 1, "allow": 1}
    assert bob["grants"] == ["g-77"] and bob["reasons"] == ["INC-9"]
    assert rows[("alice", "ssn")]["grants"] == ["g0"] and rows[("alice", "ssn")]["reasons"] == ["INC-1"]
    code, out = run(capsys, "audit", "report", str(path.parent))
    assert code == 0 and "user" in out.splitlines()[1] and "bob" in out and "g-77" in out
    code, out = run(capsys, "audit", "report", str(path.parent), "--until", "2000-01-01")
    assert "no statement touched catalogued PII" in out


def test_keygen_writes_a_key_the_trail_and_verify_accept(capsys, tmp_path):
    key = tmp_path / "audit.key"
    code, out = run(capsys, "audit", "keygen", "--out", str(key))
    assert code == 0 and (key.stat().st_mode & 0o777) == 0o600
    pub_b64 = out.split("public key:")[1].split()[0]
    (tmp_path / "audit.pub").write_text(pub_b64)
    code, out = run(capsys, "audit", "keygen", "--out", str(key))
    assert code == 2 and "not overwriting" in out
    from gateway.audit import AuditConfig
    cfg = AuditConfig.from_table({"signing_key_file": str(key), "checkpoint_every": 5,
                                  "file": {"path": str(tmp_path / "t" / "a.jsonl"), "fsync": "none"}}, "<t>")
    (tmp_path / "t").mkdir()

    async def go():
        async with AuditTrail(cfg) as trail:
            for i in range(12):
                await trail.record(decision(i))
    asyncio.run(go())
    code, out = run(capsys, "audit", "verify", str(tmp_path / "t"), "--public-key", str(tmp_path / "audit.pub"))
    assert code == 0 and "signatures verified" in out and "3 checkpoints" in out
